"""Benchmark: time and peak memory of each stage of a training run, to see what grows with the zoo.

    python research/benchmark_stages.py --zoo URI [--zoo URI ...] [--preset debug] [--epochs 1]
        [--storage runs/bench-stages] [--no-probe] [--no-train] [--json PATH]

Per zoo, in one Ray instance: ``prepare`` (zoo → chunk records; cached per zoo and chunk size, so clear
--storage to time it again), ``split`` (the record index → train / val / test), ``fit`` (what is fitted
on the training networks: the target scaler, and the peer consensus where the preset reads it),
``stream`` (one epoch of the training split as the workers read it: streamed from the records in a
fresh order, shuffled through the bounded buffer, collated into encoder batches; no encoder) and
``train`` (``run_training``: Ray Train over the streamed splits, test evaluation, STATNN where the
preset runs it, MLflow into SQLite under --storage; its prepare is the cached one). Each stage reports
its seconds, the peak of the summed RSS of the driver and every Ray process (sampled every 0.2 s;
pages shared between processes, Ray's object store among them, count once per process, so the sum
overstates the footprint) and its rise over the RSS at the stage's start. Compare rows of zoos of
different sizes (``jobs/make_zoo.py --preset replicate`` writes them): a stage whose peak follows the
zoo holds it. --json writes the rows as a list.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from peak_memory import PeakMemory  # research/, beside this script

from pipeline import storage
from pipeline.config import PRESETS, from_dict
from pipeline.driver import (
    fit_on_training_networks,
    prepare_records,
    run_training,
    split_datasets,
    split_records,
)
from pipeline.runtime import add_ray_arguments, start_ray
from pipeline.train import collate, shard_epoch


def _stage(name: str, stages: dict, fn):
    with PeakMemory() as mem:
        started = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - started
    stages[name] = {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(mem.peak / 1e6),
        "rise_mb": round((mem.peak - mem.base) / 1e6),
    }
    print(
        f"  {name:<8} {seconds:8.1f} s   peak {mem.peak / 1e6:7.0f} MB   rise {(mem.peak - mem.base) / 1e6:6.0f} MB"
    )
    return out


def measure(zoo: str, preset: str, epochs: int, storage_uri: str, probe: bool, train: bool) -> dict:
    config = from_dict(
        {
            "zoo": zoo,
            "storage": storage_uri,
            "tracking_uri": f"sqlite:///{storage.join(storage_uri, 'mlflow.db')}",
            "epochs": epochs,
        },
        PRESETS[preset](),
    )
    stages: dict[str, dict] = {}
    print(zoo)
    prepared = _stage(
        "prepare", stages, lambda: prepare_records(config, probe=probe and config.reads_probes())
    )
    assignment, index = _stage("split", stages, lambda: split_records(config, prepared.output))
    train_ids = [i for i, s in assignment.items() if s == "train"]
    fitted = _stage(
        "fit",
        stages,
        lambda: fit_on_training_networks(config, prepared.output, assignment, index, log=lambda _: None),
    )

    def stream() -> int:
        train = split_datasets(prepared.output, assignment, peers=fitted.peers, shuffle_seed=config.seed)[
            "train"
        ]
        networks = 0
        for records in shard_epoch(train, config, epoch=0, rank=0):
            collate(records, config)
            networks += len(records)
        return networks

    streamed = _stage("stream", stages, stream)
    row = {
        "zoo": zoo,
        "checkpoints": prepared.records,
        "probed": prepared.probed,
        "preset": preset,
        "train_networks": len(train_ids),
        "stages": stages,
        "stream_networks_per_s": round(streamed / stages["stream"]["seconds"], 1),
    }
    if train:
        final = _stage(
            "train",
            stages,
            lambda: run_training(dataclasses.replace(config), progress=False, log=lambda _: None),
        )
        row.update(
            {
                "epochs": epochs,
                "last_epoch_train_seconds": final.get("last_epoch_train_seconds"),
                "test_kendall_tau": final["test_kendall_tau"],
            }
        )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", action="append", required=True, help="zoo URI; repeat to compare sizes")
    p.add_argument(
        "--preset", default="debug", choices=list(PRESETS), help="training preset (default: debug)"
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--storage", default="runs/bench-stages", help="records, runs and MLflow go here")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="prepare without probes (with --no-train where the preset reads them)",
    )
    p.add_argument("--no-train", action="store_true", help="stop after the stream stage")
    add_ray_arguments(p)
    p.add_argument("--json")
    args = p.parse_args()
    if args.no_probe and not args.no_train and PRESETS[args.preset]().reads_probes():
        p.error(f"--preset {args.preset} reads probes, so its training run prepares them: add --no-train")
    start_ray(args.num_cpus, verbose=args.verbose)
    rows = [
        measure(zoo, args.preset, args.epochs, args.storage, not args.no_probe, not args.no_train)
        for zoo in args.zoo
    ]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        storage.write_json(args.json, rows)


if __name__ == "__main__":
    main()
