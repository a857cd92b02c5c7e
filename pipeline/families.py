"""Network families of a zoo: architecture sampling, building the nn.Module, Checkpoint ↔ module.

An architecture is a JSON object ``{"family", "input_shape", "ops"}`` where ``ops`` is the list of
operations in computation order, for example ``{"op": "conv2d", "in": 1, "out": 16, "kernel": 3,
"stride": 2, "padding": 0}``, ``{"op": "relu"}``, ``{"op": "maxpool2d", "kernel": 2}``, ``{"op": "gap"}``,
``{"op": "flatten"}``, ``{"op": "linear", "in": 36, "out": 20}``. Checkpoints store it as a JSON string
in ``hyperparameters["architecture"]``.

Two ops hold more than one module: ``{"op": "batchnorm2d", "channels": 16}`` (a BatchNorm, in a checkpoint
a norm layer and its norm_stats layer) and ``{"op": "residual", "body": [ops], "shortcut": [ops]}``, which
computes ``body(x) + shortcut(x)`` (an empty shortcut is the identity), as in a ResNet's basic block.

The family contract (the logit-invariance loss relies on it, pipeline.invariance): between two conv /
linear layers of one sequence there are only channel-wise operations (activations, pooling, dropout,
global average pooling, flatten, batch norm). So permuting the output units of a hidden layer (weight
rows, bias, the batch norms that follow it) together with the matching input units of the next layer
preserves the function. When a conv layer is followed by flatten and a linear layer, the linear layer's
inputs are grouped per channel: input column ``c * S + s`` belongs to channel ``c`` (S = flattened
spatial size). Across a residual op the units are tied to the skip and stay in place.

Modules are ``nn.Sequential`` with two parts, ``features`` (everything before the first linear layer)
and ``classifier``, so layer names read ``features.0``, ``classifier.2``.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.zoo.checkpoint import Checkpoint, Layer

FAMILIES = ("smallcnn", "cnn-s", "mlp", "cnn", "siren", "resnet", "vit", "resnet18")
CLASSIFIER_FAMILIES = ("smallcnn", "cnn-s", "mlp", "cnn", "resnet", "vit", "resnet18")
ACTIVATIONS = ("relu", "tanh", "gelu")
INITIALIZATIONS = ("default", "xavier_normal", "kaiming_normal", "orthogonal", "normal")
SIREN_W0 = 30.0
# The varied CNN family is capped in multiply-accumulates per input so every member trains in seconds.
MAX_CNN_MACS = 200_000
# Residual networks are deeper and wider; capped likewise, at a few seconds of training each.
MAX_RESNET_MACS = 1_500_000
# The big family: ResNet-18 at these channel widths on 1×16×16 images holds 1.1 M (20) to 25 M (96) parameters
# (64 is the published 11.2 M network); one training step of 64 images takes 0.14-1.4 s of one core.
RESNET18_WIDTHS = (20, 24, 32, 40, 48, 64, 80, 96)

_MODULE_KINDS = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear"}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class Sine(nn.Module):
    """SIREN activation: sin(w0 · x), elementwise."""

    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


class Residual(nn.Module):
    """``body(x) + shortcut(x)``; an empty shortcut passes x through."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class PatchEmbedding(nn.Module):
    """(B, C, H, W) → (B, tokens, dim): a conv with kernel and stride ``patch``, one token per patch."""

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class PositionEmbedding(nn.Module):
    """Adds a learnt vector per token position: ``weight`` (tokens, dim), a checkpoint's embedding layer."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(tokens, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class SelfAttention(nn.Module):
    """Multi-head self-attention over (B, tokens, dim) with separate q, k, v and out projections, so each
    is a linear layer of its own in a checkpoint (``nn.MultiheadAttention`` fuses q, k, v)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        mixed = nn.functional.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x))
        )
        return self.out(mixed.transpose(1, 2).reshape(b, n, d))


_WILD_PARK_ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": nn.functional.leaky_relu,
    "none": lambda x: x,
}


