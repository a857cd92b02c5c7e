"""Train SNE on a zoo with Ray Train, evaluate it beside STATNN, and track everything in MLflow.

With no arguments it trains the demo preset (the extended model) on the demo zoo, building the zoo if
missing; `--preset paper` trains the published SNE, which reads weights only (docs/model.md).

    python jobs/train.py [--preset demo|extended|weights|paper] [--zoo URI] [--task ...] [--json PATH] ...
"""

from __future__ import annotations

import argparse

from pipeline import config as cfg
from pipeline import storage, tracking
from pipeline.evaluation import run_summary
from pipeline.runtime import add_ray_arguments, ensure_demo_zoo, start_ray, user_errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_arguments(p)
    add_ray_arguments(p)
    p.add_argument("--json", help="write the final metrics here as JSON")
    args = p.parse_args()
    with user_errors():
        config = cfg.from_args(args)
        tracking.check_reachable(tracking.resolve_tracking_uri(config.tracking_uri))
        start_ray(args.num_cpus, verbose=args.verbose)
        ensure_demo_zoo(config.zoo)

    from pipeline.driver import ResultsNotLogged, run_training

    with user_errors(ResultsNotLogged):
        final = run_training(config)
    print(run_summary(final, config.preset))
    if args.json:
        storage.write_json(args.json, final)


if __name__ == "__main__":
    main()
