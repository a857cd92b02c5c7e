"""Ray Tune sweeps over chunk size × invariance weight λ (× learning rate), one MLflow child run per trial.

Each trial runs the same driver function as ``jobs/train.py`` (:func:`pipeline.driver.run_training`)
with ``TuneReportCallback`` so every Train report reaches Tune and ASHA can stop weak trials.
Chunk records are prepared once per distinct chunk size on the sweep driver, before any trial
starts; trials find them in the cache.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from pipeline import storage, tracking
from pipeline.config import TrainConfig, from_dict, to_dict
from pipeline.data import pyarrow_filesystem
from pipeline.driver import prepare_records

METRIC = "val_kendall_tau"
# A trial's own process only builds the Train run and waits; its workers hold the real CPUs.
TRIAL_DRIVER_CPUS = 0.25


@dataclass
class SweepSpec:
    # Defaults sized for the `small` zoo on a 2-core laptop: 6 trials, two at a time, ASHA halving from
    # epoch 2. Measured: 34.6 min on 2 cores, chunk-record preparation included (docs/results.md). On a cluster,
    # widen it: --chunk-sizes 8,16,32,64 --invariance-weights 0,0.01,0.1,1 --max-epochs 30.
    chunk_sizes: tuple[int, ...] = (8, 16, 32)
    invariance_weights: tuple[float, ...] = (0.0, 0.1)
    learning_rates: tuple[float, ...] = ()
    search: str = "grid"  # or "optuna"
    num_samples: int = 1  # grid: repeats of the grid; optuna: number of trials
    max_epochs: int = 6
    grace_period: int = 2
    max_concurrent_trials: int = 2
    name: str | None = None

    def validate(self) -> SweepSpec:
        if self.search not in ("grid", "optuna"):
            raise ValueError(f"search must be grid or optuna, got {self.search!r}")
        if not self.chunk_sizes or not self.invariance_weights:
            raise ValueError("give at least one chunk size and one invariance weight")
        if any(c < 1 for c in self.chunk_sizes) or any(w < 0 for w in self.invariance_weights):
            raise ValueError("chunk sizes must be >= 1 and invariance weights >= 0")
        if self.max_epochs < 1 or self.num_samples < 1:
            raise ValueError("max_epochs and num_samples must be >= 1")
        if self.grace_period < 1 or self.max_concurrent_trials < 1:
            raise ValueError("grace_period and max_concurrent_trials must be >= 1")
        return self


def _param_space(spec: SweepSpec) -> dict:
    from ray import tune

    if spec.search == "grid":
        space = {
            "chunk_size": tune.grid_search(list(spec.chunk_sizes)),
            "invariance_weight": tune.grid_search(list(spec.invariance_weights)),
        }
        if spec.learning_rates:
            space["lr"] = tune.grid_search(list(spec.learning_rates))
        return space
    space = {
        "chunk_size": tune.choice(list(spec.chunk_sizes)),
        "invariance_weight": tune.choice(list(spec.invariance_weights)),
    }
    if spec.learning_rates:
        space["lr"] = tune.loguniform(min(spec.learning_rates), max(spec.learning_rates))
    return space


def _trial(tune_config: dict) -> dict:
    """One Tune trial: the shared driver function with the trial's overrides, reporting to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.driver import run_training

    base = dict(tune_config["base"])
    overrides = {k: v for k, v in tune_config.items() if k not in ("base", "parent_run_id", "sweep_name")}
    trial_id = tune.get_context().get_trial_id()
    # Trials are not registered as model versions: the sweep's summary names its best runs instead.
    run_name = f"{tune_config['sweep_name']}-{trial_id}"
    config = from_dict({**base, **overrides, "run_name": run_name, "register_as": ""})
    final = run_training(
        config,
        parent_run_id=tune_config["parent_run_id"],
        train_callbacks=[TuneReportCallback()],
        progress=False,  # Tune prints its own trial table
        log=lambda _: None,
    )
    out = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}
    # Tune treats the return value as a last result, which must carry the sweep's metric.
    out[METRIC] = final["best_val_kendall_tau"]
    return out


