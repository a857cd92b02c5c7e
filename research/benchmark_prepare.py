"""Benchmark prepare (zoo → chunk records with Ray Data) against the practical limit.

For each zoo, two limits measured in one process: the raw read of the same bytes (every file of the
zoo, fetched whole: the I/O limit) and the decode (every checkpoint read and decoded into arrays by the
zoo's reader: the work no pipeline can skip, without chunking or writing). Then prepare into a fresh
output; prints checkpoints/s, MB/s, the ratios raw / prepare and decode / prepare, and the peak
resident memory of the driver plus all Ray worker processes (sampled every 0.2 s) and the CPU time
the driver, Ray's workers and Ray's own services spent during prepare, beside what stayed idle.
--no-probe prepares without running the networks on the probes.

    python research/benchmark_prepare.py --zoo URI [--zoo URI ...] [--chunk-size 16] [--stage-to s3://...]
                                     [--no-probe] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from peak_memory import PeakMemory  # research/, beside this script

from pipeline import storage
from pipeline.data import prepare_chunk_records
from pipeline.runtime import start_ray
from pipeline.zoo import Rejection, open_zoo, read_zoo


def raw_read(uri: str) -> tuple[int, float]:
    """(bytes, seconds) to fetch every file under the zoo in one process."""
    fs, path = storage.filesystem(uri)
    files = [f for f in fs.find(path) if not f.rsplit("/", 1)[-1].startswith("_")]
    t = time.perf_counter()
    n = sum(len(fs.cat_file(f)) for f in files)
    return n, time.perf_counter() - t


def decode(uri: str) -> tuple[int, float]:
    """(checkpoints, seconds) to read and decode every checkpoint of the zoo in one process."""
    t = time.perf_counter()
    n = sum(1 for c in read_zoo(uri) if not isinstance(c, Rejection))
    return n, time.perf_counter() - t


def stage(src: str, dst: str) -> str:
    """Copy the zoo at ``src`` to ``dst`` (skipped when ``dst`` already holds as many files); return dst."""
    src_fs, src_path = storage.filesystem(src)
    dst_fs, dst_path = storage.filesystem(dst)
    files = src_fs.find(src_path)
    if dst_fs.exists(dst_path) and len(dst_fs.find(dst_path)) == len(files):
        return dst
    for f in files:
        storage.write_bytes_atomic(storage.join(dst, f[len(src_path) + 1 :]), src_fs.cat_file(f))
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", action="append", required=True)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--out-root", default=None, help="where benchmark outputs go (default: beside each zoo)")
    p.add_argument(
        "--stage-to",
        help="copy each zoo under this URI first (e.g. s3://sne/bench) and benchmark the copy",
    )
    p.add_argument("--no-probe", action="store_true", help="prepare without running the probes")
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--json")
    args = p.parse_args()
    ray = start_ray(args.num_cpus)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    rows = []
    for zoo in args.zoo:
        if args.stage_to:
            zoo = stage(zoo, storage.join(args.stage_to, zoo.rstrip("/").rsplit("/", 1)[-1]))
        listing = open_zoo(zoo)
        nbytes, raw_s = raw_read(zoo)
        _, decode_s = decode(zoo)
        out = storage.join(args.out_root or f"{zoo.rstrip('/')}-bench", uuid.uuid4().hex[:8])
        with PeakMemory() as mem:
            t = time.perf_counter()
            s = prepare_chunk_records(zoo, args.chunk_size, out=out, probe=not args.no_probe)
            prep_s = time.perf_counter() - t
        fs, path = storage.filesystem(out)
        fs.rm(path, recursive=True)
        row = {
            "zoo": zoo,
            "checkpoints": listing.num_listed,
            "zoo_mb": round(nbytes / 1e6, 1),
            "raw_read_s": round(raw_s, 2),
            "raw_ckpt_per_s": round(listing.num_listed / raw_s, 1),
            "raw_mb_per_s": round(nbytes / 1e6 / raw_s, 1),
            "decode_s": round(decode_s, 2),
            "decode_ckpt_per_s": round(listing.num_listed / decode_s, 1),
            "probes": not args.no_probe,
            "prepare_s": round(prep_s, 2),
            "prepare_ckpt_per_s": round(s.records / prep_s, 1),
            "prepare_mb_per_s": round(nbytes / 1e6 / prep_s, 1),
            "ratio_to_raw": round(raw_s / prep_s, 3),
            "ratio_to_decode": round(decode_s / prep_s, 3),
            "peak_rss_mb": round(mem.peak / 1e6),
            "baseline_rss_mb": round(mem.base / 1e6),
            "peak_above_baseline_mb": round((mem.peak - mem.base) / 1e6),
            # Where the CPUs went during prepare: against cpus × prepare_s, what no process used.
            "cpu_s": mem.cpu_seconds,
            "cpus": cpus,
            "cpu_idle_s": round(cpus * prep_s - sum(mem.cpu_seconds.values()), 2),
        }
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        storage.write_json(args.json, rows)


if __name__ == "__main__":
    main()