class WildParkCNN(nn.Module):
    """A CNN Wild Park network (Kofinas et al. 2024) from its ``config``: convs ``layers.<i>`` with a
    per-layer activation, where ``residual[i] >= 0`` adds the activated output of layer ``residual[i]`` to
    layer i's pre-activation on the channels they share; global average pooling; ``fc``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        channels = [int(c) for c in config["channels"]]
        self.residual = [int(r) for r in config["residual"]]
        self.activation = [str(a) for a in config["activation"]]
        unknown = sorted(set(self.activation) - set(_WILD_PARK_ACTIVATIONS))
        if unknown:
            raise ValueError(f"unknown Wild Park activation(s) {unknown}")
        self.layers = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], int(k), int(s), int(p))
            for i, (k, s, p) in enumerate(
                zip(config["kernel_size"], config["stride"], config["padding"], strict=True)
            )
        )
        self.fc = nn.Linear(channels[-1], int(config["n_classes"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            source = self.residual[i]
            if source >= 0:
                shared = min(kept[source].shape[1], x.shape[1])
                x = torch.cat((x[:, :shared] + kept[source][:, :shared], x[:, shared:]), dim=1)
            x = _WILD_PARK_ACTIVATIONS[self.activation[i]](x)
            if i in self.residual:
                kept[i] = x
        return self.fc(x.mean(dim=(2, 3)))


class TokenMean(nn.Module):
    """(B, tokens, dim) → (B, dim): the mean over tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class GlobalAvgPool(nn.Module):
    """(B, C, *spatial) → (B, C): mean over all spatial positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=-1)


def datasets_for(family: str) -> tuple[str, ...]:
    """The datasets a family trains on (all image datasets share one input format)."""
    from pipeline.datasets import DATASETS, IMAGE_DATASETS

    if family in ("smallcnn", "cnn-s", "resnet", "vit", "resnet18"):
        return IMAGE_DATASETS
    if family in ("mlp", "cnn"):
        return DATASETS
    if family == "siren":
        return ("sine",)
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def input_shape_for(family: str, dataset: str) -> tuple[int, ...]:
    """Input shape (without batch) a family expects on a dataset."""
    from pipeline.datasets import IMAGE_SIZE

    if dataset not in datasets_for(family):
        raise ValueError(f"family {family!r} does not train on dataset {dataset!r}")
    if family == "siren":
        return (1,)
    if dataset == "mnist1d":
        return (1, 40)
    return (1, 28, 28) if family == "cnn-s" else (1, IMAGE_SIZE, IMAGE_SIZE)


def smallcnn_architecture(
    activation: str = "relu", dropout: float = 0.0, input_shape: tuple[int, ...] = (1, 16, 16)
) -> dict[str, Any]:
    """Small CNN Zoo: three 3×3 stride-2 'valid' convs of 16 filters, global average pooling, dense 10."""
    ops: list[dict[str, Any]] = []
    channels = input_shape[0]
    for _ in range(3):
        ops += [_conv("conv2d", channels, 16, 3, stride=2, padding=0), {"op": activation}]
        ops += _dropout(dropout)
        channels = 16
    ops += [{"op": "gap"}, {"op": "linear", "in": 16, "out": 10}]
    return {"family": "smallcnn", "input_shape": list(input_shape), "ops": ops}


def cnn_s_architecture(activation: str = "relu", dropout: float = 0.0, channels: int = 1) -> dict[str, Any]:
    """Model Zoos CNN-s on 28×28: conv5 c→8, pool, conv5 8→6, pool, conv2 6→4, flatten 36, 36→20→10."""
    ops: list[dict[str, Any]] = [
        _conv("conv2d", channels, 8, 5),
        {"op": "maxpool2d", "kernel": 2},
        {"op": activation},
        *_dropout(dropout),
        _conv("conv2d", 8, 6, 5),
        {"op": "maxpool2d", "kernel": 2},
        {"op": activation},
        *_dropout(dropout),
        _conv("conv2d", 6, 4, 2),
        {"op": activation},
        *_dropout(dropout),
        {"op": "flatten"},
        {"op": "linear", "in": 36, "out": 20},
        {"op": activation},
        *_dropout(dropout),
        {"op": "linear", "in": 20, "out": 10},
    ]
    return {"family": "cnn-s", "input_shape": [channels, 28, 28], "ops": ops}


def cnn_l_architecture(activation: str = "relu", channels: int = 3) -> dict[str, Any]:
    """Model Zoos CNN-l on 32×32: convs 3×3 c→16→32→15, each with max pooling, flatten 60, 60→20→10."""
    ops: list[dict[str, Any]] = []
    for cin, cout in ((channels, 16), (16, 32), (32, 15)):
        ops += [_conv("conv2d", cin, cout, 3), {"op": "maxpool2d", "kernel": 2}, {"op": activation}]
    ops += [{"op": "flatten"}, {"op": "linear", "in": 60, "out": 20}, {"op": activation}]
    ops += [{"op": "linear", "in": 20, "out": 10}]
    return {"family": "cnn-l", "input_shape": [channels, 32, 32], "ops": ops}


def siren_architecture(hidden: int = 32, w0: float = SIREN_W0) -> dict[str, Any]:
    """The paper's INR: 1 → hidden → hidden → 1 with sine activations."""
    ops = [
        {"op": "linear", "in": 1, "out": hidden},
        {"op": "sine", "w0": w0},
        {"op": "linear", "in": hidden, "out": hidden},
        {"op": "sine", "w0": w0},
        {"op": "linear", "in": hidden, "out": 1},
    ]
    return {"family": "siren", "input_shape": [1], "ops": ops}


