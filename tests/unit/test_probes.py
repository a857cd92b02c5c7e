import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import families
from pipeline.chunking import CHUNK_RECORD_SCHEMA, chunk_checkpoint, records_table
from pipeline.collate import collate_chunk_records
from pipeline.config import TrainConfig
from pipeline.encoder import SNE
from pipeline.export import load_peers, save_encoder
from pipeline.invariance import permute_record, random_hidden_permutation
from pipeline.probes import (
    PEER_FEATURES,
    PROBE_FEATURES,
    PeerConsensus,
    probabilities_of,
    probe_columns,
    probe_summary,
    probe_table,
    run_probes,
)
from pipeline.train import encoder_config
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


def test_peer_consensus_tells_a_network_that_computes_what_its_peers_compute_from_one_that_does_not():
    def permuted(checkpoint, seed):
        layers = random_hidden_permutation(checkpoint.layers, np.random.default_rng(seed))
        return dataclasses.replace(checkpoint, id=f"{checkpoint.id}-p{seed}", layers=layers)

    common = _network("mlp", "digits", seed=3)
    broken = _network("mlp", "digits", seed=5)
    broken = dataclasses.replace(
        broken,
        layers=[dataclasses.replace(broken.layers[0], weight=broken.layers[0].weight * 1e30)]
        + broken.layers[1:],
    )
    reference = [common, permuted(common, 1), permuted(common, 2), _network("mlp", "digits", seed=7), broken]
    probabilities = {c.id: run_probes(c)[1] for c in reference}
    consensus = PeerConsensus.fit(list(probabilities), ["digits"] * 5, list(probabilities.values()))

    def features(checkpoint):
        return consensus.features(checkpoint.id, checkpoint.dataset, run_probes(checkpoint)[1])

    # A new network computing the function most references compute agrees with their consensus on more
    # probes, and is closer to it, than a new network computing something else.
    same, other = features(permuted(common, 3)), features(_network("mlp", "digits", seed=9))
    assert same.shape == (PEER_FEATURES,) and np.isfinite(same).all() and np.isfinite(other).all()
    assert same[0] > other[0] and same[3] > other[3] and same[2] < other[2]
    # A reference network is compared with the others only, as if it were new to a consensus without it.
    without = PeerConsensus.fit(
        [i for i in probabilities if i != common.id],
        ["digits"] * 4,
        [p for i, p in probabilities.items() if i != common.id],
    )
    np.testing.assert_allclose(
        consensus.features(common.id, "digits", probabilities[common.id]),
        without.features(common.id, "digits", probabilities[common.id]),
        rtol=1e-5,
    )
    # A network of another zoo that repeats a reference's id is not left out of what it is compared with.
    included = consensus.features(common.id, "digits", probabilities[common.id], leave_out=False)
    assert not np.allclose(included, consensus.features(common.id, "digits", probabilities[common.id]))
    # The diverged reference's NaN softmax poisons no one; no consensus for an unseen dataset or a regressor.
    assert np.isfinite(features(broken)).all()
    assert features(_network("mlp", "shapes", seed=8)) is None
    siren = _network("siren", "sine", seed=4, scheme="siren")
    assert run_probes(siren)[1] is None and features(siren) is None


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
    records = [chunk_checkpoint(c, 4) | probe_columns(c) for c in (bare, probed)]
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
    # The classifier's softmax on the probes travels too, in half precision, for its peer agreement.
    assert records[0]["probe_probabilities"] is None
    probabilities = probabilities_of(back[1])
    np.testing.assert_allclose(probabilities, run_probes(probed)[1], atol=1e-3)
    assert probabilities.shape == (2 * 256, 10)
    assert (
        permute_record(records[1], np.random.default_rng(2))["probe_probabilities"]
        is records[1]["probe_probabilities"]
    )
    with pytest.raises(ValueError, match="not a multiple"):
        probabilities_of(dict(records[1], probe_probabilities=np.zeros(7, np.float16)))
    # The driver's "peer" column (agreement with the training networks) is collated the same way.
    peer = [0.5, 0.4, 1.0, 0.6, 0.3, 2.0]
    batch = collate_chunk_records([dict(back[0], peer=None), dict(back[1], peer=peer)])
    assert batch["peer_present"].tolist() == [0.0, 1.0] and not batch["peer"][0].any()
    np.testing.assert_allclose(batch["peer"][1].numpy(), peer)
    with pytest.raises(ValueError, match="peer of shape"):
        collate_chunk_records([dict(records[1], peer=peer[:3])])


