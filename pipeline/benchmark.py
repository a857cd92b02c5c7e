"""A fixed evaluation protocol: every model × seed on the same splits of one zoo, the test split read once
per run, the table as mean ± std over seeds.

Protocols (the splits come from ``pipeline.splits``, seeded by ``split_seed`` and the same for every model
and seed):
- ``random``: the peers' protocol, half of the zoo tests, the rest trains (80/20 train / validation);
- ``cross-dataset``: for each dataset A, train on A's networks and test on every other dataset's: one row
  of the A → B matrix per A;
- ``cross-architecture``: the same over families.

Models: ``paper`` (the published SNE, weights only), ``sne`` (the extended preset) and ``deepsets`` (the
DeepSets baseline on the same chunk records) train with Ray Train and select their epoch on validation
only (``pipeline.driver.run_training``). The feature baselines (``pipeline.baselines.fit_baseline``) choose
their settings on validation and then fit train + validation: ``statnn`` (seven statistics per tensor,
aligned by layer role → gradient-boosted trees; weights only, like ``paper``), ``statnn-side`` (the same
plus the probe summary and dataset the extended SNE reads) and ``mlp`` (flattened weights; one-architecture
zoos only). ``mean`` gives each test network its dataset's training mean. A seed changes a model's
initialisation and batch order, never the split. Every run is an MLflow child run of one parent run, and
reports the validation τ it chose by beside its test τ: settings are compared on the first, and the second
is read for the one chosen.

``settings`` change every SNE model's preset alike (an ablation: ``invariance_weight=0``, or
``hierarchy=false`` with ``positional_encoding=false``); the summary records them.
"""

from __future__ import annotations

import dataclasses
import io
import statistics
import time
from collections.abc import Callable

import numpy as np

from pipeline import storage, tracking
from pipeline.baselines import BASELINE_MODELS, check_one_architecture, fit_baseline
from pipeline.config import PRESETS, TrainConfig, from_dict
from pipeline.data import quiet_data_progress, read_record_index
from pipeline.driver import baseline_rows, prepare_records, run_training, split_records
from pipeline.evaluation import regression_metrics

