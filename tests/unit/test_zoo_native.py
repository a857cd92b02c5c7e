"""The native format: round trips, commit-marker semantics, and every bad input a reader must reject."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.zoo import Checkpoint, Layer, Rejection, ZooError, native, open_zoo, read_part, read_zoo

SMALLCNN = [
    ("conv2d", (16, 1, 3, 3)),
    ("conv2d", (16, 16, 3, 3)),
    ("conv2d", (16, 16, 3, 3)),
    ("linear", (10, 16)),
]
MLP = [("linear", (32, 1)), ("linear", (32, 32)), ("linear", (1, 32))]


def make_checkpoint(
    i: int, shapes=SMALLCNN, family="smallcnn", dataset="digits", properties=None
) -> Checkpoint:
    rng = np.random.default_rng(i)
    layers = [
        Layer(
            f"layer{j}",
            kind,
            rng.normal(size=shape).astype(np.float32),
            rng.normal(size=shape[0]).astype(np.float32),
        )
        for j, (kind, shape) in enumerate(shapes)
    ]
    if properties is None:
        properties = {
            "test_accuracy": 0.1 + i / 100,
            "train_accuracy": 0.2 + i / 100,
            "test_loss": 2.0 - i / 50,
        }
    return Checkpoint(
        f"ckpt-{i:03d}", family, dataset, layers, properties, {"lr": 0.001 * (i + 1), "opt": "adam"}
    )


def read_all(uri: str, **options) -> tuple[list[Checkpoint], list[Rejection], int]:
    listing = open_zoo(uri, **options)
    items = [item for part in listing.parts for item in read_part(json.loads(json.dumps(part)))]
    accepted = [x for x in items if isinstance(x, Checkpoint)]
    rejected = [x for x in items if isinstance(x, Rejection)]
    assert len(accepted) + len(rejected) == listing.num_listed
    return accepted, rejected, listing.num_listed


def test_round_trip_is_bit_exact_and_keeps_metadata(tmp_path):
    zoo = str(tmp_path / "zoo")
    written = [make_checkpoint(i) for i in range(7)]
    written.append(
        make_checkpoint(99, shapes=MLP, family="siren", properties={"frequency": 3.5, "amplitude": 1.2})
    )
    written[-1].layers[2].bias = None  # a layer without bias survives the round trip
    native.write_zoo(zoo, written, shard_size=3)

    listing = open_zoo(zoo)
    assert listing.format == "native" and listing.num_listed == 8 and len(listing.parts) == 3
    accepted, rejected, _ = read_all(zoo)
    assert rejected == []
    assert [c.id for c in accepted] == [c.id for c in written]
    assert [c.id for c in read_zoo(zoo, "native")] == [c.id for c in written]
    for got, want in zip(accepted, written, strict=True):
        assert (got.family, got.dataset, got.hyperparameters) == (
            want.family,
            want.dataset,
            want.hyperparameters,
        )
        for a, b in zip(got.layers, want.layers, strict=True):
            assert (a.name, a.kind) == (b.name, b.kind)
            assert a.weight.dtype == np.float32 and np.array_equal(a.weight, b.weight)
            assert (a.bias is None and b.bias is None) or np.array_equal(a.bias, b.bias)
            a.weight[...] = 0  # readers hand out writable arrays
    assert accepted[0].properties["generalization_gap"] == pytest.approx(0.1)
    assert accepted[-1].properties == {"frequency": 3.5, "amplitude": 1.2}


def test_shard_without_manifest_is_invisible_and_finished_shards_lists_committed(tmp_path):
    zoo = str(tmp_path / "zoo")
    native.write_shard(zoo, "a", [make_checkpoint(0), make_checkpoint(1)])
    native.write_shard(zoo, "b", [make_checkpoint(2)])
    os.remove(tmp_path / "zoo" / "manifest" / "b.parquet")  # the writer died before its commit marker
    assert native.finished_shards(zoo) == {"a"}
    accepted, rejected, listed = read_all(zoo)
    assert listed == 2 and [c.id for c in accepted] == ["ckpt-000", "ckpt-001"] and not rejected


def test_writers_refuse_unusable_input(tmp_path):
    zoo = str(tmp_path / "zoo")
    with pytest.raises(ZooError, match="no checkpoints"):
        native.write_zoo(zoo, [])
    with pytest.raises(ZooError, match="appears twice"):
        native.write_shard(zoo, "s", [make_checkpoint(0), make_checkpoint(0)])
    with pytest.raises(ZooError, match="shard name"):
        native.write_shard(zoo, "../escape", [make_checkpoint(0)])
    native.write_zoo(zoo, [make_checkpoint(0)])
    with pytest.raises(ZooError, match="already holds"):
        native.write_zoo(zoo, [make_checkpoint(1)])


def test_truncated_shard_rejects_each_of_its_checkpoints(tmp_path):
    zoo = str(tmp_path / "zoo")
    native.write_zoo(zoo, [make_checkpoint(i) for i in range(5)], shard_size=3)
    shard = tmp_path / "zoo" / "shards" / "shard-000000.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    accepted, rejected, listed = read_all(zoo)
    assert listed == 5 and [c.id for c in accepted] == ["ckpt-003", "ckpt-004"]
    assert [r.id for r in rejected] == ["ckpt-000", "ckpt-001", "ckpt-002"]
    assert all("corrupt or truncated" in r.reason for r in rejected)


def test_corrupt_tensor_bytes_are_caught_by_the_digest(tmp_path):
    zoo = str(tmp_path / "zoo")
    native.write_zoo(zoo, [make_checkpoint(i) for i in range(3)])
    shard = tmp_path / "zoo" / "shards" / "shard-000000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-8:] = b"\x01\x02\x03\x04\x05\x06\x07\x08"  # the last tensor's bytes; still parses
    shard.write_bytes(bytes(data))
    accepted, rejected, _ = read_all(zoo)
    assert len(accepted) == 2 and len(rejected) == 1
    assert "sha256" in rejected[0].reason


def test_corrupt_header_rejects_the_whole_shard(tmp_path):
    zoo = str(tmp_path / "zoo")
    native.write_zoo(zoo, [make_checkpoint(i) for i in range(3)])
    shard = tmp_path / "zoo" / "shards" / "shard-000000.safetensors"
    shard.write_bytes(b"\xff" * 16 + shard.read_bytes()[16:])
    accepted, rejected, _ = read_all(zoo)
    assert not accepted and len(rejected) == 3 and all("corrupt" in r.reason for r in rejected)


def test_per_checkpoint_problems_are_rejected_with_reasons(tmp_path):
    zoo = str(tmp_path / "zoo")
    nan = make_checkpoint(0)
    nan.layers[0].weight[0, 0, 0, 0] = np.nan
    wrong_family = make_checkpoint(1, shapes=MLP, family="cnn-s")
    no_accuracy = make_checkpoint(2, properties={"train_accuracy": 0.5})
    good = make_checkpoint(3)
    native.write_zoo(zoo, [nan, wrong_family, no_accuracy, good])
    accepted, rejected, _ = read_all(zoo)
    assert [c.id for c in accepted] == ["ckpt-003"]
    reasons = {r.id: r.reason for r in rejected}
    assert "non-finite" in reasons["ckpt-000"]
    assert "contradicts family 'cnn-s'" in reasons["ckpt-001"]
    assert "missing property 'test_accuracy'" in reasons["ckpt-002"]


def test_missing_shard_file_and_unreadable_manifest(tmp_path):
    zoo = str(tmp_path / "zoo")
    native.write_zoo(zoo, [make_checkpoint(i) for i in range(6)], shard_size=2)
    os.remove(tmp_path / "zoo" / "shards" / "shard-000000.safetensors")
    (tmp_path / "zoo" / "manifest" / "shard-000001.parquet").write_bytes(b"not parquet")
    accepted, rejected, listed = read_all(zoo)
    # An unreadable manifest cannot list its checkpoints: it counts as one rejected entry.
    assert listed == 5 and [c.id for c in accepted] == ["ckpt-004", "ckpt-005"]
    reasons = {r.id: r.reason for r in rejected}
    assert "missing" in reasons["ckpt-000"] and "missing" in reasons["ckpt-001"]
    assert "unreadable" in reasons["shard-000001/*"]


def test_duplicate_ids_across_shards_are_rejected_after_the_first(tmp_path):
    zoo = str(tmp_path / "zoo")
    native.write_shard(zoo, "a", [make_checkpoint(0), make_checkpoint(1)])
    native.write_shard(zoo, "b", [make_checkpoint(1), make_checkpoint(2)])
    accepted, rejected, listed = read_all(zoo)
    assert listed == 4 and [c.id for c in accepted] == ["ckpt-000", "ckpt-001", "ckpt-002"]
    assert [r.id for r in rejected] == ["ckpt-001"] and "duplicate id" in rejected[0].reason


def test_whole_zoo_problems_raise_zoo_error_naming_the_uri(tmp_path):
    with pytest.raises(ZooError, match="does not exist"):
        open_zoo(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "zoo.json").write_text(json.dumps({"format": "sne-native", "version": 1}))
    with pytest.raises(ZooError, match="empty zoo.*empty"):
        open_zoo(str(tmp_path / "empty"))
    (tmp_path / "empty" / "zoo.json").write_text(json.dumps({"format": "sne-native", "version": 7}))
    with pytest.raises(ZooError, match="version 7"):
        open_zoo(str(tmp_path / "empty"), "native")


def test_fingerprint_is_stable_and_follows_changes(tmp_path):
    zoo = str(tmp_path / "zoo")
    native.write_zoo(zoo, [make_checkpoint(i) for i in range(4)], shard_size=2)
    first = open_zoo(zoo).fingerprint
    assert open_zoo(zoo).fingerprint == first
    (tmp_path / "zoo" / "shards" / "shard-000002.safetensors").write_bytes(b"uncommitted")
    assert open_zoo(zoo).fingerprint == first  # a shard without its manifest is not part of the zoo

    shard = tmp_path / "zoo" / "shards" / "shard-000000.safetensors"
    native.write_shard(zoo, "shard-000000", [make_checkpoint(10), make_checkpoint(11)])  # same size
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks: make the change visible
    second = open_zoo(zoo).fingerprint
    assert second != first
    native.write_shard(zoo, "shard-000009", [make_checkpoint(12)])
    assert open_zoo(zoo).fingerprint not in (first, second)


def test_read_part_balances_the_count_when_a_reader_fails_midway(tmp_path, monkeypatch):
    zoo = str(tmp_path / "zoo")
    native.write_zoo(zoo, [make_checkpoint(i) for i in range(3)])
    (part,) = open_zoo(zoo).parts
    real = native.read_part

    def fails_after_one(p):
        yield next(real(p))
        raise ValueError("boom")

    monkeypatch.setattr(native, "read_part", fails_after_one)
    items = list(read_part(part))
    assert [x.id for x in items] == ["ckpt-000", "ckpt-001", "ckpt-002"]
    assert isinstance(items[0], Checkpoint)
    assert all(isinstance(x, Rejection) and "ValueError: boom" in x.reason for x in items[1:])

    def transient(p):
        raise ConnectionError("network down")  # an OSError: Ray's task retry should see it
        yield

    monkeypatch.setattr(native, "read_part", transient)
    with pytest.raises(ConnectionError):
        list(read_part(part))


def test_files_linked_out_of_the_zoo_are_named_and_never_read(tmp_path):
    zoo = tmp_path / "zoo"
    native.write_zoo(str(zoo), [make_checkpoint(i) for i in range(6)], shard_size=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Valid files moved out and linked back: readable, so only the guard keeps them unread.
    for rel in ("manifest/shard-000000.parquet", "shards/shard-000001.safetensors"):
        target = elsewhere / rel.replace("/", "-")
        os.replace(zoo / rel, target)
        (zoo / rel).symlink_to(target)
    # A link inside the zoo is read as the file it points to.
    os.replace(zoo / "shards" / "shard-000002.safetensors", zoo / "kept.safetensors")
    (zoo / "shards" / "shard-000002.safetensors").symlink_to(zoo / "kept.safetensors")
    accepted, rejected, listed = read_all(str(zoo))
    reasons = {r.id: r.reason for r in rejected}
    assert [c.id for c in accepted] == ["ckpt-004", "ckpt-005"]
    assert reasons["shard-000000/*"] == (
        f"manifest/shard-000000.parquet is a symbolic link to {elsewhere / 'manifest-shard-000000.parquet'}, "
        "outside the zoo: not read"
    )
    assert reasons["shard-000001/*"].startswith("shards/shard-000001.safetensors is a symbolic link to")
    os.replace(zoo / "zoo.json", elsewhere / "zoo.json")
    (zoo / "zoo.json").symlink_to(elsewhere / "zoo.json")
    with pytest.raises(ZooError, match="zoo.json is a symbolic link"):
        open_zoo(str(zoo), "native")
