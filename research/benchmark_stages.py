"""Benchmark: time and peak memory of each stage of a training run, to see what grows with the zoo.

    python research/benchmark_stages.py --zoo URI [--zoo URI ...] [--preset debug] [--epochs 1]
        [--set KEY=VALUE ...] [--storage runs/bench-stages] [--no-probe] [--no-train] [--pss]
        [--json PATH]

Per zoo, in one Ray instance: ``prepare`` (zoo → chunk records; cached per zoo and chunk size, so clear
--storage to time it again), ``split`` (the record index → train / val / test), ``fit`` (what is fitted
on the training networks: the target scaler, and the peer consensus where the preset reads it),
``stream`` (one epoch of the training split as the workers read it: streamed from the records in a
fresh order, shuffled through the bounded buffer, collated into encoder batches; no encoder) and
``train`` (``run_training``: Ray Train over the streamed splits, test evaluation, STATNN where the
preset runs it, MLflow into SQLite under --storage; its prepare is the cached one). Each stage reports
its seconds, the peak of the summed RSS of the driver and every Ray process (sampled every 0.2 s;
pages shared between processes, Ray's object store among them, count once per process, so the sum
overstates the footprint; --pss adds the proportional set size, which splits each shared page among
the processes that map it), its rise over the RSS at the stage's start, and the CPU time the driver,
Ray's workers and Ray's services spent in it. --set changes the preset's settings (a narrower encoder
for a zoo of 10^5 networks). Compare rows of zoos of different sizes (``jobs/make_zoo.py --preset
replicate`` writes them), each in its own process: a stage whose peak follows the zoo holds it. --json
writes the rows as a list.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from peak_memory import PeakMemory  # research/, beside this script

from pipeline import storage
from pipeline.config import PRESETS, from_dict, parse_settings
from pipeline.driver import (
    fit_on_training_networks,
    prepare_records,
    run_training,
    split_datasets,
    split_records,
)
from pipeline.runtime import add_ray_arguments, start_ray
from pipeline.train import collate, shard_epoch


def _stage(name: str, stages: dict, fn, pss: bool = False):
    # Reading PSS parses every process's memory map: sampled once a second, not five times, so the
    # sampling does not take a core's worth of CPU from the stages it measures.
    with PeakMemory(pss=pss, interval=1.0 if pss else 0.2) as mem:
        started = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - started
    stages[name] = {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(mem.peak / 1e6),
        "rise_mb": round((mem.peak - mem.base) / 1e6),
        "cpu_s": mem.cpu_seconds,
        "at_peak_mb": mem.at_peak,
    }
    line = f"  {name:<8} {seconds:8.1f} s   peak {mem.peak / 1e6:7.0f} MB   rise {(mem.peak - mem.base) / 1e6:6.0f} MB"
    if pss:
        stages[name]["peak_pss_mb"] = round(mem.peak_pss / 1e6)
        line += f"   peak PSS {mem.peak_pss / 1e6:7.0f} MB"
    print(line)
    return out


def measure(
    zoo: str,
    preset: str,
    settings: dict,
    epochs: int,
    storage_uri: str,
    probe: bool,
    train: bool,
    pss: bool = False,
) -> dict:
    config = from_dict(
        {
            **settings,
            "zoo": zoo,
            "storage": storage_uri,
            "tracking_uri": f"sqlite:///{storage.join(storage_uri, 'mlflow.db')}",
            "epochs": epochs,
        },
        PRESETS[preset](),
    )
    stages: dict[str, dict] = {}

    def stage(name: str, fn):
        return _stage(name, stages, fn, pss)

    print(zoo)
    prepared = stage("prepare", lambda: prepare_records(config, probe=probe and config.reads_probes()))
    assignment, index = stage("split", lambda: split_records(config, prepared.output))
    train_ids = [i for i, s in assignment.items() if s == "train"]
    fitted = stage(
        "fit",
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

    streamed = stage("stream", stream)
    row = {
        "zoo": zoo,
        "checkpoints": prepared.records,
        "probed": prepared.probed,
        "preset": preset,
        "settings": settings,
        "train_networks": len(train_ids),
        "stages": stages,
        "stream_networks_per_s": round(streamed / stages["stream"]["seconds"], 1),
    }
    if train:
        final = stage(
            "train",
            lambda: run_training(dataclasses.replace(config), progress=False, log=lambda _: None),
        )
        row.update(
            {
                "epochs": epochs,
                "last_epoch_train_seconds": final.get("last_epoch_train_seconds"),
                "last_epoch_val_seconds": final.get("last_epoch_val_seconds"),
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
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting of the preset (a TrainConfig field; repeatable), e.g. a narrower encoder",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--storage", default="runs/bench-stages", help="records, runs and MLflow go here")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="prepare without probes (with --no-train where the preset reads them)",
    )
    p.add_argument("--no-train", action="store_true", help="stop after the stream stage")
    p.add_argument(
        "--pss",
        action="store_true",
        help="also sum the proportional set size (shared pages split among their processes; slower)",
    )
    add_ray_arguments(p)
    p.add_argument("--json")
    args = p.parse_args()
    try:
        settings = parse_settings(args.set)
        reads_probes = from_dict(settings, PRESETS[args.preset]()).reads_probes()
    except ValueError as e:
        p.error(str(e))
    if args.no_probe and not args.no_train and reads_probes:
        p.error(f"--preset {args.preset} reads probes, so its training run prepares them: add --no-train")
    start_ray(args.num_cpus, verbose=args.verbose)
    rows = [
        measure(
            zoo,
            args.preset,
            settings,
            args.epochs,
            args.storage,
            not args.no_probe,
            not args.no_train,
            args.pss,
        )
        for zoo in args.zoo
    ]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        storage.write_json(args.json, rows)


if __name__ == "__main__":
    main()
