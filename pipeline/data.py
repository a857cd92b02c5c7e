"""Ray Data: a zoo → chunk records (Parquet shards on storage) → a Dataset for training.

Data flow: list the zoo (parts: shards, row ranges, trial groups) on the driver; one Ray task per
part reads its checkpoints, pad-chunks them and streams chunk records to ``write_parquet``. The
driver never holds checkpoints, so memory follows the part size, not the zoo size.

Output layout (``<records>`` is derived from the zoo fingerprint, chunk size and schema version
unless given explicitly)::

    <records>/records/*.parquet      chunk records, one row per accepted checkpoint
    <records>/rejected/part-*.parquet  id + reason for each rejected checkpoint
    <records>/_COMPLETE.json          written last: the summary; without it the output is incomplete
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.chunking import CHUNK_RECORD_SCHEMA, SCHEMA_VERSION, chunk_checkpoint
from pipeline.zoo import Checkpoint, Rejection, open_zoo, read_part

COMPLETE_MARKER = "_COMPLETE.json"
REJECTED_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string())])
# Chunk records leave a task in slices of this many rows so one huge part never sits in memory whole.
ROWS_PER_BLOCK = 64


@dataclass
class PrepareSummary:
    records: int
    rejected: int
    listed: int
    chunk_size: int
    output: str
    zoo: str
    format: str
    fingerprint: str
    schema_version: int = SCHEMA_VERSION
    seconds: float = 0.0
    reused: bool = False
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    probed: int = 0  # records with a probe vector (pipeline.probes): their architecture is runnable

    def to_dict(self) -> dict:
        return asdict(self)


def default_records_uri(cache_root: str, fingerprint: str, chunk_size: int) -> str:
    """Cache location keyed by what determines the content: zoo, chunk size, schema version."""
    return storage.join(cache_root, f"{fingerprint[:16]}-c{chunk_size}-v{SCHEMA_VERSION}")


def pyarrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for Ray Data readers and writers, built on our fsspec filesystem."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


def quiet_data_progress() -> None:
    """Silence Ray Data's per-execution progress output in this process (training loops, evaluation):
    its bars, and the INFO line each execution logs when it starts and finishes. Warnings still show."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def read_completion(records_uri: str) -> dict | None:
    """The summary of a complete chunk-record output, or None when absent or incomplete."""
    fs, path = storage.filesystem(storage.join(records_uri, COMPLETE_MARKER))
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def _chunk_part(batch: dict, chunk_size: int, records_uri: str) -> Iterator[pa.Table]:
    """Ray Data UDF: one zoo part → chunk records; rejections go beside the output."""
    for part_json, part_index in zip(batch["part"], batch["part_index"], strict=True):
        part = json.loads(part_json)
        rows: list[dict] = []
        rejected: list[dict] = []
        for item in read_part(part):
            if isinstance(item, Rejection):
                rejected.append({"id": item.id, "reason": item.reason})
                continue
            assert isinstance(item, Checkpoint)
            rows.append(chunk_checkpoint(item, chunk_size))
            if len(rows) >= ROWS_PER_BLOCK:
                yield pa.Table.from_pylist(rows, schema=CHUNK_RECORD_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=CHUNK_RECORD_SCHEMA)
        # Written even when empty: one file per part makes a retried task overwrite, not duplicate.
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), buf)
        storage.write_bytes_atomic(
            storage.join(records_uri, "rejected", f"part-{int(part_index):06d}.parquet"), buf.getvalue()
        )


def read_rejections(records_uri: str) -> pa.Table:
    """All rejected checkpoints (id, reason) of a chunk-record output."""
    fs, path = storage.filesystem(storage.join(records_uri, "rejected"))
    if not fs.exists(path):
        return REJECTED_SCHEMA.empty_table()
    files = sorted(f for f in fs.ls(path, detail=False) if f.endswith(".parquet"))
    tables = [pq.read_table(io.BytesIO(fs.cat_file(f))) for f in files]
    return pa.concat_tables(tables) if tables else REJECTED_SCHEMA.empty_table()