def sample_architecture(
    family: str, dataset: str, rng: np.random.Generator, activation: str = "relu", dropout: float = 0.0
) -> dict[str, Any]:
    """An architecture of ``family`` for ``dataset``; the varied families draw their shape from ``rng``."""
    shape = input_shape_for(family, dataset)
    if family == "smallcnn":
        return smallcnn_architecture(activation, dropout, shape)
    if family == "cnn-s":
        return cnn_s_architecture(activation, dropout, shape[0])
    if family == "siren":
        return siren_architecture()
    if family == "mlp":
        return _sample_mlp(shape, rng, activation, dropout)
    if family == "resnet":
        return _sample_resnet(shape, rng, activation, dropout)
    if family == "vit":
        return _sample_vit(shape, rng, activation)
    if family == "resnet18":  # the published layers as they are: ReLU, no dropout
        width = int(rng.choice(RESNET18_WIDTHS))
        return resnet18_architecture(classes=10, channels=shape[0], size=shape[1], width=width)
    return _sample_cnn(shape, rng, activation, dropout)


def _conv(
    op: str,
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
    groups: int = 1,
) -> dict[str, Any]:
    spec = {"op": op, "in": cin, "out": cout, "kernel": kernel, "stride": stride, "padding": padding}
    if groups != 1:  # grouped; depthwise when groups == in == out
        spec["groups"] = groups
    return spec if bias else {**spec, "bias": False}  # a conv before a batch norm needs no bias


def _dropout(p: float) -> list[dict[str, Any]]:
    return [{"op": "dropout", "p": float(p)}] if p > 0 else []


def _sample_mlp(
    shape: tuple[int, ...], rng: np.random.Generator, activation: str, dropout: float
) -> dict[str, Any]:
    widths = [int(w) for w in rng.choice([8, 16, 24, 32, 48, 64], size=int(rng.integers(1, 5)))]
    ops: list[dict[str, Any]] = [{"op": "flatten"}]
    fan_in = math.prod(shape)
    for width in widths:
        ops += [{"op": "linear", "in": fan_in, "out": width}, {"op": activation}, *_dropout(dropout)]
        fan_in = width
    ops.append({"op": "linear", "in": fan_in, "out": 10})
    return {"family": "mlp", "input_shape": list(shape), "ops": ops}


