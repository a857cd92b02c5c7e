"""Metrics of predicted vs true property values, overall and per subset, and the scatter plot."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from pipeline import storage


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Kendall τ (the peers' headline metric), R², MSE and count; NaN where undefined."""
    from scipy.stats import kendalltau

    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    n = len(pred)
    if n < 2:
        return {
            "kendall_tau": math.nan,
            "r2": math.nan,
            "mse": float(np.mean((pred - true) ** 2)) if n else math.nan,
            "n": n,
        }
    tau = kendalltau(pred, true).statistic
    ss_res = float(np.sum((true - pred) ** 2))
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return {
        "kendall_tau": float(tau) if tau == tau else math.nan,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "mse": ss_res / n,
        "n": n,
    }


def subset_metrics(
    pred: np.ndarray, true: np.ndarray, families: Sequence[str], datasets: Sequence[str]
) -> list[dict]:
    """One row per subset: overall, each dataset, each family (rows with n < 2 have NaN τ)."""
    rows = [{"subset": "all", **regression_metrics(pred, true)}]
    for label, keys in (("dataset", datasets), ("family", families)):
        keys = np.asarray(keys)
        for k in sorted(set(keys.tolist())):
            m = keys == k
            rows.append({"subset": f"{label}={k}", **regression_metrics(pred[m], true[m])})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'subset':<28} {'n':>6} {'kendall_tau':>12} {'r2':>8} {'mse':>10}"]
    for r in rows:
        lines.append(
            f"{r['subset']:<28} {r['n']:>6} {r['kendall_tau']:>12.3f} {r['r2']:>8.3f} {r['mse']:>10.5f}"
        )
    return "\n".join(lines)


def scatter_plot(pred: np.ndarray, true: np.ndarray, groups: Sequence[str], uri: str, title: str) -> str:
    """Predicted vs true, coloured by group (family), diagonal for reference; a PNG at a path or URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    groups = np.asarray(groups)
    for g in sorted(set(groups.tolist())):
        m = groups == g
        ax.scatter(true[m], pred[m], s=10, alpha=0.7, label=f"{g} ({int(m.sum())})")
    lo = float(min(np.min(true), np.min(pred)))
    hi = float(max(np.max(true), np.max(pred)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, uri, dpi=120)


def save_figure(fig, uri: str, dpi: int) -> str:
    """A matplotlib figure as PNG at a local path or URI (s3://...), then closed; the URI."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    storage.write_bytes_atomic(uri, buffer.getvalue())
    return uri


def run_summary(final: dict, preset: str) -> str:
    """A training run's test figures (beside STATNN's), its fit on its own training networks, τ per subset,
    and where its MLflow run and encoder are: what a job prints at the end."""
    from pipeline.tracking import where_to_look

    head = f"test Kendall tau  SNE (preset {preset}): {final['test_kendall_tau']:.3f}"
    if "statnn_test_kendall_tau" in final:
        head += f"   STATNN: {final['statnn_test_kendall_tau']:.3f}"
    head += (
        f"   (R2 {final['test_r2']:.3f}, MSE {final['test_mse']:.5f}; best val tau "
        f"{final['best_val_kendall_tau']:.3f} at epoch {final['best_epoch'] + 1})"
    )
    lines = [
        "",
        head,
        f"  on its own training networks: tau {final['train_kendall_tau']:.3f}, R2 {final['train_r2']:.3f}, "
        f"MSE {final['train_mse']:.5f}",
    ]
    for row in final["per_subset"][1:]:
        tau = row["kendall_tau"]
        lines.append(
            f"  {row['subset']:<28} n={row['n']:<5} tau={'   n/a' if math.isnan(tau) else f'{tau:6.3f}'}"
        )
    lines += [
        f"MLflow run {final['run_id']} in experiment '{final['experiment']}':",
        f"  {where_to_look(final['tracking_uri'], final['run_id'])}",
        f"encoder: {final.get('model_uri') or final['encoder_uri']}   checkpoint: {final['checkpoint_uri']}",
    ]
    return "\n".join(lines)
