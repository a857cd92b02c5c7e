"""Zoos written to and read from s3:// through s3fs, against a real S3 API (moto's server)."""

import numpy as np
import pytest

from pipeline.zoo import Checkpoint, Rejection, modelzoos, native, open_zoo, read_zoo, smallcnnzoo

pytestmark = pytest.mark.integration


def _accepted(uri, **kw):
    items = list(read_zoo(uri, **kw))
    return [c for c in items if isinstance(c, Checkpoint)], [r for r in items if isinstance(r, Rejection)]


def test_native_zoo_round_trips_through_s3(s3_bucket, checkpoint_factory, tmp_path):
    ckpts = [checkpoint_factory(i, fam) for i, fam in enumerate(["mlp", "cnn"] * 5)]
    ckpts.append(checkpoint_factory(99, "mlp", nan=True))
    uri = f"{s3_bucket}/zoos/native"
    native.write_zoo(uri, ckpts, shard_size=4)
    listing = open_zoo(uri)
    assert listing.format == "native" and listing.num_listed == 11 and len(listing.parts) == 3
    accepted, rejected = _accepted(uri)
    assert len(accepted) == 10 and [r.id for r in rejected] == [ckpts[-1].id]
    assert "non-finite" in rejected[0].reason
    by_id = {c.id: c for c in accepted}
    for c in ckpts[:-1]:
        for a, b in zip(by_id[c.id].layers, c.layers, strict=True):
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)
    # The same zoo on local disk reads the same and has the same fingerprint-independent content.
    local = str(tmp_path / "native")
    native.write_zoo(local, ckpts, shard_size=4)
    assert sorted(c.id for c in _accepted(local)[0]) == sorted(by_id)


def test_smallcnnzoo_and_modelzoos_layouts_read_from_s3(s3_bucket):
    rng = np.random.default_rng(0)

    def small_cnn(i):
        from pipeline.zoo.checkpoint import Layer

        shapes = [(16, 1, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3)]
        layers = [
            Layer(f"conv{k}", "conv2d", rng.normal(size=s).astype(np.float32), np.zeros(16, np.float32))
            for k, s in enumerate(shapes)
        ]
        layers.append(
            Layer("dense", "linear", rng.normal(size=(10, 16)).astype(np.float32), np.zeros(10, np.float32))
        )
        return Checkpoint(
            f"run{i}",
            "smallcnn",
            "digits",
            layers,
            {"test_accuracy": 0.5, "train_accuracy": 0.6, "test_loss": 1.0, "train_loss": 0.9},
        )

    def cnn_s(i):
        from pipeline.zoo.checkpoint import Layer

        spec = [
            ("conv2d", (8, 1, 5, 5)),
            ("conv2d", (6, 8, 5, 5)),
            ("conv2d", (4, 6, 2, 2)),
            ("linear", (20, 36)),
            ("linear", (10, 20)),
        ]
        layers = [
            Layer(f"module_list.{k}", kind, rng.normal(size=s).astype(np.float32), np.zeros(s[0], np.float32))
            for k, (kind, s) in enumerate(spec)
        ]
        return Checkpoint(
            f"trial{i}",
            "cnn-s",
            "digits",
            layers,
            {"test_accuracy": 0.4, "train_accuracy": 0.5, "test_loss": 1.2, "train_loss": 1.1},
        )

    smallcnnzoo.write_zoo(f"{s3_bucket}/scz/digits", [small_cnn(i) for i in range(5)])
    modelzoos.write_zoo(f"{s3_bucket}/mz", [cnn_s(i) for i in range(4)])
    for uri, fmt, n, params in (
        (f"{s3_bucket}/scz/digits", "smallcnnzoo", 5, 4970),
        (f"{s3_bucket}/mz", "modelzoos", 4, 2464),
    ):
        assert open_zoo(uri).format == fmt
        accepted, rejected = _accepted(uri)
        assert (len(accepted), len(rejected)) == (n, 0)
        assert {c.num_params for c in accepted} == {params}