PROTOCOLS = ("random", "cross-dataset", "cross-architecture")
SNE_MODELS = {"paper": "paper", "sne": "extended", "deepsets": "deepsets"}  # model → TrainConfig preset
BASELINES = (*BASELINE_MODELS, "mean")
MODELS = (*SNE_MODELS, *BASELINES)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One split of a protocol: its name (the training side) and the TrainConfig fields that make it."""

    name: str
    split: dict


def protocol_cells(protocol: str, datasets: list[str], families: list[str]) -> list[Cell]:
    """The splits a protocol runs on a zoo with these datasets and families."""
    if protocol == "random":
        return [Cell("random", {"task": "random", "test_fraction": 0.5})]
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    what, keys = (
        ("dataset", sorted(set(datasets)))
        if protocol == "cross-dataset"
        else ("family", sorted(set(families)))
    )
    if len(keys) < 2:
        raise ValueError(f"the {protocol} protocol needs at least two {what} values; the zoo has {keys}")
    train, test = (
        ("train_datasets", "test_datasets") if what == "dataset" else ("train_families", "test_families")
    )
    return [
        Cell(key, {"task": protocol, train: (key,), test: tuple(k for k in keys if k != key)}) for key in keys
    ]


def check_models(models: list[str]) -> list[str]:
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown model(s) {', '.join(unknown) or '(none)'}; known: {', '.join(MODELS)}")
    return models


def reads_probes(models: list[str]) -> bool:
    """Whether any of the models reads what the networks compute on the probes."""
    return "statnn-side" in models or any(
        PRESETS[SNE_MODELS[m]]().reads_probes() for m in models if m in SNE_MODELS
    )


def score(pred: dict[str, float], test: dict[str, dict]) -> dict:
    """τ, R², MSE over the test networks, and τ per test dataset and per family."""
    ids = sorted(test)
    p = np.array([pred[i] for i in ids], dtype=np.float64)
    t = np.array([test[i]["target"] for i in ids], dtype=np.float64)
    out = {k: regression_metrics(p, t)[k] for k in ("kendall_tau", "r2", "mse")}
    for group in ("dataset", "family"):
        values = np.array([test[i][group] for i in ids])
        out[f"per_{group}"] = {
            g: regression_metrics(p[values == g], t[values == g])["kendall_tau"] for g in sorted(set(values))
        }
    return out


def mean_baseline(index: dict[str, dict], assignment: dict[str, str]) -> dict[str, float]:
    """Each test network's prediction: the mean target of the training (+ validation) networks of its
    dataset, or of all of them where no training network had its dataset."""
    fitted = [i for i, s in assignment.items() if s in ("train", "val")]
    overall = float(np.mean([index[i]["target"] for i in fitted]))
    by_dataset: dict[str, list[float]] = {}
    for i in fitted:
        by_dataset.setdefault(index[i]["dataset"], []).append(index[i]["target"])
    means = {d: float(np.mean(v)) for d, v in by_dataset.items()}
    return {i: means.get(index[i]["dataset"], overall) for i, s in assignment.items() if s == "test"}


def _sne_predictions(final: dict) -> dict[str, float]:
    import pandas as pd

    fs, path = storage.filesystem(storage.join(final["results_uri"], "test_predictions.csv"))
    table = pd.read_csv(io.BytesIO(fs.cat_file(path)), dtype={"id": str})
    return dict(zip(table["id"], table["prediction"].astype(float), strict=True))


def run_benchmark(
    zoo: str,
    protocol: str,
    models: list[str],
    seeds: int,
    base: TrainConfig,
    *,
    epochs: int | None = None,
    settings: dict | None = None,
    name: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the protocol; returns the summary documented in ``summarize`` (``jobs/benchmark_quality.py``)."""
    check_models(models)
    settings = check_settings(settings or {}, models)
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    tracking_uri = tracking.resolve_tracking_uri(base.tracking_uri)
    prepared = prepare_records(dataclasses.replace(base, zoo=zoo), probe=reads_probes(models))
    quiet_data_progress()  # prepare's bars are worth seeing; the index and baseline reads' are not
    table = read_record_index(prepared.output, ("id", "family", "dataset", "run", base.property))
    rows = table.to_pylist()
    index = {
        r["id"]: {"family": r["family"], "dataset": r["dataset"], "target": r[base.property]} for r in rows
    }
    cells = protocol_cells(protocol, [r["dataset"] for r in rows], [r["family"] for r in rows])
    feature_rows = None
    if set(models) & set(BASELINE_MODELS):
        # One pass over the records serves every cell and seed of every feature baseline.
        feature_rows = baseline_rows(prepared.output, set(index), base.property, flat="mlp" in models)
        if "mlp" in models:
            check_one_architecture(list(feature_rows.values()))  # refuse a mixed zoo before anything trains
    name = name or f"benchmark-{protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
    params = {"protocol": protocol, "models": ",".join(models), "seeds": seeds, "zoo": zoo, "epochs": epochs}
    params |= {f"set.{key}": value for key, value in settings.items()}
    parent = tracking.start_run(tracking_uri, base.experiment, name, params, {"benchmark": protocol})
    tracking.log_zoo_input(
        tracking_uri,
        parent,
        zoo,
        prepared.fingerprint,
        {"format": prepared.format, "checkpoints": prepared.records},
    )

    results: list[dict] = []
    try:
        for cell in cells:
            assignment, _ = split_records(base, prepared.output, **cell.split)
            test = {i: index[i] for i, s in assignment.items() if s == "test"}
            for seed in range(seeds):
                for model in models:
                    started = time.time()
                    if model in SNE_MODELS:
                        config = dataclasses.replace(
                            from_dict(settings, PRESETS[SNE_MODELS[model]]()),
                            **{name: getattr(base, name) for name in KEPT_FROM_BASE},
                            **cell.split,
                            seed=seed,
                            statnn=False,
                            register_as="",
                            run_name=None,
                            **({"epochs": epochs} if epochs else {}),
                        )
                        config.validate()
                        final = _train(config, parent)
                        pred, run_id = _sne_predictions(final), final["run_id"]
                        val_tau = final["best_val_kendall_tau"]
                        if set(pred) != set(
                            test
                        ):  # the run must have tested exactly this protocol's networks
                            raise RuntimeError(
                                f"{model} seed {seed} tested other networks than the {cell.name} split"
                            )
                    elif model in BASELINE_MODELS:
                        pred, val_tau = fit_baseline(model, feature_rows, assignment, seed)
                        run_id = None
                    else:  # the mean has nothing to choose, so no validation score
                        pred, val_tau, run_id = mean_baseline(index, assignment), float("nan"), None
                    metrics = score(pred, test) | {"val_kendall_tau": float(val_tau)}
                    seconds = round(time.time() - started, 1)
                    if run_id is None:
                        _log_baseline(tracking_uri, base.experiment, parent, model, cell.name, seed, metrics)
                    results.append(
                        {"model": model, "cell": cell.name, "seed": seed, "seconds": seconds, **metrics}
                    )
                    chose_by = f"{val_tau:.3f}" if np.isfinite(val_tau) else "–"
                    log(
                        f"{cell.name:<12} {model:<7} seed {seed}: val tau {chose_by}  "
                        f"test tau {metrics['kendall_tau']:.3f}  R2 {metrics['r2']:.3f}  ({seconds:.0f} s)"
                    )
    except BaseException:
        tracking.end_run(tracking_uri, parent, "FAILED")
        raise
    summary = summarize(results, protocol, zoo, models, [c.name for c in cells])
    summary.update(
        {
            "parent_run_id": parent,
            "tracking_uri": tracking_uri,
            "split_seed": base.split_seed,
            "settings": settings,
        }
    )
    means = {f"{m}_test_kendall_tau_mean": s["tau_mean"] for m, s in summary["models"].items()}
    means |= {f"{m}_val_kendall_tau_mean": s["val_tau_mean"] for m, s in summary["models"].items()}
    tracking.log_metrics(tracking_uri, parent, {k: v for k, v in means.items() if np.isfinite(v)})
    tracking.end_run(tracking_uri, parent)
    return summary


