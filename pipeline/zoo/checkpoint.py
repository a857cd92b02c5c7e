"""The in-memory form of one zoo member, shared by every reader, writer and later stage.

Weights are numpy float32 arrays in PyTorch layout:
  linear (out, in); conv1d (out, in, k); conv2d (out, in, kh, kw); bias (out,);
  norm (C,): the affine scale of a BatchNorm / LayerNorm / GroupNorm, its shift as the bias;
  norm_stats (C, 2): a BatchNorm's running mean and running variance per channel, no bias;
  embedding (num, dim): a table of learnt vectors (tokens, patches' positions), no bias.
Layers are listed in computation order (module order); a BatchNorm gives a norm layer followed by its
norm_stats layer, named ``<module>`` and ``<module>.running``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# New kinds go at the end: a kind's position is what the encoder reads (pipeline.collate).
LAYER_KINDS = ("linear", "conv1d", "conv2d", "norm", "norm_stats", "embedding")
WEIGHT_NDIM = {"linear": 2, "conv1d": 3, "conv2d": 4, "norm": 1, "norm_stats": 2, "embedding": 2}
# Kinds that map inputs to outputs (the rest act per channel or are looked up).
WEIGHTED_KINDS = ("linear", "conv1d", "conv2d")
# Kinds that carry no bias: a norm_stats layer's two columns say it all, an embedding is a table.
BIASLESS_KINDS = ("norm_stats", "embedding")


def element_size(kind: str, weight_shape: tuple[int, ...]) -> int:
    """Scalars in one set element: 1 for linear, norm and embedding, k for conv1d, kh*kw for conv2d, and 2 for
    norm_stats (one channel's running mean and variance stay together).

    Raises ValueError for an unknown kind or a weight of the wrong rank.
    """
    if kind not in WEIGHT_NDIM:
        raise ValueError(f"unknown layer kind {kind!r} (expected one of {', '.join(LAYER_KINDS)})")
    if len(weight_shape) != WEIGHT_NDIM[kind]:
        raise ValueError(f"{kind} weight must have {WEIGHT_NDIM[kind]} dimensions, got shape {weight_shape}")
    if kind == "norm_stats":
        if weight_shape[1] != 2:
            raise ValueError(f"norm_stats weight must be (channels, 2), got shape {weight_shape}")
        return 2
    return int(math.prod(weight_shape[2:]))


def fan_in(kind: str, weight_shape: tuple[int, ...]) -> int:
    """Inputs each output unit sums over (in * E for linear and conv); 1 for the per-channel and table kinds,
    whose values live on a unit scale whatever the layer's width."""
    if kind in WEIGHTED_KINDS:
        return int(weight_shape[1]) * element_size(kind, weight_shape)
    return 1


# Properties a reader fills in when the source has them. Accuracies are fractions in [0, 1].
CLASSIFIER_PROPERTIES = ("test_accuracy", "train_accuracy", "generalization_gap", "test_loss", "train_loss")
INR_PROPERTIES = ("frequency", "amplitude", "fit_error")

# Families whose parameter count is fixed by definition; a checkpoint that contradicts it is rejected.
KNOWN_PARAM_COUNTS: dict[str, tuple[int, ...]] = {
    "smallcnn": (4970,),
    "cnn-s": (2464, 2864),
    "cnn-l": (10853,),
}


@dataclass
class Layer:
    name: str
    kind: str
    weight: np.ndarray
    bias: np.ndarray | None = None

    @property
    def num_params(self) -> int:
        return int(self.weight.size + (0 if self.bias is None else self.bias.size))


@dataclass
class Checkpoint:
    id: str
    family: str
    dataset: str
    layers: list[Layer]
    properties: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # The training run this checkpoint is a step of (several steps of one run share it); "" for its own id.
    # Splits keep a run's checkpoints on one side.
    run: str = ""

    @property
    def run_id(self) -> str:
        return self.run or self.id

    @property
    def num_params(self) -> int:
        """Learnt parameters: every layer but batch norms' running statistics (buffers, not parameters)."""
        return sum(layer.num_params for layer in self.layers if layer.kind != "norm_stats")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat ``{"<layer>.weight": array, "<layer>.bias": array}`` in computation order."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            out[f"{layer.name}.weight"] = layer.weight
            if layer.bias is not None:
                out[f"{layer.name}.bias"] = layer.bias
        return out

    def required_properties(self) -> tuple[str, ...]:
        """What every checkpoint of this kind must carry: INRs their frequency, classifiers accuracy (test
        accuracy alone for the CNN Wild Park, whose runs record no other)."""
        if self.family == "siren":
            return ("frequency",)
        return ("test_accuracy",) if self.family == "wildpark" else ("test_accuracy", "train_accuracy")


@dataclass(frozen=True)
class Rejection:
    """A listed checkpoint that could not be accepted, with a reason a person can act on."""

    id: str
    reason: str


def with_generalization_gap(properties: dict[str, float]) -> dict[str, float]:
    """Add ``generalization_gap = train_accuracy - test_accuracy`` when both are present."""
    out = dict(properties)
    if "train_accuracy" in out and "test_accuracy" in out and "generalization_gap" not in out:
        out["generalization_gap"] = out["train_accuracy"] - out["test_accuracy"]
    return out


def validate(checkpoint: Checkpoint) -> str | None:
    """Why this checkpoint must be rejected, or None when it is sound."""
    if not checkpoint.layers:
        return "no layers"
    for i, layer in enumerate(checkpoint.layers):
        if layer.kind not in LAYER_KINDS:
            return f"layer {i} ({layer.name}): unknown kind {layer.kind!r}"
        if layer.bias is not None and layer.kind in BIASLESS_KINDS:
            return f"layer {i} ({layer.name}): a {layer.kind} layer has no bias"
        try:
            element_size(
                layer.kind, tuple(layer.weight.shape)
            )  # the rank (and norm_stats' width) its kind needs
        except ValueError as err:
            return f"layer {i} ({layer.name}): {err}"
        if layer.bias is not None and layer.bias.shape != (layer.weight.shape[0],):
            return (
                f"layer {i} ({layer.name}): bias shape {tuple(layer.bias.shape)} does not match "
                f"{layer.weight.shape[0]} output units"
            )
        for what, arr in (("weight", layer.weight), ("bias", layer.bias)):
            if arr is not None and not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                return f"layer {i} ({layer.name}): {bad} non-finite {what} value(s) (NaN/Inf)"
    expected = KNOWN_PARAM_COUNTS.get(checkpoint.family)
    if expected and checkpoint.num_params not in expected:
        return (
            f"parameter count {checkpoint.num_params} contradicts family {checkpoint.family!r} "
            f"(expected {' or '.join(map(str, expected))})"
        )
    for name in checkpoint.required_properties():
        value = checkpoint.properties.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"missing property {name!r}"
        # An infinite label (a CSV "inf", a Parquet float) would make every loss that uses it infinite.
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"property {name!r} is not finite ({value})"
    return None
