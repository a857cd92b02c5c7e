"""Function-preserving permutations of hidden units, and the logit-invariance loss (DESIGN.md, point 6).

A permutation is planned as *unit groups*: a producer layer whose output units move (weight rows, bias),
the per-channel layers that follow it (batch and layer norms: scale, shift, running statistics; depthwise
convs) and the consumer layer whose inputs move with them; and *head groups*: a self-attention's heads, and the units
inside each head. The plan comes from the checkpoint's architecture when it carries one
(pipeline.families: units inside a residual block's body are permuted, units tied to a skip are not);
a checkpoint without one is permuted as a plain stack of conv / linear layers, the layout of every
public CNN zoo, and any other network gets no plan: it trains without the invariance term.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import numpy as np
import torch

from pipeline.chunking import WEIGHT_COLUMNS, checkpoint_from_record, chunk_checkpoint
from pipeline.zoo.checkpoint import WEIGHTED_KINDS, Checkpoint, Layer

# Ops that act on each channel alone, so hidden units may be permuted across them.
_CHANNELWISE_OPS = {
    *("relu", "tanh", "gelu", "sigmoid", "leakyrelu", "silu", "sine"),
    *("dropout", "maxpool1d", "maxpool2d", "gap", "flatten", "token_mean"),
}
_WEIGHTED_OPS = {"conv1d", "conv2d", "linear"}
_BATCHNORM_OPS = {"batchnorm1d", "batchnorm2d"}  # a norm layer and its norm_stats layer


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """Layer indices: ``producer``'s output units, ``followers``' channels and ``consumer``'s inputs move."""

    producer: int
    followers: tuple[int, ...]
    consumer: int


@dataclasses.dataclass(frozen=True)
class HeadGroup:
    """Layer indices of one self-attention (pipeline.families.SelfAttention): its heads are permuted, and
    inside each head the q and k units together (their dot products stay) and the v units with the out
    projection's inputs."""

    q: int
    k: int
    v: int
    out: int
    heads: int


Group = UnitGroup | HeadGroup


def _walk(ops: list[dict[str, Any]], next_index, groups: list[Group]) -> None:
    """Append the unit groups of one op sequence; ``next_index()`` numbers layers in module order."""
    pending: tuple[int, list[int]] | None = None  # the last producer whose units may still move
    for spec in ops:
        op = spec["op"]
        groups_of_conv = int(spec.get("groups", 1)) if op in _WEIGHTED_OPS else 1
        if groups_of_conv > 1 and groups_of_conv == spec["in"] == spec["out"]:
            # Depthwise: each channel filtered alone, so it moves with the units it filters, as a norm does.
            index = next_index()
            if pending is not None:
                pending[1].append(index)
        elif groups_of_conv > 1:  # grouped: a permutation may not carry units across its groups
            next_index()
            pending = None
        elif op in _WEIGHTED_OPS:
            index = next_index()
            if pending is not None:
                groups.append(UnitGroup(pending[0], tuple(pending[1]), index))
            pending = (index, [])
        elif op in _BATCHNORM_OPS:
            norm, stats = next_index(), next_index()
            if pending is not None:
                pending[1].extend((norm, stats))
        elif op == "layernorm":  # normalises over the units, so it follows their permutation
            norm = next_index()
            if pending is not None:
                pending[1].append(norm)
        elif op == "attention":
            q, k, v, out = (next_index() for _ in range(4))
            groups.append(HeadGroup(q, k, v, out, int(spec["heads"])))
            pending = None
        elif op in ("patchify", "position"):  # tokens feed the residual stream, tied to its skips
            next_index()
            pending = None
        elif op == "wildpark_cnn":
            _wild_park_groups(spec["config"], next_index, groups)
            pending = None
        elif op == "residual":
            # The block's input and output are tied to the skip: only units inside each branch move.
            pending = None
            _walk(spec["body"], next_index, groups)
            _walk(spec.get("shortcut", []), next_index, groups)
        elif op not in _CHANNELWISE_OPS:
            pending = None  # an op this module does not know: nothing moves across it


def _wild_park_groups(config: dict[str, Any], next_index, groups: list[Group]) -> None:
    """A Wild Park CNN's layers, then its fc: layer i's channels move with layer i+1's inputs unless a
    residual link reads or writes them (channels shared with another layer stay in place)."""
    residual = [int(r) for r in config["residual"]]
    tied = {i for i, r in enumerate(residual) if r >= 0} | {r for r in residual if r >= 0}
    indices = [next_index() for _ in range(len(residual) + 1)]  # the convs, then fc
    for i in range(len(residual)):
        if i not in tied:
            groups.append(UnitGroup(indices[i], (), indices[i + 1]))


@functools.lru_cache(maxsize=256)
def _architecture_groups(architecture: str) -> tuple[tuple[Group, ...], int]:
    groups: list[Group] = []
    counter = iter(range(1 << 30))
    _walk(json.loads(architecture)["ops"], lambda: next(counter), groups)
    return tuple(groups), next(counter)


def sequential_groups(layers: list[Layer]) -> list[UnitGroup]:
    """Each layer's outputs feed the next layer: a plain stack."""
    return [UnitGroup(i, (), i + 1) for i in range(len(layers) - 1)]


