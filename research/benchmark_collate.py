"""Benchmark: collate time per batch, with and without the per-layer summaries SNE can read.

Collate runs on the training workers between steps, so its cost adds to every step. This reads
prepared chunk records (the folder `jobs/prepare.py` printed, or the `chunk_records` of a
`jobs/train.py --json` output) and times `collate_chunk_records` over the same batches without
and with the layer summaries (`--no-layer-statistics` runs skip them), after one untimed pass.

    python research/benchmark_collate.py --records runs/chunk-records/<fingerprint>-c16-v3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.collate import collate_chunk_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", required=True, help="a local chunk-records folder (with records/*.parquet)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    files = sorted(Path(args.records, "records").glob("*.parquet"))
    if not files:
        sys.exit(f"error: no records/*.parquet under {args.records}: run jobs/prepare.py first")
    wanted = args.batch_size * args.batches
    rows: list[dict] = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
        if len(rows) >= wanted:
            break
    rows = rows[:wanted]
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    def collate_all(layer_summaries: bool) -> None:
        for batch in batches:
            collate_chunk_records(batch, layer_summaries=layer_summaries)

    collate_all(False)  # one untimed pass each: imports and allocator warm-up
    collate_all(True)
    for name, layer_summaries in (("weights only", False), ("layer summaries", True)):
        start = time.perf_counter()
        for _ in range(args.repeats):
            collate_all(layer_summaries)
        ms = (time.perf_counter() - start) / (args.repeats * len(batches)) * 1000
        print(f"{name:16s} {ms:7.1f} ms per batch of {len(batches[0])} checkpoints")


if __name__ == "__main__":
    main()
