"""Does SNE learn from weights alone? Real trained small CNNs, nothing read but their weights.

The diagnostic behind the paper preset's choices (docs/model.md): every pooling stage averages many
elements, so at initialisation the embeddings of different networks differ by a few thousandths of their
norm and the head sees nearly one point. Unscaled weights and an unstandardised embedding then train to a
constant prediction; the paper preset must fit its own training networks.
"""

import math

import numpy as np
import pytest
import torch

from pipeline.chunking import chunk_checkpoint
from pipeline.config import from_dict, paper
from pipeline.evaluation import regression_metrics
from pipeline.generate import plan, train_checkpoint
from pipeline.train import (
    TargetScaler,
    build_encoder,
    collate,
    lr_factor,
    recalibrate_embedding_norm,
    train_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NETWORKS = 48


@pytest.fixture(scope="module")
def small_cnn_records() -> list[dict]:
    """Chunk records of real small CNNs trained on digits (the Small CNN Zoo's family, final checkpoints)."""
    specs = plan("small", seed=3, format="smallcnnzoo", datasets=("digits",), count=NETWORKS)
    torch.set_num_threads(1)
    checkpoints = [train_checkpoint({**spec, "snapshots": False})[0] for spec in specs]
    return [chunk_checkpoint(c, 16) for c in checkpoints]


def _fit_own_networks(records: list[dict], overrides: dict, steps: int = 120) -> dict:
    """Train on ``records`` for ``steps`` optimiser steps; the metrics of predictions on those records."""
    config = from_dict({"batch_size": 16, "epochs": 1, **overrides}, paper())
    target = np.array([r["test_accuracy"] for r in records])
    scaler = TargetScaler(float(target.mean()), float(target.std()))
    encoder = build_encoder(config)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, "cosine"))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        order = rng.permutation(len(records))[: config.batch_size]
        train_step(encoder, optimizer, [records[i] for i in order], config, scaler, rng)
        scheduler.step()
    recalibrate_embedding_norm(encoder, [records], config)  # as training does before each evaluation
    encoder.eval()
    with torch.no_grad():
        pred = scaler.decode(encoder(collate(records, config))).numpy()
    return regression_metrics(pred, target)


def test_embeddings_of_different_networks_differ_at_initialisation(small_cnn_records):
    """Before any training, the paper preset's predictions already vary across networks on the target's
    scale: the head sees the networks apart from the first step."""
    config = paper()
    encoder = build_encoder(config).train()
    with torch.no_grad():
        spread = float(encoder(collate(small_cnn_records, config)).std())
        collapsed = from_dict({"normalize": "none", "embedding_norm": False}, config)
        flat = float(build_encoder(collapsed).train()(collate(small_cnn_records, collapsed)).std())
    assert spread > 0.05, spread
    assert flat < 0.01, flat  # the configuration that trains to a constant starts from one


def test_paper_preset_fits_its_training_networks(small_cnn_records):
    """The paper preset learns accuracy from weights: R² > 0.9 on its own 48 training networks; without the
    weight scaling and the standardised embedding the same model stays near a constant prediction."""
    fitted = _fit_own_networks(small_cnn_records, {})
    collapsed = _fit_own_networks(small_cnn_records, {"normalize": "none", "embedding_norm": False})
    assert fitted["r2"] > 0.9 and fitted["kendall_tau"] > 0.7, fitted
    assert collapsed["r2"] < 0.5 or math.isnan(collapsed["r2"]), collapsed
