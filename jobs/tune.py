"""Sweep chunk size × invariance weight λ (and optionally learning rate) with Ray Tune + ASHA.

Every trial is an MLflow child run of one parent run per sweep; the parent holds the trial table
and a heatmap of validation Kendall tau. Rerunning with the same --name resumes the sweep.

    python jobs/tune.py --zoo URI [--chunk-sizes 8,16,32,64] [--invariance-weights 0,0.01,0.1,1]
                        [--search grid|optuna] [--num-samples N] [--max-epochs E] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses

from pipeline import config as cfg
from pipeline import storage, tracking
from pipeline.runtime import add_ray_arguments, fail, start_ray, user_errors
from pipeline.tracking import ui_command
from pipeline.tune import SweepSpec, format_trials, grid_size, run_sweep

TRIAL_WORKERS = 1  # Ray Train workers per trial unless --num-workers says otherwise


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(v) for v in s.split(",") if v)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SweepSpec()
    p.add_argument(
        "--chunk-sizes",
        type=_ints,
        default=defaults.chunk_sizes,
        help="comma-separated chunk sizes to sweep (default: %(default)s)",
    )
    p.add_argument(
        "--invariance-weights",
        type=_floats,
        default=defaults.invariance_weights,
        help="comma-separated logit-invariance weights to sweep (default: %(default)s)",
    )
    p.add_argument(
        "--learning-rates",
        type=_floats,
        default=(),
        help="also sweep lr over these (grid) or their range (optuna)",
    )
    p.add_argument(
        "--search",
        choices=["grid", "optuna"],
        default=defaults.search,
        help="grid: every combination; optuna: sample the ranges (default: %(default)s)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=defaults.num_samples,
        help="grid: repeats; optuna: trials (default: %(default)s)",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=defaults.max_epochs,
        help="epochs of a trial that ASHA never stops (default: %(default)s)",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=defaults.grace_period,
        help="ASHA: epochs before a trial may be stopped (default: %(default)s)",
    )
    p.add_argument(
        "--max-concurrent-trials",
        type=int,
        default=defaults.max_concurrent_trials,
        help="trials running at once (default: %(default)s)",
    )
    p.add_argument("--name", help="sweep name; rerun with the same name to resume")
    add_ray_arguments(p)
    p.add_argument("--json", help="write the summary here as JSON")
    # Everything else is a training setting; sweeps default to one 0.5-CPU worker per trial so
    # two trials and their data tasks fit a 2-core laptop.
    trial_defaults = dataclasses.replace(cfg.demo(), num_workers=TRIAL_WORKERS)
    cfg.add_arguments(p, skip=("chunk_size", "invariance_weight", "epochs", "statnn"), shown=trial_defaults)
    args = p.parse_args()
    try:
        base = cfg.from_args(args)
        if args.num_workers is None:
            base.num_workers = TRIAL_WORKERS
        spec = SweepSpec(
            chunk_sizes=args.chunk_sizes,
            invariance_weights=args.invariance_weights,
            learning_rates=args.learning_rates,
            search=args.search,
            num_samples=args.num_samples,
            max_epochs=args.max_epochs,
            grace_period=args.grace_period,
            max_concurrent_trials=args.max_concurrent_trials,
            name=args.name,
        ).validate()
        tracking.check_reachable(tracking.resolve_tracking_uri(base.tracking_uri))
        start_ray(args.num_cpus, verbose=args.verbose)
    except ValueError as e:
        fail(str(e))
    print(
        f"sweep: {grid_size(spec)} trials ({spec.search}), up to {spec.max_epochs} epochs each, ASHA early stopping"
    )
    with user_errors():
        summary = run_sweep(base, spec)
    print()
    print(format_trials(summary["trials"]))
    print()
    if summary["best_config"]:
        test = summary["best_test_kendall_tau"]
        print(
            f"best: {summary['best_config']}  val tau {summary['best_val_kendall_tau']:.3f}"
            + (f"  test tau {test:.3f}" if isinstance(test, float) else "")
        )
    # The trials are sorted by validation tau: the first completed ones are the best the sweep trained through.
    best_runs = [t["run_id"] for t in summary["trials"] if t["status"] == "completed" and t["run_id"]][:3]
    if len(best_runs) >= 2:
        print(
            f"predict with the best {len(best_runs)} completed trials together (an ensemble ranks better than one):"
        )
        print(
            "  python jobs/predict.py "
            + " ".join(f"--encoder {r}" for r in best_runs)
            + f" --zoo {base.zoo} --tracking-uri {summary['tracking_uri']}"
        )
    print(f"sweep took {summary['seconds']:.0f} s; MLflow parent run {summary['parent_run_id']}; UI:")
    print(f"  {ui_command(summary['tracking_uri'])}")
    if args.json:
        storage.write_json(args.json, summary)


if __name__ == "__main__":
    main()
