"""The training loop's pieces that run without Ray: re-estimating the embedding norm before evaluation."""

import numpy as np
import torch

from pipeline.chunking import chunk_checkpoint
from pipeline.config import debug, from_dict
from pipeline.train import (
    TargetScaler,
    build_encoder,
    collate,
    hide_dataset_context,
    recalibrate_embedding_norm,
    train_step,
)
from pipeline.zoo.checkpoint import Checkpoint, Layer


def _records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = rng.uniform(0.5, 2.0)
        layers = [
            Layer(
                "0", "linear", (scale * rng.normal(size=(6, 5))).astype(np.float32), np.zeros(6, np.float32)
            ),
            Layer(
                "1",
                "linear",
                rng.normal(size=(2, 6)).astype(np.float32),
                rng.normal(size=2).astype(np.float32),
            ),
        ]
        checkpoint = Checkpoint(f"n{seed}-{i}", "mlp", "digits", layers, {"test_accuracy": scale / 2})
        out.append(chunk_checkpoint(checkpoint, 4))
    return out


def test_recalibration_sets_the_embedding_norm_to_the_current_weights_statistics():
    torch.manual_seed(0)
    config = from_dict({"chunk_size": 4, "invariance_weight": 0.0, "lr": 1e-2}, debug())
    encoder = build_encoder(config).train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    train = _records(16, seed=1)
    for _ in range(10):  # a high learning rate: the running averages trail the moving weights
        train_step(encoder, optimizer, train, config, TargetScaler(0.5, 0.25), np.random.default_rng(0))
    calibration = [train[:8], train[8:]]
    with torch.no_grad():
        z = [encoder.embed(collate(batch, config)) for batch in calibration]
    mean = torch.stack([b.mean(0) for b in z]).mean(0)
    var = torch.stack([b.var(0) for b in z]).mean(0)  # BatchNorm's running variance is unbiased
    norm = encoder.embedding_norm
    assert not torch.allclose(norm.running_mean, mean, rtol=1e-3, atol=1e-5)  # stale before

    recalibrate_embedding_norm(encoder, calibration + [train[:1]], config)  # a 1-record batch is skipped

    torch.testing.assert_close(norm.running_mean, mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm.running_var, var, rtol=1e-4, atol=1e-7)
    assert norm.momentum == 0.1 and encoder.training  # settings restored
    # Evaluation now standardises exactly as training-mode BatchNorm does over the same records.
    encoder.eval()
    with torch.no_grad():
        standardised = encoder.embedding_norm(torch.cat(z))
    expected = (torch.cat(z) - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    # Unit-scale outputs; atol allows the float32 rounding of the running statistics checked above.
    torch.testing.assert_close(standardised, expected, rtol=1e-4, atol=1e-4)


def _calibrate_as_worker(rank: int, folder: str, shares: list) -> None:
    """One of two DDP-style workers (gloo, no Ray): recalibrates on its own batches, saves its statistics."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/group", rank=rank, world_size=2
    )
    try:
        config = from_dict({"chunk_size": 4}, debug())
        encoder = build_encoder(config)
        recalibrate_embedding_norm(encoder, [_records(n, seed) for n, seed in shares[rank]], config)
        norm = encoder.embedding_norm
        torch.save([norm.running_mean, norm.running_var], f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_recalibration_pools_every_workers_batches(tmp_path):
    """Two workers, two calibration batches on one and one on the other: both end with what one process
    calibrating on all three batches holds, so every worker validates the same encoder."""
    shares = [[(8, 1), (8, 2)], [(6, 3)]]
    torch.multiprocessing.spawn(_calibrate_as_worker, args=(str(tmp_path), shares), nprocs=2)

    config = from_dict({"chunk_size": 4}, debug())
    alone = build_encoder(config)
    recalibrate_embedding_norm(alone, [_records(n, seed) for n, seed in shares[0] + shares[1]], config)
    for rank in (0, 1):
        mean, var = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(mean, alone.embedding_norm.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, alone.embedding_norm.running_var, rtol=1e-5, atol=1e-6)


def test_recalibration_is_a_no_op_without_an_embedding_norm():
    config = from_dict({"chunk_size": 4, "embedding_norm": False}, debug())
    encoder = build_encoder(config)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    recalibrate_embedding_norm(encoder, [_records(4, seed=2)], config)
    after = encoder.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_training_with_layer_summaries_collates_them_and_learns():
    records = _records(16, seed=2)
    weights_only = from_dict({"chunk_size": 4, "layer_statistics": False}, debug())
    # Only the encoders that read them pay for them.
    assert not {"layer_summary", "layer_links"} & collate(records, weights_only).keys()
    config = from_dict({"chunk_size": 4, "lr": 1e-2}, debug())
    assert config.layer_statistics  # the default
    batch = collate(records, config)
    assert batch["layer_summary"].shape[0] == batch["layer_links"].shape[0] == 2 * len(records)
    torch.manual_seed(0)
    encoder = build_encoder(config).train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    rng = np.random.default_rng(0)
    losses = [
        train_step(encoder, optimizer, records, config, TargetScaler(0.6, 0.2), rng)["task_loss"]
        for _ in range(30)
    ]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_context_dropout_hides_a_share_of_networks_and_their_permuted_copies_alike():
    b = 400
    copied = [i for i in range(b) if i % 5]  # every fifth network has no permuted copy
    present = torch.ones(b + len(copied))
    present[7] = 0.0  # a network without peer agreement stays without it
    batch = {"peer_present": present.clone(), "dataset_present": torch.ones(b + len(copied))}
    hide_dataset_context(batch, b, copied, 0.25, np.random.default_rng(0))
    peer, shown = batch["peer_present"], batch["dataset_present"]
    assert torch.equal(shown[copied], shown[b:])  # the permuted copy of a network is read as it is
    assert torch.equal(peer, shown * present)  # one draw hides both: as a network of an unknown dataset
    assert 0.18 < 1.0 - shown[:b].mean().item() < 0.32  # about a quarter hidden
    assert set(shown.tolist()) == {0.0, 1.0}


def test_chunk_budget_batches_see_every_network_once_and_stay_within_the_budget():
    from pipeline.train import budget_batches, record_chunks

    rng = np.random.default_rng(0)

    def record(i: int, chunks: int) -> dict:  # only what the batching reads: masks per layer
        return {
            "id": str(i),
            "chunk_size": 4,
            "weight_mask": [np.ones(4 * chunks, bool)],
            "bias_mask": [np.ones(4, bool)],
        }

    sizes = [int(s) for s in rng.choice([3, 10, 40, 400], size=200)]  # 400 + 1 chunks: above the budget
    records = [record(i, s) for i, s in enumerate(sizes)]
    batches = list(budget_batches(iter(records), budget=100, max_networks=8))
    assert [r["id"] for batch in batches for r in batch] == [r["id"] for r in records]  # each once, in order
    for batch in batches:
        total = sum(record_chunks(r) for r in batch)
        assert len(batch) <= 8
        assert total <= 100 or len(batch) == 1  # a network above the budget trains alone
    assert any(len(batch) == 1 and record_chunks(batch[0]) > 100 for batch in batches)
    assert max(len(batch) for batch in batches) == 8  # small networks fill a step up to the network cap


def test_a_zoo_of_big_networks_without_a_chunk_budget_gets_a_warning():
    from pipeline.driver import big_network_warning

    config = from_dict({"batch_size": 16})
    warning = big_network_warning(config, 25_127_338)
    assert "25.1 M parameters" in warning and "16 networks" in warning and "--chunk-budget" in warning
    assert big_network_warning(config, 4_970) is None  # the small families: nothing to say
    assert big_network_warning(from_dict({"chunk_budget": 20000}), 25_127_338) is None