@pytest.mark.parametrize("key, switch", [("probe", "probe_summary"), ("peer", "peer_agreement")])
def test_the_encoder_reads_the_probe_and_peer_vectors_only_where_there_is_one(key, switch):
    networks = [_network("mlp", "digits", seed=s) for s in range(3)]
    records = [chunk_checkpoint(c, 4) | probe_columns(c) for c in networks]
    for r in records:
        r["peer"] = [0.5, 0.4, 1.0, 0.6, 0.3, 2.0]
    batch = collate_chunk_records(records, layer_summaries=True)
    cfg = dataclasses.replace(
        encoder_config(TrainConfig(peer_agreement=True)),
        inducing_points=4,
        head_hidden=32,
        chunk_micro_batch=64,
    )
    torch.manual_seed(0)
    encoder = SNE(cfg).eval()
    with torch.no_grad():
        before = encoder(batch)
        shifted = dict(batch, **{key: batch[key] + 1.0})
        assert (encoder(shifted) - before).abs().max() > 1e-4
        absent = dict(batch, **{f"{key}_present": torch.zeros(3)})
        assert torch.allclose(encoder(dict(absent, **{key: absent[key] + 1.0})), encoder(absent))
    torch.manual_seed(0)
    off = encoder_config(dataclasses.replace(TrainConfig(peer_agreement=True), **{switch: False}))
    without = SNE(dataclasses.replace(cfg, network_inputs=off.network_inputs)).eval()
    assert key not in without.network_inputs
    with torch.no_grad():
        assert torch.allclose(without(shifted), without(batch))


def test_the_peer_consensus_travels_with_the_exported_encoder(tmp_path):
    networks = [_network("mlp", "digits", seed=s) for s in range(4)]
    records = [chunk_checkpoint(c, 4) | probe_columns(c) for c in networks]
    consensus = PeerConsensus.fit(
        [r["id"] for r in records[:3]], ["digits"] * 3, [probabilities_of(r) for r in records[:3]]
    )
    save_encoder(str(tmp_path), {"w": np.zeros(1, np.float32)}, {}, None, consensus)
    back = load_peers(str(tmp_path))
    for r in records:  # members (left out of their own consensus) and a new network alike
        np.testing.assert_array_equal(back.record_features(r), consensus.record_features(r))
    assert load_peers(str(tmp_path / "none")) is None


def test_the_probe_stage_fills_in_what_running_each_network_gives_and_leaves_the_rest_null():
    """Chunking never runs a network; prepare's probe stage rebuilds each runnable network from its chunk
    record and fills in exactly what probing the original network gives, through Parquet's types."""
    runnable = [_network("mlp", "digits", seed=s) for s in range(2)] + [_network("cnn", "digits", seed=3)]
    rng = np.random.default_rng(0)
    layer = Layer("0", "linear", rng.normal(size=(4, 3)).astype(np.float32), np.zeros(4, np.float32))
    unrunnable = Checkpoint("bare", "mlp", "digits", [layer], {"test_accuracy": 0.3})
    networks = [runnable[0], unrunnable, *runnable[1:]]
    chunked = records_table([chunk_checkpoint(c, 5) for c in networks])
    assert chunked.column("probe").null_count == len(networks)

    probed = probe_table(chunked)
    assert probed.schema.equals(CHUNK_RECORD_SCHEMA, check_metadata=True)
    assert probed.drop_columns(["probe", "probe_probabilities"]).equals(
        chunked.drop_columns(["probe", "probe_probabilities"])
    )
    expected = records_table([chunk_checkpoint(c, 5) | probe_columns(c) for c in networks])
    assert probed.column("probe").equals(expected.column("probe"))
    assert probed.column("probe_probabilities").equals(expected.column("probe_probabilities"))
    rows = probed.to_pylist()
    assert rows[1]["probe"] is None and rows[1]["probe_probabilities"] is None
    assert all(len(rows[i]["probe"]) == PROBE_FEATURES for i in (0, 2, 3))