def count_records(records_uri: str) -> int:
    """Row count from the Parquet footers only (no data pages are read)."""
    fs, path = storage.filesystem(storage.join(records_uri, "records"))
    if not fs.exists(path):
        return 0
    total = 0
    for f in fs.ls(path, detail=False):
        if f.endswith(".parquet"):
            with fs.open(f, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
    return total


def prepare_chunk_records(
    zoo_uri: str,
    chunk_size: int,
    *,
    out: str | None = None,
    cache_root: str | None = None,
    format: str = "auto",
    steps: str = "final",
    epoch: int | None = None,
    parts_in_flight: int | None = None,
) -> PrepareSummary:
    """Turn a zoo into chunk records on storage with Ray Data; reuse a complete earlier output.

    ``out`` names the output explicitly; otherwise it is derived under ``cache_root``. An output
    without its completion marker (an interrupted run) is deleted and rebuilt, never reused.
    """
    import ray
    from ray.data import TaskPoolStrategy

    if chunk_size < 1:
        raise ValueError(f"chunk size must be a positive integer, got {chunk_size}")
    listing = open_zoo(zoo_uri, format, steps=steps, epoch=epoch)
    if out is None:
        if cache_root is None:
            raise ValueError("give either out= or cache_root= for the chunk records")
        out = default_records_uri(cache_root, listing.fingerprint, chunk_size)
    done = read_completion(out)
    if (
        done is not None
        and done.get("fingerprint") == listing.fingerprint
        and done.get("chunk_size") == chunk_size
    ):
        return PrepareSummary(**{**done, "reused": True})

    started = time.time()
    fs, path = storage.filesystem(out)
    if fs.exists(path):  # a stale or interrupted output: never mix old files into the new one
        fs.rm(path, recursive=True)
    items = [{"part": json.dumps(p), "part_index": i} for i, p in enumerate(listing.parts)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        _chunk_part,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"chunk_size": chunk_size, "records_uri": out},
        # Reading + chunking is light; a fraction of a CPU lets Train workers run beside it.
        num_cpus=0.5,
        compute=TaskPoolStrategy(size=parts_in_flight) if parts_in_flight else None,
    )
    pa_fs, records_path = pyarrow_filesystem(storage.join(out, "records"))
    ds.write_parquet(records_path, filesystem=pa_fs)

    rejected = read_rejections(out)
    reasons: dict[str, int] = {}
    for reason in rejected.column("reason").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    summary = PrepareSummary(
        records=count_records(out),
        rejected=rejected.num_rows,
        listed=listing.num_listed,
        chunk_size=chunk_size,
        output=out,
        zoo=zoo_uri,
        format=listing.format,
        fingerprint=listing.fingerprint,
        seconds=round(time.time() - started, 2),
        rejected_reasons=reasons,
        probed=count_probed(out),
    )
    if summary.records + summary.rejected != summary.listed:
        raise RuntimeError(
            f"chunk records ({summary.records}) + rejected ({summary.rejected}) != listed "
            f"({summary.listed}) for {zoo_uri}; the output at {out} is left incomplete"
        )
    storage.write_bytes_atomic(storage.join(out, COMPLETE_MARKER), json.dumps(summary.to_dict()).encode())
    return summary


def count_probed(records_uri: str) -> int:
    """Records whose probe column is set."""
    probe = read_record_index(records_uri, ("probe",)).column("probe")
    return len(probe) - probe.null_count


def load_chunk_dataset(records_uri: str, columns: list[str] | None = None):
    """The chunk records of a complete output as a Ray Dataset (streamed from storage)."""
    import ray

    if read_completion(records_uri) is None:
        raise FileNotFoundError(
            f"no complete chunk records at {records_uri} (missing {COMPLETE_MARKER}); run jobs/prepare.py first"
        )
    pa_fs, path = pyarrow_filesystem(storage.join(records_uri, "records"))
    return ray.data.read_parquet(path, filesystem=pa_fs, columns=columns)


def read_record_index(records_uri: str, columns: tuple[str, ...] = ("id", "family", "dataset")) -> pa.Table:
    """Small per-checkpoint columns (no weights) of every chunk record, read on the driver."""
    fs, path = storage.filesystem(storage.join(records_uri, "records"))
    tables = []
    for f in sorted(fs.ls(path, detail=False)):
        if f.endswith(".parquet"):
            with fs.open(f, "rb") as fh:
                tables.append(pq.read_table(fh, columns=list(columns)))
    if not tables:
        raise FileNotFoundError(f"no chunk records under {records_uri}")
    return pa.concat_tables(tables)