def _sample_cnn(
    shape: tuple[int, ...], rng: np.random.Generator, activation: str, dropout: float
) -> dict[str, Any]:
    """2–5 'same' convs of 4–32 channels, kernels 1/3/5/7, max pooling, GAP or flatten, 1–2 linear layers.

    Draws again until the network fits :data:`MAX_CNN_MACS`, so the result still depends only on ``rng``.
    """
    conv, pool = ("conv1d", "maxpool1d") if len(shape) == 2 else ("conv2d", "maxpool2d")
    while True:
        ops: list[dict[str, Any]] = []
        channels, size, macs = shape[0], shape[1], 0
        for _ in range(int(rng.integers(2, 6))):
            out, kernel = int(rng.choice([4, 8, 12, 16, 24, 32])), int(rng.choice([1, 3, 5, 7]))
            ops += [_conv(conv, channels, out, kernel, padding=kernel // 2), {"op": activation}]
            macs += channels * out * kernel ** (len(shape) - 1) * size ** (len(shape) - 1)
            channels = out
            if size >= 4 and rng.random() < 0.6:
                ops.append({"op": pool, "kernel": 2})
                size //= 2
            ops += _dropout(dropout)
        flat = channels * size ** (len(shape) - 1)
        if flat <= 256 and rng.random() < 0.5:
            ops.append({"op": "flatten"})
        else:
            ops.append({"op": "gap"})
            flat = channels
        if rng.random() < 0.5:
            hidden = int(rng.choice([16, 32, 64]))
            ops += [{"op": "linear", "in": flat, "out": hidden}, {"op": activation}, *_dropout(dropout)]
            flat = hidden
        ops.append({"op": "linear", "in": flat, "out": 10})
        if macs <= MAX_CNN_MACS:
            return {"family": "cnn", "input_shape": list(shape), "ops": ops}


def _basic_block(
    channels: int, out: int, stride: int, activation: str, dropout: float = 0.0
) -> list[dict[str, Any]]:
    """A ResNet basic block and the activation after its sum: two 3×3 convs with batch norm, the skip a
    1×1 conv with batch norm where the width or the resolution changes (torchvision's ``BasicBlock``)."""
    body = [
        _conv("conv2d", channels, out, 3, stride=stride, padding=1, bias=False),
        {"op": "batchnorm2d", "channels": out},
        {"op": activation},
        *_dropout(dropout),
        _conv("conv2d", out, out, 3, padding=1, bias=False),
        {"op": "batchnorm2d", "channels": out},
    ]
    shortcut = []
    if stride != 1 or channels != out:
        shortcut = [
            _conv("conv2d", channels, out, 1, stride=stride, bias=False),
            {"op": "batchnorm2d", "channels": out},
        ]
    return [{"op": "residual", "body": body, "shortcut": shortcut}, {"op": activation}]


def resnet18_architecture(
    classes: int = 10, channels: int = 3, size: int = 32, width: int = 64
) -> dict[str, Any]:
    """ResNet-18 as the Model Zoos ResNet-18 zoos train it: torchvision's layers with a 3×3 stride-1 stem
    and no max pooling (for 32×32 and 64×64 images), four stages of two basic blocks (64, 128, 256, 512
    channels), global average pooling, a linear layer to ``classes``; about 11.2 M parameters. ``width``
    scales the channels (96: about 25 M parameters)."""
    ops: list[dict[str, Any]] = [
        _conv("conv2d", channels, width, 3, padding=1, bias=False),
        {"op": "batchnorm2d", "channels": width},
        {"op": "relu"},
    ]
    current = width
    for stage in range(4):
        out = width * 2**stage
        for block in range(2):
            ops += _basic_block(current, out, 2 if stage > 0 and block == 0 else 1, "relu")
            current = out
    ops += [{"op": "gap"}, {"op": "linear", "in": current, "out": classes}]
    return {"family": "resnet18", "input_shape": [channels, size, size], "ops": ops}


def _sample_resnet(
    shape: tuple[int, ...], rng: np.random.Generator, activation: str, dropout: float
) -> dict[str, Any]:
    """A small ResNet: a 3×3 stem conv with batch norm, 1–3 stages of 1–2 basic blocks (two 3×3 convs with
    batch norm, the skip a 1×1 conv with batch norm where the width or resolution changes), each stage
    after the first halving the resolution and doubling the width, global average pooling, one linear
    layer. Draws again until the network fits :data:`MAX_RESNET_MACS`."""
    while True:
        width, stages = int(rng.choice([4, 8, 12, 16])), int(rng.integers(1, 4))
        blocks = [int(rng.integers(1, 3)) for _ in range(stages)]
        size = shape[1]
        macs = shape[0] * width * 9 * size * size
        ops: list[dict[str, Any]] = [
            _conv("conv2d", shape[0], width, 3, padding=1, bias=False),
            {"op": "batchnorm2d", "channels": width},
            {"op": activation},
        ]
        channels = width
        for stage, count in enumerate(blocks):
            out = width * 2**stage
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                size = -(-size // stride)
                ops += _basic_block(channels, out, stride, activation, dropout)
                skip = channels * out if stride != 1 or channels != out else 0
                macs += (channels * out * 9 + out * out * 9 + skip) * size * size
                channels = out
        ops += [{"op": "gap"}, {"op": "linear", "in": channels, "out": 10}]
        if macs <= MAX_RESNET_MACS:
            return {"family": "resnet", "input_shape": list(shape), "ops": ops}


def _sample_vit(shape: tuple[int, ...], rng: np.random.Generator, activation: str) -> dict[str, Any]:
    """A tiny vision transformer: 4×4 patches as tokens, a learnt position per token, 1–3 pre-norm blocks
    (self-attention of 2 or 4 heads, then an MLP of twice the width, each around a skip), a final layer
    norm, the mean over tokens and a linear layer."""
    dim, heads = int(rng.choice([16, 24, 32])), int(rng.choice([2, 4]))
    patch = 4
    tokens = (shape[1] // patch) * (shape[2] // patch)
    ops: list[dict[str, Any]] = [
        {"op": "patchify", "in": shape[0], "dim": dim, "patch": patch},
        {"op": "position", "tokens": tokens, "dim": dim},
    ]
    for _ in range(int(rng.integers(1, 4))):
        attention = [{"op": "layernorm", "dim": dim}, {"op": "attention", "dim": dim, "heads": heads}]
        mlp = [
            {"op": "layernorm", "dim": dim},
            {"op": "linear", "in": dim, "out": 2 * dim},
            {"op": activation},
            {"op": "linear", "in": 2 * dim, "out": dim},
        ]
        ops += [
            {"op": "residual", "body": attention, "shortcut": []},
            {"op": "residual", "body": mlp, "shortcut": []},
        ]
    ops += [{"op": "layernorm", "dim": dim}, {"op": "token_mean"}, {"op": "linear", "in": dim, "out": 10}]
    return {"family": "vit", "input_shape": list(shape), "ops": ops}


def _as_dict(architecture: str | dict[str, Any]) -> dict[str, Any]:
    return json.loads(architecture) if isinstance(architecture, str) else architecture


def _module_for_op(spec: dict[str, Any]) -> nn.Module:
    op = spec["op"]
    if op in ("conv1d", "conv2d"):
        conv = nn.Conv2d if op == "conv2d" else nn.Conv1d
        return conv(
            spec["in"],
            spec["out"],
            spec["kernel"],
            spec["stride"],
            spec["padding"],
            groups=spec.get("groups", 1),
            bias=spec.get("bias", True),
        )
    if op == "linear":
        return nn.Linear(spec["in"], spec["out"])
    simple = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
        "sigmoid": nn.Sigmoid,
        "leakyrelu": nn.LeakyReLU,
        "silu": nn.SiLU,
        "gap": GlobalAvgPool,
        "flatten": nn.Flatten,
    }
    if op in simple:
        return simple[op]()
    if op == "sine":
        return Sine(float(spec["w0"]))
    if op == "dropout":
        return nn.Dropout(float(spec["p"]))
    if op == "maxpool2d":
        return nn.MaxPool2d(spec["kernel"])
    if op == "maxpool1d":
        return nn.MaxPool1d(spec["kernel"])
    if op == "patchify":
        return PatchEmbedding(spec["in"], spec["dim"], spec["patch"])
    if op == "position":
        return PositionEmbedding(spec["tokens"], spec["dim"])
    if op == "attention":
        return SelfAttention(spec["dim"], spec["heads"])
    if op == "layernorm":
        return nn.LayerNorm(spec["dim"])
    if op == "token_mean":
        return TokenMean()
    if op == "wildpark_cnn":
        return WildParkCNN(spec["config"])
    if op == "batchnorm2d":
        return nn.BatchNorm2d(spec["channels"])
    if op == "batchnorm1d":
        return nn.BatchNorm1d(spec["channels"])
    if op == "residual":
        return Residual(
            nn.Sequential(*[_module_for_op(s) for s in spec["body"]]),
            nn.Sequential(*[_module_for_op(s) for s in spec.get("shortcut", [])]),
        )
    raise ValueError(f"unknown op {op!r} in architecture")


def build_module(architecture: str | dict[str, Any]) -> nn.Sequential:
    """The nn.Module an architecture (dict or its JSON string) describes, freshly initialised by torch."""
    arch = _as_dict(architecture)
    ops = arch["ops"]
    first_linear = next((i for i, spec in enumerate(ops) if spec["op"] == "linear"), len(ops))
    parts = OrderedDict()
    if first_linear > 0:
        parts["features"] = nn.Sequential(*[_module_for_op(spec) for spec in ops[:first_linear]])
    parts["classifier"] = nn.Sequential(*[_module_for_op(spec) for spec in ops[first_linear:]])
    return nn.Sequential(parts)


def architecture_json(architecture: dict[str, Any]) -> str:
    """The canonical JSON string stored in ``hyperparameters["architecture"]``."""
    return json.dumps(architecture, sort_keys=True, separators=(",", ":"))


def weighted_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) for every conv / linear layer, in computation order."""
    return [(name, m) for name, m in module.named_modules() if type(m) in _MODULE_KINDS]


def parameter_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every module a checkpoint holds, in order: conv / linear layers, batch and layer
    norms, position embeddings."""
    return [
        (name, m)
        for name, m in module.named_modules()
        if type(m) in _MODULE_KINDS or isinstance(m, (*_BATCH_NORMS, nn.LayerNorm, PositionEmbedding))
    ]


def initialize(module: nn.Module, scheme: str, std: float = 0.05) -> None:
    """Re-initialise weights in place from torch's global RNG; biases start at zero except for 'default'.

    ``scheme`` is one of :data:`INITIALIZATIONS` ('default' keeps torch's own initialisation) or 'siren'.
    """
    if scheme not in (*INITIALIZATIONS, "siren"):
        raise ValueError(f"unknown initialisation {scheme!r}; known: {', '.join(INITIALIZATIONS)}, siren")
    if scheme == "default":
        return
    layers = [layer for _, layer in weighted_layers(module)]
    with torch.no_grad():
        for index, layer in enumerate(layers):
            weight = layer.weight
            if scheme == "siren":
                # Every layer that feeds a sine gets SIREN's hidden-layer rule U(±sqrt(6/fan_in)/w0) and a
                # zero bias; the output layer keeps torch's default. So does the DWS sine-wave data the SNE
                # paper used, which never applies SIREN's first-layer rule U(±1/fan_in): the first layer
                # starts at low frequencies (|w0·w| ≤ 2.4) and training must grow its weights to fit the wave,
                # which writes the wave's frequency into the weights' spread: over the 3,000 inr networks the
                # rank correlation of the second layer's std with b is 0.82; trained the same way from the
                # first-layer rule, −0.01 (200 networks), and the frequency hides in small adjustments.
                if index == len(layers) - 1:
                    continue
                bound = math.sqrt(6.0 / weight.shape[1]) / SIREN_W0
                weight.uniform_(-bound, bound)
                layer.bias.zero_()
                continue
            if scheme == "xavier_normal":
                nn.init.xavier_normal_(weight)
            elif scheme == "kaiming_normal":
                nn.init.kaiming_normal_(weight, nonlinearity="relu")
            elif scheme == "orthogonal":
                nn.init.orthogonal_(weight)
            else:
                nn.init.normal_(weight, std=std)
            if layer.bias is not None:
                layer.bias.zero_()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32).copy()


def _module_layers(module: nn.Module) -> Iterator[tuple[str, str, torch.Tensor, torch.Tensor | None]]:
    """(name, kind, weight, bias) of each checkpoint layer a module holds, in module order, as its tensors."""
    for name, layer in parameter_modules(module):
        if isinstance(layer, PositionEmbedding):
            yield name, "embedding", layer.weight, None
        elif isinstance(layer, (*_BATCH_NORMS, nn.LayerNorm)):
            yield name, "norm", layer.weight, layer.bias
            if isinstance(layer, _BATCH_NORMS):
                yield (
                    f"{name}.running",
                    "norm_stats",
                    torch.stack([layer.running_mean, layer.running_var], 1),
                    None,
                )
        else:
            yield name, _MODULE_KINDS[type(layer)], layer.weight, layer.bias


def layers_from_module(module: nn.Module) -> list[Layer]:
    """The module's parameters as checkpoint layers (float32 copies, PyTorch layout): a conv / linear layer
    each, a batch or layer norm as its affine scale and shift (kind norm), a batch norm's running statistics
    after it (norm_stats, named ``<module>.running``), a position table as an embedding."""
    return [
        Layer(name, kind, _numpy(weight), None if bias is None else _numpy(bias))
        for name, kind, weight, bias in _module_layers(module)
    ]


def checkpoint_from_module(
    module: nn.Module,
    *,
    id: str,
    family: str,
    dataset: str,
    architecture: str | dict[str, Any],
    properties: dict[str, float] | None = None,
    hyperparameters: dict[str, Any] | None = None,
    run: str = "",
) -> Checkpoint:
    """A Checkpoint holding the module's weights; the architecture JSON goes in hyperparameters."""
    arch = architecture if isinstance(architecture, str) else architecture_json(architecture)
    hyper = {**(hyperparameters or {}), "architecture": arch}
    return Checkpoint(id, family, dataset, layers_from_module(module), dict(properties or {}), hyper, run)


def _copy(target: torch.Tensor, value: np.ndarray, what: str) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(
            f"{what}: checkpoint shape {tuple(value.shape)}, module expects {tuple(target.shape)}"
        )
    target.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))