def unit_groups(checkpoint: Checkpoint) -> list[Group] | None:
    """The unit groups a function-preserving permutation of this checkpoint may move, or None when the
    project cannot derive them (its layers do not match its architecture, or a network without one holds
    more than conv / linear layers, where a skip or a table could hide)."""
    architecture = checkpoint.hyperparameters.get("architecture")
    if architecture:
        try:
            text = architecture if isinstance(architecture, str) else json.dumps(architecture)
            groups, count = _architecture_groups(text)
        except (ValueError, KeyError, TypeError):
            return None
        return list(groups) if count == len(checkpoint.layers) else None
    if all(layer.kind in WEIGHTED_KINDS for layer in checkpoint.layers):
        return sequential_groups(checkpoint.layers)
    return None


def _permute_heads(out: list[Layer], group: HeadGroup, rng: np.random.Generator) -> None:
    q, k, v, proj = (out[i] for i in (group.q, group.k, group.v, group.out))
    width = q.weight.shape[0]
    if width % group.heads or any(layer.weight.shape[0] != width for layer in (k, v)):
        raise ValueError(
            f"attention {q.name!r}: q, k, v of {width} units do not split into {group.heads} heads"
        )
    size = width // group.heads
    heads = rng.permutation(group.heads)
    # New head j is old head heads[j], its q/k units in one order and its v units in another.
    qk = np.concatenate([h * size + rng.permutation(size) for h in heads])
    vo = np.concatenate([h * size + rng.permutation(size) for h in heads])
    for layer, order in ((q, qk), (k, qk), (v, vo)):
        layer.weight = layer.weight[order]
        layer.bias = None if layer.bias is None else layer.bias[order]
    proj.weight = proj.weight[:, vo]


def permute_units(layers: list[Layer], groups: list[Group], rng: np.random.Generator) -> list[Layer]:
    """New layers with each group's units permuted at random; the input layers are not modified.

    When the consumer takes s inputs per unit of the producer (a flatten of s spatial positions, PyTorch
    order C,H,W), unit c owns the block of inputs [c*s, (c+1)*s); s = 1 for linear→linear, conv→conv or
    global pooling. Raises ValueError when a consumer's fan-in is not a multiple of the producer's units
    or a follower has another number of channels.
    """
    out = [dataclasses.replace(layer, weight=layer.weight.copy()) for layer in layers]
    for group in groups:
        if isinstance(group, HeadGroup):
            _permute_heads(out, group, rng)
            continue
        producer, consumer = out[group.producer], out[group.consumer]
        units, fan_in = producer.weight.shape[0], consumer.weight.shape[1]
        if fan_in % units:
            raise ValueError(
                f"layer {consumer.name!r} has {fan_in} inputs, not a multiple of the {units} outputs of "
                f"layer {producer.name!r}: not a sequential stack"
            )
        perm = rng.permutation(units)
        for index in (group.producer, *group.followers):
            layer = out[index]
            if layer.weight.shape[0] != units:
                raise ValueError(
                    f"layer {layer.name!r} has {layer.weight.shape[0]} channels, layer {producer.name!r} "
                    f"{units} outputs"
                )
            layer.weight = layer.weight[perm]
            layer.bias = None if layer.bias is None else layer.bias[perm]
        block = fan_in // units
        inputs = (perm[:, None] * block + np.arange(block)).reshape(-1)  # unit c's block moves with c
        consumer.weight = consumer.weight[:, inputs]
    for layer in out:
        layer.weight = np.ascontiguousarray(layer.weight)
        if layer.bias is not None:
            layer.bias = np.ascontiguousarray(layer.bias)
    return out


def random_hidden_permutation(layers: list[Layer], rng: np.random.Generator) -> list[Layer]:
    """``permute_units`` of a plain stack: every hidden layer's units move, the last layer's stay."""
    return permute_units(layers, sequential_groups(layers), rng)


def random_permutation(checkpoint: Checkpoint, rng: np.random.Generator) -> list[Layer] | None:
    """The checkpoint's layers with its permutable units moved at random, or None without a plan (see
    unit_groups) or when the plan does not fit the weights."""
    groups = unit_groups(checkpoint)
    if groups is None:
        return None
    try:
        return permute_units(checkpoint.layers, groups, rng)
    except ValueError:
        return None


def permute_record(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    """A chunk record of the same checkpoint (same id, properties) with its hidden units randomly permuted,
    or None when no function-preserving permutation of it is known."""
    checkpoint = checkpoint_from_record(record)
    layers = random_permutation(checkpoint, rng)
    if layers is None:
        return None
    checkpoint.layers = layers
    # The permutation preserves the function, so all the record says beside its weights (the probes, the
    # peer agreement the driver added, the properties) holds for the copy as for the original.
    permuted = chunk_checkpoint(checkpoint, int(record["chunk_size"]))
    return {**record, **{name: permuted[name] for name in WEIGHT_COLUMNS}}


def logit_invariance_loss(pred: torch.Tensor, pred_permuted: torch.Tensor) -> torch.Tensor:
    """½ mean squared difference between predictions for W and for a function-equivalent gW."""
    return 0.5 * ((pred - pred_permuted) ** 2).mean()
