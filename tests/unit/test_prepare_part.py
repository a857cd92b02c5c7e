"""Prepare's per-part task without Ray: what it writes where, in either mode, and that a rerun replaces it."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import data
from pipeline.chunking import CHUNK_RECORD_SCHEMA
from pipeline.zoo import Checkpoint, Layer, native, open_zoo


def make_checkpoint(i: int) -> Checkpoint:
    rng = np.random.default_rng(i)
    layers = [
        Layer(f"layer{j}", kind, rng.normal(size=shape).astype(np.float32), rng.normal(size=shape[0]))
        for j, (kind, shape) in enumerate([("conv2d", (4, 1, 3, 3)), ("linear", (10, 4))])
    ]
    properties = {"test_accuracy": 0.1 + i / 100, "train_accuracy": 0.2 + i / 100}
    return Checkpoint(f"ckpt-{i:03d}", "cnn", "digits", layers, properties)


def _zoo_with_a_bad_checkpoint(tmp_path, count: int) -> tuple[list[dict], str]:
    checkpoints = [make_checkpoint(i) for i in range(count)]
    checkpoints[1].layers[0].weight[0, 0, 0, 0] = np.nan  # rejected with its reason, never dropped
    zoo = str(tmp_path / "zoo")
    native.write_zoo(zoo, checkpoints)
    return open_zoo(zoo).parts, zoo


def _run(parts: list[dict], out: str, write_records: bool) -> list[pa.Table]:
    batch = {"part": [json.dumps(p) for p in parts], "part_index": list(range(len(parts)))}
    return list(data._chunk_part(batch, 4, out, write_records))


def test_a_part_writes_its_records_and_rejections_itself_and_yields_only_their_count(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ROWS_PER_BLOCK", 3)  # several row groups in one part's file
    parts, _ = _zoo_with_a_bad_checkpoint(tmp_path, 8)
    assert len(parts) == 1
    out = str(tmp_path / "records")

    streamed = pa.concat_tables(_run(parts, str(tmp_path / "streamed"), write_records=False))
    counts = _run(parts, out, write_records=True)

    assert [t.to_pylist() for t in counts] == [[{"records": 7}]]
    written = pq.ParquetFile(os.path.join(out, "records", "part-000000.parquet"))
    assert written.schema_arrow == CHUNK_RECORD_SCHEMA and written.num_row_groups == 3
    assert written.read().equals(streamed)  # the same records the streaming mode hands on
    rejected = pq.read_table(os.path.join(out, "rejected", "part-000000.parquet")).to_pylist()
    assert [r["id"] for r in rejected] == ["ckpt-001"] and "finite" in rejected[0]["reason"]

    # A retried task replaces its files: nothing is duplicated.
    _run(parts, out, write_records=True)
    assert sorted(os.listdir(os.path.join(out, "records"))) == ["part-000000.parquet"]
    assert data.count_records(out) == 7


def test_a_part_whose_checkpoints_are_all_rejected_writes_no_records_file(tmp_path):
    checkpoint = make_checkpoint(0)
    checkpoint.layers[0].weight[:] = np.inf
    native.write_zoo(str(tmp_path / "zoo"), [checkpoint])
    out = str(tmp_path / "records")
    counts = _run(open_zoo(str(tmp_path / "zoo")).parts, out, write_records=True)
    assert [t.to_pylist() for t in counts] == [[{"records": 0}]]
    assert not os.path.exists(os.path.join(out, "records"))
    assert data.read_rejections(out).num_rows == 1
