"""Predict a property for every checkpoint of a zoo with a trained SNE encoder.

    python jobs/predict.py --encoder RUN_ID_OR_URI --zoo URI [--out PATH] [--format auto]

--encoder takes an MLflow run id (or runs:/<id>/encoder) or a folder holding encoder.safetensors
and encoder.json. The table has id, family, dataset, prediction and the true value where known;
Kendall tau is printed when true values exist.
"""

from __future__ import annotations

import argparse
import json

from pipeline.predict import predict_zoo, write_predictions
from pipeline.runtime import fail
from pipeline.zoo import ZooError


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True)
    p.add_argument("--zoo", required=True)
    p.add_argument("--format", default="auto", choices=["auto", "native", "smallcnnzoo", "modelzoos"])
    p.add_argument("--out", default="predictions.csv", help="CSV table to write (default: %(default)s)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for a run id (default: MLFLOW_TRACKING_URI or the local SQLite store)",
    )
    p.add_argument("--json", help="write the metrics here as JSON")
    args = p.parse_args()
    try:
        result = predict_zoo(args.encoder, args.zoo, format=args.format, tracking_uri=args.tracking_uri)
    except (ZooError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    write_predictions(result["rows"], args.out)
    print(
        f"{len(result['rows'])} predictions of {result['property']} written to {args.out}; {len(result['rejected'])} rejected"
    )
    m = result["metrics"]
    if m:
        print(f"Kendall tau {m['kendall_tau']:.3f}  R2 {m['r2']:.3f}  MSE {m['mse']:.5f}  (n={m['n']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in result.items() if k != "rows"}, f, indent=2)


if __name__ == "__main__":
    main()
