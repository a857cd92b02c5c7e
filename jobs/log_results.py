"""Log a training run's kept results into its MLflow run, after its tracking server was away at the end.

python jobs/log_results.py RESULTS_URI [--tracking-uri URI]

Every run writes its results (encoder, metrics, plots, predictions) to <storage>/train/<run>/result before
MLflow is asked for them; when the server did not take them, jobs/train.py ends naming this command.
"""

from __future__ import annotations

import argparse

from pipeline import tracking
from pipeline.runtime import quiet_logs, user_errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="the run's kept results: <storage>/train/<run>/result (a path or URI)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the local SQLite store)"
    )
    p.add_argument("--verbose", action="store_true", help="show MLflow's own logs (hidden by default)")
    args = p.parse_args()
    if not args.verbose:
        quiet_logs()

    from pipeline.driver import log_kept_results

    with user_errors():
        tracking.check_reachable(tracking.resolve_tracking_uri(args.tracking_uri))
        logged = log_kept_results(args.results, args.tracking_uri)
    print(
        f"results of run {logged['run_id']} logged"
        + (f"; encoder {logged['model_uri']}" if logged["model_uri"] else "")
    )
    print(f"  {tracking.where_to_look(logged['tracking_uri'], logged['run_id'])}")


if __name__ == "__main__":
    main()
