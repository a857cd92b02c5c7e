"""The paper preset is the published SNE and reads nothing but weights."""

import dataclasses

import pytest
import torch

from pipeline.config import paper
from pipeline.encoder import SNE, LayerPool, LayerSAB
from pipeline.sets import PMA, SAB
from pipeline.train import build_encoder, collate, encoder_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _sabs(module: torch.nn.Module) -> int:
    return sum(isinstance(m, SAB) for m in module.modules())


def test_paper_preset_reads_weights_only():
    config = paper()
    cfg = encoder_config(config, datasets=("digits", "shapes"))
    assert cfg.blocks == "paper"
    assert not (cfg.network_inputs or cfg.layer_statistics or cfg.datasets)
    encoder = build_encoder(config, datasets=("digits", "shapes"))
    for side in ("statistics", "dataset_vectors"):
        assert getattr(encoder, side) is None, side
    assert len(encoder.network_inputs) == 0


def test_paper_preset_block_structure():
    """Φθ1 (SAB, SAB) → encodings → Φθ2 (SAB, SAB) → PMA per chunk; a layer's chunks → SAB, SAB → PMA;
    weights and biases merged by SAB, SAB → PMA; the layers → SAB, SAB → PMA → head."""
    encoder = build_encoder(paper())
    for chunks in (encoder.weight_chunks, encoder.bias_chunks):
        assert _sabs(chunks) == 4 and isinstance(chunks.pma, PMA)
        assert isinstance(chunks.project, torch.nn.Linear)
    for layers in (encoder.weight_layers, encoder.bias_layers):
        assert isinstance(layers, LayerSAB) and _sabs(layers) == 2 and isinstance(layers.pma, PMA)
    assert encoder.merge_sab2 is not None and encoder.network_sab2 is not None
    assert _sabs(encoder) == 2 * 4 + 2 * 2 + 2 + 2
    # The compact arrangement keeps its induced attention over chunks and single SABs.
    compact = SNE(dataclasses.replace(encoder_config(paper()), hidden=32, heads=4, blocks="compact"))
    assert isinstance(compact.weight_layers, LayerPool) and compact.network_sab2 is None


def test_paper_encoder_ignores_padding_and_chunk_order(checkpoint_factory):
    """The layer SABs see a padded dense set: adding a network to the batch or reordering a layer's chunks
    leaves another network's prediction unchanged."""
    config = paper()
    encoder = build_encoder(config).eval()
    from pipeline.chunking import chunk_checkpoint

    records = [chunk_checkpoint(checkpoint_factory(i, "cnn"), 4) for i in range(3)]
    with torch.no_grad():
        alone = encoder(collate(records[:1], config))
        together = encoder(collate(records, config))
        batch = collate(records[:1], config)
        order = torch.randperm(batch["weight_chunks"].shape[0], generator=torch.Generator().manual_seed(0))
        for key in ("weight_chunks", "weight_mask", "weight_layer"):
            batch[key] = batch[key][order]
        shuffled = encoder(batch)
    torch.testing.assert_close(alone, together[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, shuffled, rtol=1e-4, atol=1e-5)