def heatmap(table: list[dict], path: str, title: str) -> str:
    """Best validation τ over chunk size × λ (mean over other settings), with epochs run; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunks = sorted({r["chunk_size"] for r in table})
    lams = sorted({r["invariance_weight"] for r in table})
    grid = np.full((len(chunks), len(lams)), np.nan)
    epochs = np.zeros(grid.shape, dtype=int)
    for i, c in enumerate(chunks):
        for j, lam in enumerate(lams):
            cell = [r for r in table if r["chunk_size"] == c and r["invariance_weight"] == lam]
            vals = [r["best_val_kendall_tau"] for r in cell]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            if vals:
                grid[i, j] = float(np.mean(vals))
                epochs[i, j] = max(int(r.get("epochs") or 0) for r in cell)
    fig, ax = plt.subplots(figsize=(1.3 * len(lams) + 2.5, 0.9 * len(chunks) + 1.8))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams])
    ax.set_yticks(range(len(chunks)), [str(c) for c in chunks])
    ax.set_xlabel("invariance weight λ")
    ax.set_ylabel("chunk size")
    for i in range(len(chunks)):
        for j in range(len(lams)):
            if not np.isnan(grid[i, j]):
                # ASHA stops weak trials early: say how many epochs a cell's τ is after.
                label = f"{grid[i, j]:.3f}\n{epochs[i, j]} ep" if epochs[i, j] else f"{grid[i, j]:.3f}"
                ax.text(j, i, label, ha="center", va="center", color="w", fontsize=9)
    fig.colorbar(im, ax=ax, label="best validation Kendall τ")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_trials(table: list[dict]) -> str:
    lines = [
        f"{'trial':<14} {'chunk':>5} {'lambda':>7} {'lr':>8} {'epochs':>6} {'val_tau':>8} {'test_tau':>8}  status"
    ]
    for r in table:
        test = r.get("test_kendall_tau")
        lines.append(
            f"{r['trial_id']:<14} {r['chunk_size']:>5} {r['invariance_weight']:>7g} {r['lr']:>8.2g} "
            f"{r['epochs']:>6} {r['best_val_kendall_tau']:>8.3f} "
            f"{(f'{test:8.3f}' if isinstance(test, float) else '       -')}  {r['status']}"
        )
    return "\n".join(lines)


def asha_scheduler(spec: SweepSpec):
    """ASHA over epochs: from ``grace_period`` on, a trial below the median of its rung stops.

    Tune sets the metric and mode (from ``TuneConfig``) before the first trial.
    """
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",  # one Train report per epoch
        # One past the last epoch: ASHA would otherwise stop every trial at its final report, before
        # the driver function evaluates on the test set and returns.
        max_t=spec.max_epochs + 1,
        grace_period=min(spec.grace_period, spec.max_epochs),
        reduction_factor=2,
    )


def _keep_credentials_out_of_runtime_envs() -> None:
    """Ray Tune copies the driver's AWS credentials into every trial's runtime environment, which Ray logs in
    clear (runtime_env_agent.log) and shows in its dashboard. Trials read credentials from their own
    environment instead, as Train workers and Ray Data tasks do; the cluster's nodes hold them."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray release: nothing to change
        return
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, (set, frozenset)):
        class_cache.ENV_VARS_TO_PROPAGATE = {v for v in propagated if not v.startswith("AWS_")}


