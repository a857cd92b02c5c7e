"""research/benchmark_collate.py on chunk records written as prepare writes them."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.chunking import CHUNK_RECORD_SCHEMA, chunk_checkpoint


def test_collate_benchmark_times_both_summaries_on_prepared_records(tmp_path, run_job, checkpoint_factory):
    rows = [chunk_checkpoint(checkpoint_factory(i), 4) for i in range(12)]
    (tmp_path / "records").mkdir()
    pq.write_table(
        pa.Table.from_pylist(rows, schema=CHUNK_RECORD_SCHEMA), tmp_path / "records" / "part.parquet"
    )

    done = run_job(
        "research/benchmark_collate.py",
        "--records",
        str(tmp_path),
        "--batch-size",
        "4",
        "--batches",
        "2",
        "--repeats",
        "1",
    )

    assert done.returncode == 0, done.stderr
    timed = dict(
        re.findall(
            r"^(weights only|layer summaries)\s+([\d.]+) ms per batch of 4 checkpoints$", done.stdout, re.M
        )
    )
    assert set(timed) == {"weights only", "layer summaries"} and all(float(ms) > 0 for ms in timed.values())


def test_collate_benchmark_says_when_the_folder_holds_no_records(tmp_path, run_job):
    done = run_job("research/benchmark_collate.py", "--records", str(tmp_path))
    assert done.returncode != 0 and "no records/*.parquet" in done.stderr and "jobs/prepare.py" in done.stderr