def load_checkpoint_into(module: nn.Module, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's weights (and batch norms' running statistics) into a module of the same
    architecture (in place).

    Layers are matched by position in module order, so a checkpoint keeps the names its source gave
    them (torchvision's ``layer1.0.conv1``, Model Zoos' ``module_list.0``). Raises ValueError naming the
    first layer whose kind or shape does not match, or when the layer counts differ.
    """
    expected = list(_module_layers(module))  # the module's own tensors: nothing copied to compare shapes
    if len(expected) != len(checkpoint.layers):
        raise ValueError(
            f"checkpoint {checkpoint.id!r} has {len(checkpoint.layers)} layers "
            f"({[layer.name for layer in checkpoint.layers][:6]}…), the module {len(expected)}"
        )
    for (name, kind, weight, bias), have in zip(expected, checkpoint.layers, strict=True):
        where = f"layer {have.name!r} (the module's {name!r})"
        if kind != have.kind:
            raise ValueError(f"{where}: checkpoint kind {have.kind!r}, module kind {kind!r}")
        if tuple(weight.shape) != tuple(have.weight.shape):
            raise ValueError(
                f"{where}: checkpoint weight shape {tuple(have.weight.shape)}, module expects "
                f"{tuple(weight.shape)}"
            )
        if (bias is None) != (have.bias is None):
            raise ValueError(f"{where}: bias present in only one of checkpoint and module")
    layers = iter(checkpoint.layers)
    with torch.no_grad():
        for _, target in parameter_modules(module):
            layer = next(layers)
            _copy(target.weight, layer.weight, f"layer {layer.name!r} weight")
            if layer.bias is not None:
                _copy(target.bias, layer.bias, f"layer {layer.name!r} bias")
            if isinstance(target, _BATCH_NORMS):
                stats = next(layers).weight
                _copy(target.running_mean, stats[:, 0], f"layer {layer.name!r} running mean")
                _copy(target.running_var, stats[:, 1], f"layer {layer.name!r} running variance")


def module_from_checkpoint(checkpoint: Checkpoint) -> nn.Sequential:
    """Rebuild the network a checkpoint came from (needs ``hyperparameters["architecture"]``), in eval mode."""
    architecture = checkpoint.hyperparameters.get("architecture")
    if not architecture:
        raise ValueError(f"checkpoint {checkpoint.id!r} carries no 'architecture' hyperparameter")
    module = build_module(architecture)
    load_checkpoint_into(module, checkpoint)
    return module.eval()
