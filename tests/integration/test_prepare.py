"""Ray Data prepare: s3:// in, s3:// out, cached, safe against interruption, rejections kept."""

import numpy as np
import pytest

from pipeline import storage
from pipeline.chunking import unchunk_record
from pipeline.collate import collate_chunk_records
from pipeline.data import COMPLETE_MARKER, load_chunk_dataset, prepare_chunk_records, read_rejections
from pipeline.zoo import native

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_zoo(s3_bucket, checkpoint_factory):
    ckpts = [checkpoint_factory(i, fam) for i, fam in enumerate(["mlp", "cnn"] * 6)]
    ckpts.append(checkpoint_factory(50, "cnn", nan=True))
    uri = f"{s3_bucket}/zoo"
    native.write_zoo(uri, ckpts, shard_size=5)
    return uri, ckpts


def test_prepare_streams_s3_zoo_to_s3_chunk_records(ray_instance, s3_bucket, s3_zoo):
    uri, ckpts = s3_zoo
    summary = prepare_chunk_records(uri, 4, cache_root=f"{s3_bucket}/cache")
    assert (summary.records, summary.rejected, summary.listed) == (12, 1, 13)
    assert summary.output.startswith(f"{s3_bucket}/cache/") and "-c4-v" in summary.output
    rejected = read_rejections(summary.output).to_pylist()
    assert rejected[0]["id"] == ckpts[-1].id and "non-finite" in rejected[0]["reason"]

    rows = load_chunk_dataset(summary.output).take_all()
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in ckpts[:-1])
    by_id = {c.id: c for c in ckpts}
    for r in rows:  # exact round trip back to the weights through Parquet on S3
        state = unchunk_record(r)
        for name, arr in by_id[r["id"]].state_dict().items():
            np.testing.assert_array_equal(state[name], arr)
    batch = collate_chunk_records(load_chunk_dataset(summary.output).take_batch(5, batch_format="numpy"))
    assert batch["target"].shape == (5,) and batch["weight_chunks"].shape[1] == 4
    # These checkpoints name no architecture: no probes, counted as such, read as absent.
    assert summary.probed == 0 and not batch["probe_present"].any()


def test_rerun_reuses_the_cache_and_a_new_chunk_size_does_not(ray_instance, s3_bucket, s3_zoo):
    uri, _ = s3_zoo
    first = prepare_chunk_records(uri, 8, cache_root=f"{s3_bucket}/cache")
    fs, path = storage.filesystem(storage.join(first.output, "records"))
    files_before = sorted(fs.ls(path, detail=False))
    again = prepare_chunk_records(uri, 8, cache_root=f"{s3_bucket}/cache")
    assert again.reused and again.output == first.output
    assert sorted(fs.ls(path, detail=False)) == files_before
    other = prepare_chunk_records(uri, 16, cache_root=f"{s3_bucket}/cache")
    assert not other.reused and other.output != first.output


def test_interrupted_output_is_rebuilt_not_reused(ray_instance, s3_bucket, s3_zoo):
    uri, _ = s3_zoo
    out = f"{s3_bucket}/explicit-out"
    done = prepare_chunk_records(uri, 4, out=out)
    # Simulate a run killed mid-write: marker gone, a stray partial file left behind.
    fs, marker = storage.filesystem(storage.join(out, COMPLETE_MARKER))
    fs.rm(marker)
    storage.write_bytes_atomic(storage.join(out, "records", "zz-partial.parquet"), b"PAR1 truncated")
    redone = prepare_chunk_records(uri, 4, out=out)
    assert not redone.reused
    assert (redone.records, redone.rejected) == (done.records, done.rejected)
    assert len(load_chunk_dataset(out).take_all()) == done.records


