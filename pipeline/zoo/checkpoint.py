"""The in-memory form of one zoo member, shared by every reader, writer and later stage.

Weights are numpy float32 arrays in PyTorch layout:
  linear (out, in); conv1d (out, in, k); conv2d (out, in, kh, kw); bias (out,).
Layers are listed in computation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LAYER_KINDS = ("linear", "conv1d", "conv2d")
WEIGHT_NDIM = {"linear": 2, "conv1d": 3, "conv2d": 4}

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

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat ``{"<layer>.weight": array, "<layer>.bias": array}`` in computation order."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            out[f"{layer.name}.weight"] = layer.weight
            if layer.bias is not None:
                out[f"{layer.name}.bias"] = layer.bias
        return out

    def required_properties(self) -> tuple[str, ...]:
        """What every checkpoint of this kind must carry: INRs their frequency, classifiers accuracy."""
        return ("frequency",) if self.family == "siren" else ("test_accuracy", "train_accuracy")


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
        if layer.weight.ndim != WEIGHT_NDIM[layer.kind]:
            return (
                f"layer {i} ({layer.name}): {layer.kind} weight must have {WEIGHT_NDIM[layer.kind]} "
                f"dimensions, got shape {tuple(layer.weight.shape)}"
            )
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
