"""Benchmark: a training epoch through Ray Train against a plain single-process torch loop over the same
networks with the same encoder, and Ray Train's speed-up from 1 to 2 workers.

    python research/benchmark_train.py --zoo data/demo-zoo [--preset demo] [--workers 1,2] [--epochs 2]
        [--json PATH]

Both sides train the config's training split for --epochs epochs and time the last one (the first pays
for start-up: Ray Data's first blocks, torch's first allocations). Every worker and the plain loop run
one torch thread, so the 1-worker ratio is the cost of Ray Train and Ray Data themselves, and 2 workers
on 2 cores is the data-parallel case. The Ray Train figure is the slowest worker's training pass
(streaming its shard, the steps, the embedding norm's recalibration; not validation), which every run
logs per epoch as ``train_epoch_seconds``; the plain loop is ``pipeline.train.train_in_process`` over
the same records held in memory. --json writes {"plain_epoch_s", "ray_train_epoch_s" (1 worker),
"ratio", "speedup_2_workers", "ray_train_epoch_s_by_workers", "train_networks", "preset", "zoo"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline import storage
from pipeline.config import PRESETS, from_dict
from pipeline.driver import prepare_records, run_training, split_records
from pipeline.runtime import add_ray_arguments, start_ray
from pipeline.train import TargetScaler, build_encoder, train_in_process


def read_records(records_uri: str, ids: list[str]) -> list[dict]:
    """The chunk records of ``ids``, whole, into memory."""
    fs, path = storage.filesystem(storage.join(records_uri, "records"))
    tables = []
    for f in sorted(fs.ls(path, detail=False)):
        if f.endswith(".parquet"):
            with fs.open(f, "rb") as fh:
                tables.append(pq.read_table(fh))
    table = pa.concat_tables(tables)
    return table.filter(pc.is_in(table["id"], value_set=pa.array(ids, pa.string()))).to_pylist()


def plain_epoch_seconds(config, records: list[dict]) -> float:
    """The last epoch of ``train_in_process`` on one thread: what a single process costs without Ray."""
    torch.set_num_threads(1)
    targets = np.array([r[config.property] for r in records], dtype=np.float64)
    scaler = TargetScaler(float(targets.mean()), float(targets.std() or 1.0))
    encoder = build_encoder(config, tuple(sorted({r["dataset"] for r in records})))
    rng = np.random.default_rng(config.seed)
    seconds, started = [], time.perf_counter()
    for _ in train_in_process(encoder, records, config, scaler, rng):
        seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
    return seconds[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", default="data/demo-zoo")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts to time (default: 1,2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the last is timed (default: 2)")
    p.add_argument("--storage", default="runs", help="chunk records and Ray Train checkpoints")
    p.add_argument("--experiment", default="benchmark-train", help="MLflow experiment of the Ray Train runs")
    p.add_argument("--json", help="write the figures here (a path or URI)")
    add_ray_arguments(p)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch pays for start-up and is not timed")

    config = from_dict(
        {
            "zoo": args.zoo,
            "storage": args.storage,
            "experiment": args.experiment,
            "epochs": args.epochs,
            "statnn": False,
            "register_as": "",
            "cpus_per_worker": 0.5,  # one torch thread each, with room for Ray Data beside two workers
        },
        PRESETS[args.preset](),
    )
    start_ray(args.num_cpus, verbose=args.verbose)
    prepared = prepare_records(config)
    assignment, _ = split_records(config, prepared.output)
    train_ids = sorted(i for i, s in assignment.items() if s == "train")

    by_workers = {}
    for workers in (int(w) for w in args.workers.split(",")):
        final = run_training(
            dataclasses.replace(config, num_workers=workers), progress=False, log=lambda _: None
        )
        by_workers[workers] = round(final["last_epoch_train_seconds"], 2)
        print(f"Ray Train, {workers} worker(s): {by_workers[workers]:.1f} s per epoch", flush=True)
    plain = round(plain_epoch_seconds(config, read_records(prepared.output, train_ids)), 2)
    print(f"plain torch loop, one process: {plain:.1f} s per epoch", flush=True)

    one = by_workers.get(1)
    out = {
        "plain_epoch_s": plain,
        "ray_train_epoch_s": one,
        "ratio": None if one is None else round(one / plain, 3),
        "speedup_2_workers": round(one / by_workers[2], 3) if one and 2 in by_workers else None,
        "ray_train_epoch_s_by_workers": by_workers,
        "train_networks": len(train_ids),
        "preset": args.preset,
        "zoo": args.zoo,
    }
    print(json.dumps(out))
    if args.json:
        storage.write_json(args.json, out)


if __name__ == "__main__":
    main()