# What a benchmark's SNE runs take from the command line; everything else comes from each model's preset.
KEPT_FROM_BASE = (
    "zoo",
    "format",
    "steps",
    "zoo_epoch",
    "property",
    "split_seed",
    "storage",
    "experiment",
    "tracking_uri",
    "num_workers",
    "cpus_per_worker",
    "use_gpu",
)


# What the benchmark itself sets in each SNE run (a protocol's split, the seed, the run's bookkeeping) or
# takes from its own flags: not a setting to change.
NOT_SETTABLE = (
    *KEPT_FROM_BASE,
    "task",
    "test_fraction",
    "train_datasets",
    "test_datasets",
    "train_families",
    "test_families",
    "seed",
    "epochs",
    "statnn",
    "register_as",
    "run_name",
)


def check_settings(settings: dict, models: list[str]) -> dict:
    """``settings`` checked against every SNE model's preset; ValueError names what is wrong."""
    if not settings:
        return {}
    fixed = sorted(set(settings) & set(NOT_SETTABLE))
    if fixed:
        raise ValueError(
            f"the benchmark sets {', '.join(fixed)} itself (its flags, the protocol's split or the seed)"
        )
    sne = [m for m in models if m in SNE_MODELS]
    if not sne:
        raise ValueError("settings change SNE models' presets, but none of paper, sne, deepsets is run")
    for model in sne:
        try:
            from_dict(settings, PRESETS[SNE_MODELS[model]]())
        except ValueError as e:
            raise ValueError(f"{model}: {e}") from None
    return dict(settings)


def _train(config: TrainConfig, parent: str) -> dict:
    return run_training(config, parent_run_id=parent, progress=False, log=lambda _: None)


