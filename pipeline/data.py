"""Ray Data: a zoo → chunk records (Parquet shards on storage) → a Dataset for training.

Data flow: list the zoo (parts: shards, row ranges, trial groups) on the driver; one Ray task per
part reads its checkpoints and pad-chunks them. Without probes that task also writes the part's
records file itself, so no record passes through the object store; with probes the records stream
on to the probe stage (a whole CPU per task) and from it to ``write_parquet``. The driver never
holds checkpoints, so memory follows the part size, not the zoo size.

Output layout (``<records>`` is derived from the zoo fingerprint, chunk size and schema version
unless given explicitly)::

    <records>/records/*.parquet      chunk records, one row per accepted checkpoint (without probes
                                      one file per part with records, part-<index>.parquet)
    <records>/rejected/part-*.parquet  id + reason for each rejected checkpoint
    <records>/_COMPLETE.json          written last: the summary and every file's size and SHA-256;
                                      without it the output is incomplete
    <records>/_WRITING.json           while a prepare writes the output: who, and a heartbeat

A complete output is reused only when every file it lists is there with its size and checksum; a
missing, truncated, altered or extra file is named and the output rebuilt. Two prepares of the same
output at once produce one: the second waits for the first (or takes over when its heartbeat stops).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.chunking import (
    CHUNK_RECORD_SCHEMA,
    PARQUET_WRITE_OPTIONS,
    SCHEMA_VERSION,
    chunk_checkpoint,
    records_table,
)
from pipeline.probes import probe_table
from pipeline.zoo import Checkpoint, Rejection, open_zoo, read_part

COMPLETE_MARKER = "_COMPLETE.json"
WRITING_MARKER = "_WRITING.json"
# A writer refreshes its marker this often; one silent for STALE_WRITER_S has died and is taken over.
HEARTBEAT_S = 20.0
STALE_WRITER_S = 120.0
# After writing its marker a prepare waits this long and reads it back: of two that wrote at once, the
# one whose marker was written last proceeds, the other waits for it.
CLAIM_CONFIRM_S = 2.0
WAIT_POLL_S = 2.0
CHECKED_FOLDERS = ("records", "rejected")
logger = logging.getLogger(__name__)
# Writers of this process that are writing now (a marker naming this process but none of these is stale).
_WRITING_HERE: set[str] = set()
REJECTED_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string())])
# Chunk records leave a task in slices of this many rows so one huge part never sits in memory whole.
ROWS_PER_BLOCK = 64
# Prepare's stages: a whole CPU per task. Half a CPU ran twice the tasks on the cores and cost 1.7x the
# worker CPU time for the same records (25,000 checkpoints: 18.3 against 10.9 CPU-s, BENCHMARKS.md).
CHUNK_TASK_CPUS = 1.0  # reading, decoding, pad-chunking (and writing, without probes) a zoo part
PROBE_TASK_CPUS = 1.0  # running the networks on the probes (torch, one thread)
READ_TASK_CPUS = 0.25  # reading chunk records for training (load_chunk_dataset says why so little)


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
    probes: bool = True  # whether prepare ran the networks on the probes at all (False: --no-probe)

    def to_dict(self) -> dict:
        return asdict(self)


def default_records_uri(cache_root: str, fingerprint: str, chunk_size: int, probe: bool = True) -> str:
    """Cache location keyed by what determines the content: zoo, chunk size, schema version, and whether
    the networks were probed."""
    name = f"{fingerprint[:16]}-c{chunk_size}-v{SCHEMA_VERSION}"
    return storage.join(cache_root, name if probe else f"{name}-weights")


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


def _chunk_part(batch: dict, chunk_size: int, records_uri: str, write_records: bool) -> Iterator[pa.Table]:
    """Ray Data UDF: one zoo part → chunk records; rejections go beside the output.

    With ``write_records`` the part's records go straight to ``records/part-<index>.parquet`` (a row group
    per ROWS_PER_BLOCK records) and the task yields only their count; otherwise they leave the task in
    slices of ROWS_PER_BLOCK rows for the next stage. Files are named by part and written whole, so a
    retried task overwrites what an earlier attempt wrote instead of adding to it."""
    for part_json, part_index in zip(batch["part"], batch["part_index"], strict=True):
        part = json.loads(part_json)
        name = f"part-{int(part_index):06d}.parquet"
        sink, writer, written = io.BytesIO(), None, 0
        rows: list[dict] = []
        rejected: list[dict] = []
        items = read_part(part)
        while True:
            item = next(items, None)
            if isinstance(item, Rejection):
                rejected.append({"id": item.id, "reason": item.reason})
                continue
            if item is not None:
                assert isinstance(item, Checkpoint)
                rows.append(chunk_checkpoint(item, chunk_size))
            if rows and (item is None or len(rows) >= ROWS_PER_BLOCK):
                if write_records:
                    writer = writer or pq.ParquetWriter(sink, CHUNK_RECORD_SCHEMA, **PARQUET_WRITE_OPTIONS)
                    writer.write_table(records_table(rows))
                    written += len(rows)
                else:
                    yield records_table(rows)
                rows = []
            if item is None:
                break
        if writer is not None:
            writer.close()
            storage.write_bytes_atomic(storage.join(records_uri, "records", name), sink.getvalue())
        # Written even when empty: one file per part makes a retried task overwrite, not duplicate.
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), buf)
        storage.write_bytes_atomic(storage.join(records_uri, "rejected", name), buf.getvalue())
        if write_records:
            yield pa.table({"records": [written]})


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
    probe: bool = True,
) -> PrepareSummary:
    """Turn a zoo into chunk records on storage with Ray Data; reuse a complete earlier output.

    ``probe`` runs every network of a known architecture on the data-free probes (pipeline.probes), what
    the extended encoder reads beside the weights; it is most of prepare's time on small networks. Without
    it the probe columns stay null, for encoders that read the weights alone (the paper's SNE).

    ``out`` names the output explicitly; otherwise it is derived under ``cache_root``. An output
    without its completion marker (an interrupted run), or whose files are not those the marker lists
    (``verify_output``), is rebuilt, never reused. Another prepare writing the same output is waited for.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be a positive integer, got {chunk_size}")
    listing = open_zoo(zoo_uri, format, steps=steps, epoch=epoch)
    if out is None:
        if cache_root is None:
            raise ValueError("give either out= or cache_root= for the chunk records")
        out = default_records_uri(cache_root, listing.fingerprint, chunk_size, probe)
        if not probe:  # the probed records serve a reader of the weights alone just as well
            probed = default_records_uri(cache_root, listing.fingerprint, chunk_size, True)
            done = read_completion(probed)
            if (
                _completes(done, listing.fingerprint, chunk_size, True)
                and verify_output(probed, done) is None
            ):
                return _reused(done)
    done = read_completion(out)
    if _completes(done, listing.fingerprint, chunk_size, probe):
        problem = verify_output(out, done)
        if problem is None:
            return _reused(done)
        logger.warning("chunk records at %s: %s; rebuilding them", out, problem)
        marker_fs, marker = storage.filesystem(storage.join(out, COMPLETE_MARKER))
        marker_fs.rm(marker)
    owner = _claim_output(out, listing.fingerprint, chunk_size, probe)
    if owner is None:  # another prepare completed this output while this one waited for it
        return _reused(read_completion(out))
    with _heartbeat(out, owner):
        summary = _write_records(listing, zoo_uri, chunk_size, out, parts_in_flight, probe)
    return summary


def _completes(done: dict | None, fingerprint: str, chunk_size: int, probe: bool) -> bool:
    return (
        done is not None
        and done.get("fingerprint") == fingerprint
        and done.get("chunk_size") == chunk_size
        and done.get("probes", True) == probe
    )


def _reused(done: dict) -> PrepareSummary:
    fields = set(PrepareSummary.__dataclass_fields__)
    return PrepareSummary(**{**{k: v for k, v in done.items() if k in fields}, "reused": True})


def _write_records(
    listing, zoo_uri: str, chunk_size: int, out: str, parts_in_flight: int | None, probe: bool
) -> PrepareSummary:
    """Write the output afresh (this prepare holds its writing marker) and mark it complete."""
    import ray
    from ray.data import TaskPoolStrategy

    started = time.time()
    fs = storage.filesystem(out)[0]
    # A stale or interrupted output: never mix old files into the new one (the writing marker stays).
    for stale in (*CHECKED_FOLDERS, COMPLETE_MARKER):
        stale_path = storage.filesystem(storage.join(out, stale))[1]
        if fs.exists(stale_path):
            fs.rm(stale_path, recursive=True)
    items = [{"part": json.dumps(p), "part_index": i} for i, p in enumerate(listing.parts)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # This dataset's own settings (the process's stay as they are): Ray Data's default reserves part of
    # the CPUs for each operator, which on 2 CPUs kept chunking tasks waiting behind the input operator;
    # without it the 25,000-checkpoint prepare ran in 9.8 s against 12.2 s.
    ds.context.op_resource_reservation_enabled = False
    ds = ds.map_batches(
        _chunk_part,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"chunk_size": chunk_size, "records_uri": out, "write_records": not probe},
        num_cpus=CHUNK_TASK_CPUS,
        compute=TaskPoolStrategy(size=parts_in_flight) if parts_in_flight else None,
    )
    if probe:
        # Running networks is the heavy part: a stage of its own, a whole CPU per task, that a cluster
        # spreads over its nodes and that a prepare for a weights-only encoder never pays for.
        ds = ds.map_batches(probe_table, batch_format="pyarrow", batch_size=None, num_cpus=PROBE_TASK_CPUS)
        pa_fs, records_path = pyarrow_filesystem(storage.join(out, "records"))
        ds.write_parquet(records_path, filesystem=pa_fs, **PARQUET_WRITE_OPTIONS)
    else:
        # The chunking tasks wrote every record; what comes back is a count per part.
        for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass

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
        probes=probe,
    )
    if summary.records + summary.rejected != summary.listed:
        raise RuntimeError(
            f"chunk records ({summary.records}) + rejected ({summary.rejected}) != listed "
            f"({summary.listed}) for {zoo_uri}; the output at {out} is left incomplete"
        )
    completion = {**summary.to_dict(), "files": file_digests(out)}
    storage.write_bytes_atomic(storage.join(out, COMPLETE_MARKER), json.dumps(completion).encode())
    return summary


