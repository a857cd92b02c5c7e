"""jobs/benchmark_collate.py on chunk records written as prepare writes them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.chunking import CHUNK_RECORD_SCHEMA, chunk_checkpoint
from pipeline.zoo import Checkpoint, Layer

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "benchmark_collate.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_collate_benchmark_times_both_summaries_on_prepared_records(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        layers = [
            Layer(f"l{j}", "linear", rng.normal(size=s).astype(np.float32), np.zeros(s[0], np.float32))
            for j, s in enumerate([(8, 4), (3, 8)])
        ]
        rows.append(chunk_checkpoint(Checkpoint(f"c{i}", "mlp", "digits", layers, {"test_accuracy": 0.5}), 4))
    (tmp_path / "records").mkdir()
    pq.write_table(
        pa.Table.from_pylist(rows, schema=CHUNK_RECORD_SCHEMA), tmp_path / "records" / "part.parquet"
    )

    done = _run("--records", str(tmp_path), "--batch-size", "4", "--batches", "2", "--repeats", "1")

    assert done.returncode == 0, done.stderr
    timed = dict(
        re.findall(r"^(sets \(no links\)|links)\s+([\d.]+) ms per batch of 4 checkpoints$", done.stdout, re.M)
    )
    assert set(timed) == {"sets (no links)", "links"} and all(float(ms) > 0 for ms in timed.values())


def test_collate_benchmark_says_when_the_folder_holds_no_records(tmp_path):
    done = _run("--records", str(tmp_path))
    assert done.returncode != 0 and "no records/*.parquet" in done.stderr and "jobs/prepare.py" in done.stderr
