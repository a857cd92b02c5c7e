"""Every model × seed on one protocol's fixed splits of a zoo: val τ, test τ, R², MSE, mean ± std.

python jobs/benchmark_quality.py --zoo URI --protocol random|cross-dataset|cross-architecture
    [--models paper,sne,deepsets,statnn,statnn-side,mlp,mean] [--seeds 3] [--epochs N] [--json PATH] [--out PATH.md]
    [--set KEY=VALUE ...]

--set changes every SNE model's preset alike, for an ablation: the paper's INR table without logit
invariance is `--models paper --property frequency --set invariance_weight=0`, without positional
encodings and hierarchy `--set positional_encoding=false --set hierarchy=false`.

Every model chooses on the validation networks only (SNE and DeepSets their epoch, the feature baselines
their settings) and reads the test split once per run; a seed changes a model's initialisation and batch
order, never the split; a training run's steps stay on one side. The table's val τ is what each run chose
by: compare settings (an ablation, a default) on it, and take the test τ of the one chosen. Each run is an
MLflow child run of one parent run. mlp reads flattened weights, so it runs on one-architecture zoos only.
"""

from __future__ import annotations

import argparse

from pipeline import config as cfg
from pipeline import storage, tracking
from pipeline.benchmark import MODELS, PROTOCOLS, check_models, check_settings, format_markdown, run_benchmark
from pipeline.runtime import add_ray_arguments, start_ray, user_errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = cfg.TrainConfig()
    p.add_argument("--zoo", default=defaults.zoo, help="zoo URI (default: the demo zoo)")
    p.add_argument("--protocol", default="random", choices=PROTOCOLS)
    p.add_argument(
        "--models",
        default="paper,sne,deepsets,statnn,statnn-side,mean",
        help=f"comma-separated, of {', '.join(MODELS)}",
    )
    p.add_argument("--seeds", type=int, default=3, help="runs per model, seeds 0..N-1 (default: 3)")
    p.add_argument("--epochs", type=int, help="epochs of each SNE run (default: each preset's)")
    p.add_argument("--property", default=defaults.property, help="the property to predict")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the protocol's splits (default: 0)")
    p.add_argument("--storage", default=defaults.storage, help="where runs and chunk records live")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or runs/mlflow.db)"
    )
    p.add_argument("--experiment", default=defaults.experiment, help="MLflow experiment")
    p.add_argument("--name", help="the parent run's name (default: benchmark-PROTOCOL-TIME)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting of every SNE model's preset (a TrainConfig field; repeatable)",
    )
    p.add_argument("--json", help="write the summary here as JSON (a path or URI)")
    p.add_argument("--out", help="write the tables here as Markdown (a path or URI)")
    add_ray_arguments(p)
    args = p.parse_args()

    with user_errors():
        models = [m for m in args.models.split(",") if m]
        settings = check_settings(cfg.parse_settings(args.set), check_models(models))  # before Ray starts
        base = cfg.from_dict(
            {
                "zoo": args.zoo,
                "property": args.property,
                "split_seed": args.split_seed,
                "storage": args.storage,
                "tracking_uri": args.tracking_uri,
                "experiment": args.experiment,
            }
        )
        tracking.check_reachable(tracking.resolve_tracking_uri(base.tracking_uri))
        start_ray(args.num_cpus, verbose=args.verbose)
        summary = run_benchmark(
            args.zoo,
            args.protocol,
            models,
            args.seeds,
            base,
            epochs=args.epochs,
            settings=settings,
            name=args.name,
        )
    table = format_markdown(summary, args.seeds)
    print("\n" + table)
    print(f"MLflow: {tracking.where_to_look(summary['tracking_uri'], summary['parent_run_id'])}")
    if args.json:
        storage.write_json(args.json, summary)
    if args.out:
        storage.write_bytes_atomic(args.out, table.encode())


if __name__ == "__main__":
    main()
