"""A split's records read directly from the record files: every record of the split once, in file order, in
full batches however few of each file's records the split keeps."""

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.split_reads import SCORE_BATCH_RECORDS, split_batches


def _records_folder(tmp_path, files: int, per_file: int) -> tuple[str, list[str]]:
    (tmp_path / "records").mkdir()
    paths = []
    for f in range(files):
        ids = [f"net-{f}-{k:03d}" for k in range(per_file)]
        table = pa.table(
            {
                "id": ids,
                "dataset": ["cifar10"] * per_file,
                "probe_probabilities": pa.nulls(per_file, pa.list_(pa.float16())),
                "target": [float(k) for k in range(per_file)],
            }
        )
        path = tmp_path / "records" / f"part-{f}.parquet"
        pq.write_table(table, path, row_group_size=50)
        paths.append(str(path))
    return str(tmp_path), paths


def test_a_sparse_split_comes_in_full_batches_each_record_once_in_file_order(tmp_path):
    uri, files = _records_folder(tmp_path, files=4, per_file=300)
    every_id = [f"net-{f}-{k:03d}" for f in range(4) for k in range(300)]
    wanted = every_id[::7]  # a tenth-or-so of each file, as a validation split keeps

    batches = list(split_batches(uri, files, pa.array(sorted(wanted), pa.string()), peers=None))

    assert [len(b["id"]) for b in batches[:-1]] == [SCORE_BATCH_RECORDS] * (len(batches) - 1)
    assert 0 < len(batches[-1]["id"]) <= SCORE_BATCH_RECORDS
    assert [i for b in batches for i in b["id"]] == wanted
    assert all(p is None for b in batches for p in b["peer"])  # no consensus: the peer column is null
    assert "probe_probabilities" not in batches[0]


def test_a_share_of_the_files_reads_only_their_records(tmp_path):
    uri, files = _records_folder(tmp_path, files=4, per_file=30)
    every_id = pa.array(sorted(f"net-{f}-{k:03d}" for f in range(4) for k in range(30)), pa.string())

    shares = [
        [i for b in split_batches(uri, files[rank::2], every_id, None) for i in b["id"]] for rank in (0, 1)
    ]

    assert {i.split("-")[1] for i in shares[0]} == {"0", "2"} and {i.split("-")[1] for i in shares[1]} == {
        "1",
        "3",
    }
    assert sorted(shares[0] + shares[1]) == every_id.to_pylist()
    assert list(split_batches(uri, files, pa.array([], pa.string()), None)) == []