def test_a_damaged_cache_is_named_and_rebuilt(ray_instance, s3_bucket, s3_zoo, caplog):
    uri, _ = s3_zoo
    out = f"{s3_bucket}/checked"
    first = prepare_chunk_records(uri, 4, out=out)
    fs, records = storage.filesystem(storage.join(out, "records"))
    damages = {
        "truncated": lambda blob: blob[: len(blob) // 2],
        "does not match its checksum": lambda blob: (
            blob[:-20] + bytes(b ^ 0xFF for b in blob[-20:])
        ),  # same size
    }
    for expected, damage in damages.items():
        fs.invalidate_cache()
        victim = sorted(fs.ls(records, detail=False))[0]  # a rebuild names its files anew
        name = "records/" + victim.rsplit("/", 1)[-1]
        blob = fs.cat_file(victim)
        fs.pipe_file(victim, damage(blob))
        caplog.clear()
        redone = prepare_chunk_records(uri, 4, out=out)
        assert not redone.reused, expected
        assert f"{name} " in caplog.text and expected in caplog.text, caplog.text
        assert (redone.records, redone.rejected) == (first.records, first.rejected)
        assert prepare_chunk_records(uri, 4, out=out).reused  # the rebuilt output checks out
    # A file nobody wrote would be read as more records: the output is rebuilt without it.
    storage.write_bytes_atomic(storage.join(out, "records", "stray.parquet"), blob)
    caplog.clear()
    assert not prepare_chunk_records(uri, 4, out=out).reused
    assert "records/stray.parquet was not part of the output" in caplog.text
    assert len(load_chunk_dataset(out).take_all()) == first.records


# Two jobs preparing the same output: processes of their own, joined to the shared Ray instance.
PREPARE = """
import json, sys
from pipeline.runtime import start_ray
start_ray(verbose=False)
from pipeline.data import prepare_chunk_records
s = prepare_chunk_records(sys.argv[1], 4, out=sys.argv[2])
print(json.dumps({"reused": s.reused, "records": s.records}))
"""


def test_two_prepares_of_one_output_at_once_make_one(ray_instance, s3_bucket, s3_zoo):
    import json
    import os
    import subprocess
    import sys

    uri, ckpts = s3_zoo
    out = f"{s3_bucket}/contended"
    env = dict(os.environ, RAY_ADDRESS=ray_instance.get_runtime_context().gcs_address)
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE, uri, out],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    # One wrote, the other waited for it and reused its output; both see every record once.
    assert sorted(r["reused"] for r in results) == [False, True]
    assert [r["records"] for r in results] == [len(ckpts) - 1] * 2
    ids = [r["id"] for r in load_chunk_dataset(out).take_all()]
    assert sorted(ids) == sorted(c.id for c in ckpts[:-1])
    fs, marker = storage.filesystem(storage.join(out, "_WRITING.json"))
    assert not fs.exists(marker)


def test_a_weights_only_encoder_prepares_without_probes_and_takes_probed_records_once_they_exist(tiny_zoo):
    from pipeline.config import from_dict, paper
    from pipeline.driver import prepare_records

    weights_only = from_dict({"zoo": f"{tiny_zoo}/zoo", "storage": f"{tiny_zoo}/probe-or-not"}, paper())
    extended = from_dict({"zoo": f"{tiny_zoo}/zoo", "storage": f"{tiny_zoo}/probe-or-not"})
    assert not weights_only.reads_probes() and extended.reads_probes()

    bare = prepare_records(weights_only)
    assert not bare.reused and not bare.probes and bare.probed == 0 and bare.output.endswith("-weights")
    rows = load_chunk_dataset(bare.output, columns=["probe", "probe_probabilities"]).take_all()
    assert len(rows) == bare.records and all(
        r["probe"] is None and r["probe_probabilities"] is None for r in rows
    )

    probed = prepare_records(extended)
    assert probed.output != bare.output and probed.probes and probed.probed == probed.records
    again = prepare_records(weights_only)  # the probed records serve the weights-only encoder too
    assert again.reused and again.output == probed.output