def _log_baseline(
    tracking_uri: str, experiment: str, parent: str, model: str, cell: str, seed: int, metrics: dict
) -> None:
    run = tracking.start_run(
        tracking_uri,
        experiment,
        f"{model}-{cell}-seed{seed}",
        {"model": model, "cell": cell, "seed": seed},
        {},
        parent,
    )
    # Named as SNE runs name theirs, so the MLflow UI compares every model's runs on the same columns.
    flat = {
        "test_kendall_tau": metrics["kendall_tau"],
        "test_r2": metrics["r2"],
        "test_mse": metrics["mse"],
        "best_val_kendall_tau": metrics["val_kendall_tau"],
    }
    flat.update({f"test_kendall_tau/dataset/{d}": v for d, v in metrics["per_dataset"].items()})
    tracking.log_metrics(tracking_uri, run, {k: v for k, v in flat.items() if np.isfinite(v)})
    tracking.end_run(tracking_uri, run)


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def summarize(results: list[dict], protocol: str, zoo: str, models: list[str], cells: list[str]) -> dict:
    """``{"protocol", "zoo", "cells", "models": {NAME: {"tau_mean", "tau_std", "val_tau_mean", "val_tau_std",
    "r2_mean", "r2_std", "mse_mean", "seconds", "per_dataset": {D: {"tau_mean", "tau_std"}}, "per_family":
    {...}, "per_cell": {CELL: {"tau_mean", "tau_std", "per_dataset": {...}}}, "seeds": [one row per run]}}}``.

    ``val_tau``: the validation τ each run chose by (SNE: its best epoch's; a feature baseline: its chosen
    settings'; none for the mean). Compare configurations on it; a test τ is read for the chosen one."""
    out: dict = {"protocol": protocol, "zoo": zoo, "cells": cells, "models": {}}
    for model in models:
        runs = [r for r in results if r["model"] == model]
        tau, tau_std = _mean_std([r["kendall_tau"] for r in runs])
        r2, r2_std = _mean_std([r["r2"] for r in runs])
        val, val_std = _mean_std([r["val_kendall_tau"] for r in runs])
        entry = {
            "tau_mean": tau,
            "tau_std": tau_std,
            "val_tau_mean": val,
            "val_tau_std": val_std,
            "r2_mean": r2,
            "r2_std": r2_std,
            "mse_mean": _mean_std([r["mse"] for r in runs])[0],
            "seconds": round(sum(r["seconds"] for r in runs), 1),
            "seeds": runs,
        }
        for group in ("dataset", "family"):
            keys = sorted({k for r in runs for k in r[f"per_{group}"]})
            entry[f"per_{group}"] = {
                k: dict(
                    zip(
                        ("tau_mean", "tau_std"),
                        _mean_std([r[f"per_{group}"][k] for r in runs if k in r[f"per_{group}"]]),
                        strict=True,
                    )
                )
                for k in keys
            }
        entry["per_cell"] = {}
        for cell in cells:
            in_cell = [r for r in runs if r["cell"] == cell]
            keys = sorted({k for r in in_cell for k in r["per_dataset"]})
            entry["per_cell"][cell] = {
                **dict(
                    zip(("tau_mean", "tau_std"), _mean_std([r["kendall_tau"] for r in in_cell]), strict=True)
                ),
                "per_dataset": {k: _mean_std([r["per_dataset"][k] for r in in_cell])[0] for k in keys},
                "per_family": {
                    k: _mean_std([r["per_family"][k] for r in in_cell if k in r["per_family"]])[0]
                    for k in sorted({k for r in in_cell for k in r["per_family"]})
                },
            }
        out["models"][model] = entry
    return out


def _pm(mean: float, std: float) -> str:
    return "–" if not np.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def format_markdown(summary: dict, seeds: int) -> str:
    """The benchmark's tables: one row per model (mean ± std over seeds); for cross protocols, a matrix of
    training side × test dataset (or family) per model."""
    models = summary["models"]
    lines = [
        f"Protocol `{summary['protocol']}` on `{summary['zoo']}`, {seeds} seed(s) per model, split seed "
        f"{summary.get('split_seed', 0)}; val τ (what each run chose by), test τ, R² and MSE over the test "
        "networks, mean ± std over "
        + ("seeds." if summary["protocol"] == "random" else "every run (each training side × seed).")
        + (
            " SNE models' presets changed by: "
            + ", ".join(f"`{k}={v}`" for k, v in summary["settings"].items())
            + "."
            if summary.get("settings")
            else ""
        ),
        "",
    ]
    per = "dataset" if summary["protocol"] != "cross-architecture" else "family"
    groups = sorted({g for m in models.values() for g in m[f"per_{per}"]})
    lines.append(
        "| model | val τ | test τ | R² | MSE | " + " | ".join(f"τ {per} {g}" for g in groups) + " | seconds |"
    )
    lines.append("|---" * (6 + len(groups)) + "|")
    for name, m in models.items():
        cells = [
            _pm(m[f"per_{per}"][g]["tau_mean"], m[f"per_{per}"][g]["tau_std"])
            if g in m[f"per_{per}"]
            else "–"
            for g in groups
        ]
        lines.append(
            f"| {name} | {_pm(m['val_tau_mean'], m['val_tau_std'])} | {_pm(m['tau_mean'], m['tau_std'])} | "
            f"{_pm(m['r2_mean'], m['r2_std'])} | "
            f"{m['mse_mean']:.5f} | " + " | ".join(cells) + f" | {m['seconds']:.0f} |"
        )
    if summary["protocol"] != "random":
        key = "per_dataset" if summary["protocol"] == "cross-dataset" else "per_family"
        for name, m in models.items():
            lines += ["", f"{name}: trained on (rows) → tested on (columns), mean test τ over seeds", ""]
            lines.append("| train \\ test | " + " | ".join(summary["cells"]) + " |")
            lines.append("|---" * (1 + len(summary["cells"])) + "|")
            for cell in summary["cells"]:
                row = m["per_cell"][cell][key]
                lines.append(
                    f"| {cell} | "
                    + " | ".join(
                        "–" if c == cell or not np.isfinite(row.get(c, np.nan)) else f"{row[c]:.3f}"
                        for c in summary["cells"]
                    )
                    + " |"
                )
    return "\n".join(lines) + "\n"
