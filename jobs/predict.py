"""Predict a property for every checkpoint of a zoo with a trained SNE encoder.

    python jobs/predict.py --encoder RUN_ID_OR_URI [--encoder ...] --zoo URI [--out PATH] [--plot PNG] [--json PATH]

--encoder takes an MLflow run id (or runs:/<id>/encoder), a registered model (models:/sne-encoder/3,
models:/sne-encoder/latest, models:/sne-encoder@ALIAS) or a folder holding encoder.safetensors and encoder.json. Given more than once, the encoders predict as an ensemble: each network gets the
mean of their predictions, and each encoder's own scores are printed beside the ensemble's (runs of
different seeds or settings rank better together than alone; see docs/results.md).

The table has id, family, dataset, prediction, the true value where known, and
used_in_training ("train" or "val" for the checkpoints an encoder was fitted or selected on). Where
true values exist, Kendall tau, R² and MSE are printed overall, per dataset and per family, on the
checkpoints the encoder never saw: predicting its own training zoo scores its test split.
--out, --plot and --json take a local path or an s3:// URI, so a run under `ray job submit` can leave
them in the bucket.
"""

from __future__ import annotations

import argparse

from pipeline import storage
from pipeline.evaluation import format_table
from pipeline.predict import plot_predictions, predict_zoo, write_predictions
from pipeline.runtime import quiet_logs, user_errors
from pipeline.zoo import FORMATS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--encoder",
        required=True,
        action="append",
        help="MLflow run id, registered model (models:/NAME/VERSION) or exported encoder folder; repeat it to "
        "predict with an ensemble of encoders",
    )
    p.add_argument("--zoo", required=True)
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    p.add_argument(
        "--out", default="predictions.csv", help="CSV table to write, a path or URI (default: %(default)s)"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for a run id (default: MLFLOW_TRACKING_URI or the local SQLite store)",
    )
    p.add_argument("--json", help="write the metrics here as JSON (a path or URI)")
    p.add_argument(
        "--plot", help="draw predicted vs true for the networks it never saw into this PNG (path or URI)"
    )
    p.add_argument("--verbose", action="store_true", help="show MLflow's own logs (hidden by default)")
    args = p.parse_args()
    if not args.verbose:
        quiet_logs()
    with user_errors():
        result = predict_zoo(
            args.encoder, args.zoo, format=args.format, tracking_uri=args.tracking_uri, progress=True
        )
    write_predictions(result["rows"], args.out)
    print(
        f"{len(result['rows'])} predictions of {result['property']} written to {args.out}; {len(result['rejected'])} rejected"
    )
    if result["unprobed"]:
        print(
            f"{result['unprobed']} networks name no runnable architecture, so the encoder read only their weights; "
            "it was trained with each network's probe (--probe-summary), so expect weaker predictions for them"
        )
    if result["without_peers"]:
        print(
            f"{result['without_peers']} networks have no peer agreement (a dataset none of the encoder's training "
            "networks had, or no class probabilities); it was trained with peer agreement (--peer-agreement), "
            "so expect their predicted level to be off even where their ranking holds"
        )
    if result["unseen_datasets"]:
        print(
            "networks of datasets none of the encoder's training networks had, read as an unknown dataset: "
            + ", ".join(f"{d} ({n})" for d, n in result["unseen_datasets"].items())
        )
    report(result)
    report_members(result)
    if args.plot:
        drawn = plot_predictions(result, args.plot)
        print(
            f"plot: {drawn}" if drawn else "no plot: fewer than two networks with a true value it did not see"
        )
    if args.json:
        storage.write_json(args.json, {k: v for k, v in result.items() if k != "rows"})


def report(result: dict) -> None:
    """The scores, on the networks the encoder never saw, and what was left out of them and why."""
    every = result["metrics_all"]
    if every is None:
        return
    used = [r["used_in_training"] for r in result["rows"] if r["true"] is not None and r["used_in_training"]]
    if not result["training_ids_known"]:
        print(
            "this encoder was exported before it recorded its training ids: the scores include its training networks"
        )
    elif used:
        print(
            f"{len(used)} of them were used in training ({used.count('train')} fitted on, "
            f"{used.count('val')} for model selection) and are left out of the scores below"
        )
        if not result["same_zoo"]:
            print(
                "  (matched by id; this zoo's files are not the training zoo's. That is right for a copy or a "
                "larger zoo that contains it, and wrong if these ids name other networks.)"
            )
    if result["metrics"] is None:
        print("no network with a true value is left that the encoder did not see in training")
    else:
        print(format_table(result["per_subset"]))
    if used:
        print(
            f"on all {every['n']}, training networks included: Kendall tau {every['kendall_tau']:.3f}  "
            f"R2 {every['r2']:.3f}  MSE {every['mse']:.5f}"
        )


def report_members(result: dict) -> None:
    """Each encoder's own Kendall tau beside the ensemble's, on the same networks."""
    if len(result["members"]) < 2 or result["metrics"] is None:
        return
    print(
        f"ensemble of {len(result['members'])} encoders: Kendall tau {result['metrics']['kendall_tau']:.3f}; alone:"
    )
    for m in result["members"]:
        print(f"  {m['encoder']}: Kendall tau {m['metrics']['kendall_tau']:.3f}  R2 {m['metrics']['r2']:.3f}")


if __name__ == "__main__":
    main()