def _listed_files(out: str) -> dict[str, int]:
    """{path relative to ``out``: size} of every file under the output's checked folders."""
    files = {}
    for folder in CHECKED_FOLDERS:
        fs, path = storage.filesystem(storage.join(out, folder))
        fs.invalidate_cache()
        if fs.exists(path):
            for f, info in fs.find(path, detail=True).items():
                files[f"{folder}/{f[len(path) :].lstrip('/')}"] = int(info["size"])
    return files


def _sha256(uri: str) -> str:
    digest = hashlib.sha256()
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _digests(out: str, names: list[str]) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:  # object stores answer many reads at once
        return dict(zip(names, pool.map(lambda n: _sha256(storage.join(out, n)), names), strict=True))


def file_digests(out: str) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every record and rejection file of an output."""
    sizes = _listed_files(out)
    sums = _digests(out, sorted(sizes))
    return {name: {"size": sizes[name], "sha256": sums[name]} for name in sorted(sizes)}


def verify_output(out: str, done: dict) -> str | None:
    """What is wrong with a complete output's files, naming the first such file; None when all is as
    its completion marker lists (every file, its size and its SHA-256; no file besides)."""
    expected = done.get("files")
    if not expected:
        return f"{COMPLETE_MARKER} lists no files (written by an older release)"
    found = _listed_files(out)
    for name in sorted(expected):
        if name not in found:
            return f"{name} is missing"
        if found[name] != expected[name]["size"]:
            return f"{name} is {found[name]} bytes, {expected[name]['size']} when written (truncated or replaced)"
    extra = sorted(set(found) - set(expected))
    if extra:
        return f"{extra[0]} was not part of the output ({len(extra)} such file(s))"
    sums = _digests(out, sorted(expected))
    for name in sorted(expected):
        if sums[name] != expected[name]["sha256"]:
            return f"{name} does not match its checksum (altered since it was written)"
    return None


def _read_writer(out: str) -> dict | None:
    fs, path = storage.filesystem(storage.join(out, WRITING_MARKER))
    fs.invalidate_cache()
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def _write_writer(out: str, owner: str) -> None:
    marker = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    storage.write_bytes_atomic(storage.join(out, WRITING_MARKER), json.dumps(marker).encode())


def _writer_is_gone(writer: dict) -> bool:
    """Whether the prepare that wrote this marker has stopped: its heartbeat is stale, or it ran on this
    host and its process is gone (a rerun after a failure need not wait out the heartbeat), or it was an
    earlier, finished prepare of this very process."""
    if time.time() - writer.get("heartbeat", 0) > STALE_WRITER_S:
        return True
    if writer.get("host") != socket.gethostname() or not isinstance(writer.get("pid"), int):
        return False
    if writer["pid"] == os.getpid():
        return writer.get("owner") not in _WRITING_HERE
    try:
        os.kill(writer["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def _claim_output(out: str, fingerprint: str, chunk_size: int, probe: bool) -> str | None:
    """Become the one prepare writing ``out``: returns this writer's id, or None once another prepare has
    completed the output meanwhile. Waits while a live writer holds it (``_writer_is_gone``)."""
    owner = uuid.uuid4().hex
    announced = False
    while True:
        if _completes(read_completion(out), fingerprint, chunk_size, probe):
            return None
        writer = _read_writer(out)
        if writer is None or _writer_is_gone(writer):
            _write_writer(out, owner)
            time.sleep(CLAIM_CONFIRM_S)
            if (_read_writer(out) or {}).get("owner") == owner:
                return owner
            continue
        if not announced:
            logger.warning(
                "chunk records at %s are being written by another prepare (pid %s on %s); waiting for it",
                out,
                writer.get("pid"),
                writer.get("host"),
            )
            announced = True
        time.sleep(WAIT_POLL_S)


class _heartbeat:
    """Keeps this writer's marker fresh while it writes; removes the marker when done (or failed).

    A heartbeat that storage does not take is tried again at the next beat; a marker that cannot be
    removed at the end (storage gone) is left for ``_writer_is_gone`` and never hides the job's own error.
    """

    def __init__(self, out: str, owner: str) -> None:
        self.out, self.owner, self.stop = out, owner, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                _write_writer(self.out, self.owner)
            except Exception as e:  # noqa: BLE001 - storage away for a while: the next beat tries again
                logger.warning("could not refresh the writing marker of %s: %s", self.out, e)

    def __enter__(self) -> None:
        _WRITING_HERE.add(self.owner)
        self.thread.start()

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        _WRITING_HERE.discard(self.owner)
        try:
            if (_read_writer(self.out) or {}).get("owner") == self.owner:
                fs, path = storage.filesystem(storage.join(self.out, WRITING_MARKER))
                fs.rm(path)
        except Exception as e:  # noqa: BLE001 - the job's own outcome matters more than its marker
            logger.warning("could not remove the writing marker of %s: %s", self.out, e)


def count_probed(records_uri: str) -> int:
    """Records whose probe column is set."""
    probe = read_record_index(records_uri, ("probe",)).column("probe")
    return len(probe) - probe.null_count


def load_chunk_dataset(records_uri: str, columns: list[str] | None = None, shuffle_seed: int | None = None):
    """The chunk records of a complete output as a Ray Dataset (streamed from storage). With
    ``shuffle_seed`` the files are read in a fresh order at every execution (every epoch), the same
    sequence of orders for the same seed: with a bounded local shuffle on top, a pass over a zoo too large
    to hold mixes networks from all over it without materialising it. (Measured with Ray 2.60's file-based
    reader through the streaming split Ray Train uses: the first two epochs read the files in one order,
    every later epoch in its own.)"""
    import ray
    from ray.data import DataContext, FileShuffleConfig

    if read_completion(records_uri) is None:
        raise FileNotFoundError(
            f"no complete chunk records at {records_uri} (missing {COMPLETE_MARKER}); run jobs/prepare.py first"
        )
    pa_fs, path = pyarrow_filesystem(storage.join(records_uri, "records"))
    shuffle = (
        None if shuffle_seed is None else FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True)
    )
    # Two choices keep a stream from waiting on the workers that wait for it, when Train workers and Tune
    # trials hold most CPUs of a small cluster (seen as a two-trial sweep on 2 CPUs that hung):
    # - Ray's file-based reader (not the newer one, whose listing step asks a whole CPU per execution,
    #   every epoch, inside the running trial): this one lists the files once, here on the caller;
    # - a quarter CPU per read task, not Ray's default of one.
    context = DataContext.get_current()
    newer_reader = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(
            path, filesystem=pa_fs, columns=columns, shuffle=shuffle, num_cpus=READ_TASK_CPUS
        )
    finally:
        context.use_datasource_v2 = newer_reader


def record_files(records_uri: str) -> list[str]:
    """The chunk-record files of an output, in file order (paths on its filesystem)."""
    fs, path = storage.filesystem(storage.join(records_uri, "records"))
    files = sorted(f for f in fs.ls(path, detail=False) if f.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"no chunk records under {records_uri}")
    return files


def iter_record_files(
    records_uri: str, files: list[str], columns: tuple[str, ...] | None = None, batch_rows: int = 1024
) -> Iterator[pa.Table]:
    """The records of ``files`` (of ``record_files``), ``columns`` of them (None: all), in tables of at most
    ``batch_rows`` rows, in file order: a pass whose memory follows the batch, not the zoo."""
    fs, _ = storage.filesystem(storage.join(records_uri, "records"))
    for f in files:
        with fs.open(f, "rb") as fh:
            parquet = pq.ParquetFile(fh)
            if parquet.metadata.num_rows == 0:  # keeps the columns' types where a file holds no record
                empty = parquet.schema_arrow.empty_table()
                yield empty if columns is None else empty.select(list(columns))
            names = None if columns is None else list(columns)
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=names):
                yield pa.Table.from_batches([batch])


def iter_record_index(
    records_uri: str, columns: tuple[str, ...], batch_rows: int = 1024
) -> Iterator[pa.Table]:
    """Per-checkpoint columns of every chunk record, read on the caller in tables of at most ``batch_rows``
    rows, in file order."""
    return iter_record_files(records_uri, record_files(records_uri), columns, batch_rows)


def read_record_index(records_uri: str, columns: tuple[str, ...] = ("id", "family", "dataset")) -> pa.Table:
    """Small per-checkpoint columns (no weights) of every chunk record, read on the driver."""
    return pa.concat_tables(iter_record_index(records_uri, columns, batch_rows=65_536))
