"""Benchmark: scoring chunk records with an encoder, as a training run's evaluation does, against the
driver-side pass it replaced.

    python research/benchmark_scoring.py --records URI [--networks 12500] [--tasks 1,2] [--json PATH]

Picks ``--networks`` records at random (seed 0) as the split to score and scores them with a fresh narrow
weights-only encoder (the settings of the 10^5 training benchmark) three ways: ``driver.score_records``
with each count in ``--tasks`` (parallel Ray tasks that read their record files with pyarrow), and the
earlier path, ``train.predict_records`` on the driver over the split as Ray Data streams it. Prints
networks/s per way; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pipeline.config import PRESETS, from_dict
from pipeline.data import quiet_data_progress, read_record_index
from pipeline.driver import score_records, split_datasets
from pipeline.runtime import add_ray_arguments, start_ray
from pipeline.train import TargetScaler, build_encoder, predict_records

NARROW = {"hidden": 8, "heads": 1, "inducing_points": 4, "invariance_weight": 0, "statnn": False}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", required=True, help="a complete chunk-record output (jobs/prepare.py)")
    parser.add_argument("--networks", type=int, default=12_500, help="how many records to score")
    parser.add_argument("--tasks", default="1,2", help="comma-separated task counts for score_records")
    parser.add_argument("--json", help="write the figures here")
    add_ray_arguments(parser)
    args = parser.parse_args()
    start_ray(args.num_cpus, verbose=args.verbose)
    quiet_data_progress()

    config = from_dict(NARROW, PRESETS["weights"]())
    torch.manual_seed(0)
    encoder, scaler = build_encoder(config), TargetScaler(0.5, 0.2)
    ids = read_record_index(args.records, ("id",)).column("id").to_pylist()
    picked = np.random.default_rng(0).choice(ids, min(args.networks, len(ids)), replace=False).tolist()
    assignment = {i: "train" for i in ids} | {i: "test" for i in picked}

    ways = {f"score_records, {t} tasks": int(t) for t in args.tasks.split(",")}
    ways["driver over Ray Data"] = None
    rows = []
    for name, tasks in ways.items():
        started = time.perf_counter()
        if tasks is None:
            split = split_datasets(args.records, assignment)["test"]
            batches = split.iter_batches(batch_size=64, batch_format="numpy")
            scored = predict_records(encoder, batches, config, scaler)
        else:
            scored = score_records(encoder, args.records, picked, config, scaler, tasks=tasks)
        seconds = time.perf_counter() - started
        rows.append({"way": name, "networks": len(scored["id"]), "seconds": round(seconds, 1)})
        print(
            f"{name:<26} {len(scored['id'])} networks in {seconds:6.1f} s ({len(scored['id']) / seconds:4.0f}/s)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