def run_sweep(base: TrainConfig, spec: SweepSpec, log=print) -> dict:
    """Run (or resume) a sweep; return {best_config, best_val_kendall_tau, best_test_kendall_tau, trials, ...}."""
    from ray import tune

    spec.validate()
    base.validate()
    started = time.time()
    tracking_uri = tracking.resolve_tracking_uri(base.tracking_uri)
    name = spec.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    tune_fs, tune_path = pyarrow_filesystem(storage.join(base.storage, "tune"))
    experiment_path = storage.join(base.storage, "tune", name)

    for c in sorted(set(spec.chunk_sizes)):  # once per chunk size, never once per trial
        s = prepare_records(dataclasses.replace(base, chunk_size=c))
        log(
            f"chunk size {c}: {s.records} chunk records"
            + (" [cached]" if s.reused else f" [{s.seconds:.0f} s]")
        )

    parent_id = tracking.find_run(tracking_uri, base.experiment, name)
    if parent_id is None:
        parent_id = tracking.start_run(
            tracking_uri,
            base.experiment,
            name,
            {**{f"sweep.{k}": v for k, v in spec.__dict__.items()}, **to_dict(base)},
            {"sweep": "true"},
        )
        profile = {"format": s.format, "checkpoints": s.records, "rejected": s.rejected}
        tracking.log_zoo_input(tracking_uri, parent_id, base.zoo, s.fingerprint, profile)
    base_dict = {**to_dict(base), "epochs": spec.max_epochs, "statnn": False}
    param_space = {**_param_space(spec), "base": base_dict, "parent_run_id": parent_id, "sweep_name": name}
    _keep_credentials_out_of_runtime_envs()
    trainable = tune.with_resources(_trial, {"CPU": TRIAL_DRIVER_CPUS})

    restore_fs, restore_path = pyarrow_filesystem(experiment_path)
    if tune.Tuner.can_restore(restore_path, storage_filesystem=restore_fs):
        log(f"resuming sweep {name} from {experiment_path}")
        tuner = tune.Tuner.restore(
            restore_path,
            trainable,
            resume_errored=True,
            param_space=param_space,
            storage_filesystem=restore_fs,
        )
    else:
        search_alg = None
        if spec.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=base.seed)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                scheduler=asha_scheduler(spec),
                search_alg=search_alg,
                num_samples=spec.num_samples,
                max_concurrent_trials=spec.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=tune_path,
                storage_filesystem=tune_fs,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    grid = tuner.fit()

    table = []
    for r in grid:
        cfg = r.config or {}
        hist = r.metrics_dataframe
        vals = hist[METRIC].dropna().tolist() if hist is not None and METRIC in hist else []
        # Epochs from the per-epoch reports; the trial's return value adds one more row without "epoch".
        epochs = int(hist["epoch"].dropna().nunique()) if hist is not None and "epoch" in hist else 0
        metrics = r.metrics or {}
        trial_id = metrics.get("trial_id", "?")
        # A returned trial carries its run id and test metrics; a stopped one is found by its run name.
        run_id = metrics.get("run_id") or tracking.find_run(
            tracking_uri, base.experiment, f"{name}-{trial_id}"
        )
        test_tau = metrics.get("test_kendall_tau")
        if r.error:
            status = "error"
        elif test_tau is not None:  # the driver returned: it was not stopped
            status = "completed"
        else:
            status = "stopped early"
        table.append(
            {
                "trial_id": trial_id,
                "chunk_size": int(cfg.get("chunk_size", base.chunk_size)),
                "invariance_weight": float(cfg.get("invariance_weight", base.invariance_weight)),
                "lr": float(cfg.get("lr", base.lr)),
                "epochs": epochs,
                "best_val_kendall_tau": float(max(vals)) if vals else float("nan"),
                "test_kendall_tau": test_tau,
                "run_id": run_id,
                "status": status,
                "error": str(r.error).splitlines()[0][:300] if r.error else None,
            }
        )
    table.sort(
        key=lambda t: -t["best_val_kendall_tau"] if not math.isnan(t["best_val_kendall_tau"]) else math.inf
    )
    # A trial ASHA stopped ended inside trainer.fit, which may have marked its run FAILED (or left it
    # RUNNING if the actor died first): it was stopped on purpose, so its run says KILLED.
    for t in table:
        if t["status"] == "stopped early" and t["run_id"]:
            tracking.end_run(tracking_uri, t["run_id"], "KILLED")
    tracking.terminate_children(tracking_uri, parent_id, status="KILLED")
    finished = [t for t in table if not math.isnan(t["best_val_kendall_tau"])]
    best = finished[0] if finished else None
    summary = {
        "name": name,
        "best_config": (
            {
                "chunk_size": best["chunk_size"],
                "invariance_weight": best["invariance_weight"],
                "lr": best["lr"],
            }
            if best
            else None
        ),
        "best_val_kendall_tau": best["best_val_kendall_tau"] if best else None,
        "best_test_kendall_tau": best["test_kendall_tau"] if best else None,
        "trials": table,
        "parent_run_id": parent_id,
        "tracking_uri": tracking_uri,
        "experiment_path": experiment_path,
        "seconds": round(time.time() - started, 1),
    }
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "trials.json"), "w") as f:
            json.dump(table, f, indent=2, default=str)
        with open(os.path.join(d, "trials.txt"), "w") as f:
            f.write(format_trials(table) + "\n")
        for fname in ("trials.json", "trials.txt"):
            tracking.log_artifact(tracking_uri, parent_id, os.path.join(d, fname))
        if finished:
            tracking.log_artifact(
                tracking_uri, parent_id, heatmap(finished, os.path.join(d, "val_tau_heatmap.png"), name)
            )
    final_metrics = {"best_val_kendall_tau": summary["best_val_kendall_tau"] or float("nan")}
    if isinstance(summary["best_test_kendall_tau"], float):
        final_metrics["best_test_kendall_tau"] = summary["best_test_kendall_tau"]
    tracking.log_metrics(tracking_uri, parent_id, final_metrics)
    if best:
        tracking.set_tags(
            tracking_uri, parent_id, {f"best.{k}": v for k, v in summary["best_config"].items()}
        )
    tracking.end_run(tracking_uri, parent_id, "FINISHED" if finished else "FAILED")
    return summary


def grid_size(spec: SweepSpec) -> int:
    n = len(list(itertools.product(spec.chunk_sizes, spec.invariance_weights, spec.learning_rates or [None])))
    return n * spec.num_samples if spec.search == "grid" else spec.num_samples
