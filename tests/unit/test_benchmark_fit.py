"""research/benchmark_fit.py on chunk records written as prepare writes them."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.chunking import CHUNK_RECORD_SCHEMA, chunk_checkpoint


def _write_records(folder, checkpoints) -> None:
    (folder / "records").mkdir()
    rows = [chunk_checkpoint(c, 4) for c in checkpoints]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=CHUNK_RECORD_SCHEMA), folder / "records" / "part.parquet"
    )


def test_fit_benchmark_scores_sne_and_the_summary_learners_on_both_splits(
    tmp_path, run_job, checkpoint_factory
):
    _write_records(tmp_path, [checkpoint_factory(i, family) for i in range(20) for family in ("mlp", "cnn")])
    out = tmp_path / "fit.json"

    done = run_job(
        "research/benchmark_fit.py",
        "--records",
        str(tmp_path),
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--json",
        str(out),
    )

    assert done.returncode == 0, done.stderr
    # 40 networks: 20 test, then 16 train / 4 validation; both architectures in one fit.
    assert "fitting 16 training networks, validating on 4" in done.stdout
    epochs = re.findall(
        r"^SNE epoch +(\d+): training networks MSE \S+ tau \S+ \| validation MSE", done.stdout, re.M
    )
    assert epochs == ["1", "2"]
    figures = json.loads(out.read_text())
    assert [row["epoch"] for row in figures["sne"]] == [1, 2]
    for name in ("MLP on the summaries", "trees on the summaries"):
        assert f"{name}" in done.stdout
        assert all(figures[name][part]["mse"] >= 0 for part in ("train", "val"))


def test_fit_benchmark_says_which_property_is_missing(tmp_path, run_job, checkpoint_factory):
    _write_records(tmp_path, [checkpoint_factory(i) for i in range(8)])
    done = run_job("research/benchmark_fit.py", "--records", str(tmp_path), "--property", "frequency")
    assert done.returncode != 0 and "lack property 'frequency'" in done.stderr


def test_fit_benchmark_refuses_too_few_networks(tmp_path, run_job, checkpoint_factory):
    _write_records(tmp_path, [checkpoint_factory(i) for i in range(8)])
    done = run_job("research/benchmark_fit.py", "--records", str(tmp_path), "--n-train", "1")
    assert done.returncode != 0 and "need at least 2 training and 2 validation networks, got 1" in done.stderr


def test_fit_benchmark_says_when_the_folder_holds_no_records(tmp_path, run_job):
    done = run_job("research/benchmark_fit.py", "--records", str(tmp_path))
    assert done.returncode != 0 and "no records/*.parquet" in done.stderr and "jobs/prepare.py" in done.stderr
