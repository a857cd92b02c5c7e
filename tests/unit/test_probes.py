import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import families
from pipeline.chunking import CHUNK_RECORD_SCHEMA, chunk_checkpoint
from pipeline.collate import collate_chunk_records
from pipeline.encoder import SNE, EncoderConfig
from pipeline.invariance import permute_record, random_hidden_permutation
from pipeline.probes import PROBE_FEATURES, probe_summary
from pipeline.zoo.checkpoint import Checkpoint, Layer

pytestmark = pytest.mark.usefixtures("one_thread")


def _network(family: str, dataset: str, seed: int = 0, scheme: str = "default") -> Checkpoint:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    arch = (
        families.siren_architecture()
        if family == "siren"
        else families.sample_architecture(family, dataset, rng, "relu", 0.0)
    )
    module = families.build_module(arch)
    families.initialize(module, scheme)
    return families.checkpoint_from_module(
        module,
        id=f"{family}-{seed}",
        family=family,
        dataset=dataset,
        architecture=arch,
        properties={"test_accuracy": 0.5},
    )


def test_every_family_gets_a_finite_vector_of_one_width_and_the_same_one_each_time():
    for family, dataset in (("mlp", "digits"), ("cnn", "mnist1d"), ("smallcnn", "shapes"), ("siren", "sine")):
        checkpoint = _network(family, dataset, scheme="siren" if family == "siren" else "default")
        first, again = probe_summary(checkpoint), probe_summary(checkpoint)
        assert first.shape == (PROBE_FEATURES,) and np.isfinite(first).all(), family
        np.testing.assert_array_equal(first, again)


def test_the_probe_reads_the_function_not_the_weights():
    # A function-preserving permutation of hidden units leaves the probe as it was ...
    checkpoint = _network("mlp", "digits", seed=3)
    permuted = dataclasses.replace(
        checkpoint, layers=random_hidden_permutation(checkpoint.layers, np.random.default_rng(1))
    )
    assert not np.array_equal(permuted.layers[0].weight, checkpoint.layers[0].weight)
    np.testing.assert_allclose(probe_summary(permuted), probe_summary(checkpoint), rtol=1e-3, atol=1e-4)
    # ... while a different function of the same weights' statistics moves it: doubling a sine network's
    # first-layer weights doubles its frequencies, and the probe's roughness at 1% perturbation follows.
    siren = _network("siren", "sine", seed=4, scheme="siren")
    faster = dataclasses.replace(
        siren,
        layers=[dataclasses.replace(siren.layers[0], weight=2 * siren.layers[0].weight), *siren.layers[1:]],
    )
    assert probe_summary(faster)[0] > 1.5 * probe_summary(siren)[0]


def test_a_diverged_network_still_gives_a_bounded_vector():
    checkpoint = _network("mlp", "digits", seed=5)
    broken = dataclasses.replace(
        checkpoint,
        layers=[dataclasses.replace(checkpoint.layers[0], weight=checkpoint.layers[0].weight * 1e30)]
        + checkpoint.layers[1:],
    )
    vector = probe_summary(broken)
    assert np.isfinite(vector).all() and np.abs(vector).max() <= 50.0


def test_records_carry_the_probe_or_null_and_collate_marks_which():
    rng = np.random.default_rng(0)
    bare = Checkpoint(
        "bare",
        "mlp",
        "digits",
        [Layer("0", "linear", rng.normal(size=(4, 3)).astype(np.float32), np.zeros(4, np.float32))],
        {"test_accuracy": 0.3},
    )
    probed = _network("mlp", "digits", seed=6)
    # An architecture its layers do not fit is not runnable either.
    misnamed = dataclasses.replace(bare, hyperparameters=dict(probed.hyperparameters))
    assert probe_summary(misnamed) is None
    records = [chunk_checkpoint(bare, 4), chunk_checkpoint(probed, 4)]
    assert records[0]["probe"] is None and len(records[1]["probe"]) == PROBE_FEATURES
    # Both kinds survive Parquet's schema, and a permuted copy keeps the original's probe.
    back = pa.Table.from_pylist(records, schema=CHUNK_RECORD_SCHEMA).to_pylist()
    assert back[0]["probe"] is None
    np.testing.assert_allclose(back[1]["probe"], records[1]["probe"])
    assert permute_record(records[1], np.random.default_rng(2))["probe"] == records[1]["probe"]
    batch = collate_chunk_records(back)
    assert batch["probe_present"].tolist() == [0.0, 1.0]
    assert not batch["probe"][0].any()
    np.testing.assert_allclose(batch["probe"][1].numpy(), np.asarray(records[1]["probe"], dtype=np.float32))
    with pytest.raises(ValueError, match="probe of shape"):
        collate_chunk_records([dict(records[1], probe=[0.0] * 3)])


def test_the_encoder_reads_the_probe_only_where_there_is_one():
    records = [chunk_checkpoint(_network("mlp", "digits", seed=s), 4) for s in range(3)]
    batch = collate_chunk_records(records, links=True)
    cfg = EncoderConfig(hidden=32, heads=4, inducing_points=4, head_hidden=32, chunk_micro_batch=64)
    torch.manual_seed(0)
    encoder = SNE(cfg).eval()
    with torch.no_grad():
        before = encoder(batch)
        shifted = dict(batch, probe=batch["probe"] + 1.0)
        assert (encoder(shifted) - before).abs().max() > 1e-4
        absent = dict(batch, probe_present=torch.zeros(3))
        assert torch.allclose(encoder(dict(absent, probe=absent["probe"] + 1.0)), encoder(absent))
    torch.manual_seed(0)
    weights_only = SNE(dataclasses.replace(cfg, probe_summary=False)).eval()
    assert weights_only.probe is None
    with torch.no_grad():
        assert torch.allclose(weights_only(shifted), weights_only(batch))
