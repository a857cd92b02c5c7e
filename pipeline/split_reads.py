"""Reading one split's chunk records: the id filter, the peer-agreement column that replaces the probes'
class probabilities, and a direct pyarrow pass over a share of the record files.

Ray Data passes (the training stream) apply ``select_and_attach_peers`` to each block; the passes that
keep a tenth of the zoo or score it (validation in every epoch, the final scoring) read the files
themselves with ``split_batches``: through Ray Data the same pass cost 4-5x the CPU (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data import iter_record_files

# Records per batch handed to the encoder, and per table read: the memory of a pass follows this many
# networks, whatever their size.
SCORE_BATCH_RECORDS = 64


def select_ids(table: pa.Table, ids: pa.Array) -> pa.Table:
    return table.filter(pc.is_in(table["id"], value_set=ids))


def probe_rows(table: pa.Table) -> list[dict]:
    """Per row {id, dataset, probe_probabilities (a flat float16 array or None)}, sliced from the Arrow
    buffers: a Python float per probability would cost seconds per thousand networks."""
    column = table.column("probe_probabilities").combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [
        {
            "id": i,
            "dataset": d,
            "probe_probabilities": values[offsets[k] : offsets[k + 1]] if valid[k] else None,
        }
        for k, (i, d) in enumerate(
            zip(table.column("id").to_pylist(), table.column("dataset").to_pylist(), strict=True)
        )
    ]


def select_and_attach_peers(table: pa.Table, ids: pa.Array, peers) -> pa.Table:
    """The records of ``ids``, their probe probabilities replaced by a "peer" column of their agreement
    with ``peers`` (a pipeline.probes.PeerConsensus; null without one): training reads the 6 numbers, not
    the 5,120."""
    table = select_ids(table, ids)
    features = (
        [peers.record_features(r) for r in probe_rows(table)] if peers is not None else [None] * len(table)
    )
    return table.drop_columns(["probe_probabilities"]).append_column(
        "peer", pa.array(features, pa.list_(pa.float32()))
    )


def split_batches(records_uri: str, files: list[str], ids: pa.Array, peers) -> Iterator[dict]:
    """The records of ``ids`` in ``files`` (of ``data.record_files``), with their peer agreement, as numpy
    batches of ``SCORE_BATCH_RECORDS`` records (the last one fewer) in file order, read with pyarrow in this
    process. Files are read a batch's worth of records at a time, and what the filter keeps is gathered
    into full batches: a validation split keeps a tenth of what it reads."""
    kept: list[pa.Table] = []
    held = 0
    for table in iter_record_files(records_uri, files, batch_rows=SCORE_BATCH_RECORDS):
        table = select_and_attach_peers(table, ids, peers)
        kept.append(table)
        held += len(table)
        while held >= SCORE_BATCH_RECORDS:
            whole = pa.concat_tables(kept)
            yield _numpy(whole.slice(0, SCORE_BATCH_RECORDS))
            kept, held = [whole.slice(SCORE_BATCH_RECORDS)], held - SCORE_BATCH_RECORDS
    if held:
        yield _numpy(pa.concat_tables(kept))


def _numpy(table: pa.Table) -> dict:
    return {k: table.column(k).to_numpy(zero_copy_only=False) for k in table.column_names}
