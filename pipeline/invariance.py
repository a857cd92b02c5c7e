"""Function-preserving permutations of hidden units, and the logit-invariance loss (DESIGN.md, point 6)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.chunking import checkpoint_from_record, chunk_checkpoint
from pipeline.zoo.checkpoint import Layer


def random_hidden_permutation(layers: list[Layer], rng: np.random.Generator) -> list[Layer]:
    """New layers computing the same function, with the hidden units of a sequential net permuted at random.

    Layer i's output units (weight rows, bias entries) are permuted and layer i+1's inputs follow. When
    layer i+1 takes s inputs per unit of layer i (a flatten of s spatial positions, PyTorch order C,H,W),
    unit c owns the block of inputs [c*s, (c+1)*s); s = 1 for linear→linear, conv→conv or global pooling.
    The last layer's outputs stay in place. Raises ValueError when a fan-in is not a multiple of the
    previous layer's outputs (the layers are not a sequential stack). The input layers are not modified.
    """
    out = [Layer(layer.name, layer.kind, layer.weight.copy(), layer.bias) for layer in layers]
    for i in range(len(out) - 1):
        units = out[i].weight.shape[0]
        fan_in = out[i + 1].weight.shape[1]
        if fan_in % units:
            raise ValueError(
                f"layer {out[i + 1].name!r} has {fan_in} inputs, not a multiple of the {units} outputs of "
                f"layer {out[i].name!r}: not a sequential stack"
            )
        block = fan_in // units
        perm = rng.permutation(units)
        out[i].weight = out[i].weight[perm]
        if out[i].bias is not None:
            out[i].bias = out[i].bias[perm]
        inputs = (perm[:, None] * block + np.arange(block)).reshape(-1)  # unit c's block moves with c
        out[i + 1].weight = out[i + 1].weight[:, inputs]
    for layer in out:
        layer.weight = np.ascontiguousarray(layer.weight)
        if layer.bias is not None:
            layer.bias = np.ascontiguousarray(layer.bias)
    return out


def permute_record(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A chunk record of the same checkpoint (same id, properties) with its hidden units randomly permuted."""
    checkpoint = checkpoint_from_record(record)
    checkpoint.layers = random_hidden_permutation(checkpoint.layers, rng)
    # The permutation preserves the function, so the probes of the original hold for the copy.
    permuted = chunk_checkpoint(checkpoint, int(record["chunk_size"]), probe=False)
    permuted["probe"] = record.get("probe")
    permuted["probe_probabilities"] = record.get("probe_probabilities")
    permuted["peer"] = record.get("peer")  # agreement with the training networks, where the driver added it
    return permuted


def logit_invariance_loss(pred: torch.Tensor, pred_permuted: torch.Tensor) -> torch.Tensor:
    """½ mean squared difference between predictions for W and for a function-equivalent gW."""
    return 0.5 * ((pred - pred_permuted) ** 2).mean()
