"""A PyTorch state dict (module names as PyTorch writes them) → checkpoint layers, for any architecture.

Entries are grouped by module, the name before the last dot, in the order given (``torch.save`` keeps
module order; callers that lost it pass names in their natural order). Per module:

- ``weight`` (+ ``bias``): rank 4 → conv2d, rank 3 → conv1d, rank 2 → linear, or embedding when the
  module's own name holds "emb" (token, patch and position tables) or it is an ``nn.Embedding``-style
  table without a bias under such a name; rank 1 → norm (BatchNorm, LayerNorm, GroupNorm scale, shift as
  bias);
- ``running_mean`` + ``running_var`` → a norm_stats layer named ``<module>.running`` after the module's
  norm layer; ``num_batches_tracked`` (a step counter, not a weight) is not read;
- ``in_proj_weight`` (+ ``in_proj_bias``) of an ``nn.MultiheadAttention`` → three linear layers
  ``<module>.q``, ``.k``, ``.v`` (its ``out_proj`` is an ordinary linear module);
- a bare tensor of rank ≥ 2 whose name holds "emb" or "token" (``pos_embedding``, ``cls_token``) → an
  embedding of its last dimension's vectors.

Anything else (a rank-5 weight, a bias without a weight, an unknown buffer) is refused with its name:
nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from pipeline.zoo.checkpoint import Layer

KIND_OF_RANK = {4: "conv2d", 3: "conv1d", 2: "linear", 1: "norm"}
_TABLE_NAME = re.compile(r"emb|token", re.IGNORECASE)
_SKIPPED = ("num_batches_tracked",)


def natural_order(names: Iterable[str]) -> list[str]:
    """Names sorted so that numbered parts count as numbers: ``layer2`` before ``layer10``."""
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def _split(key: str) -> tuple[str, str]:
    module, _, entry = key.rpartition(".")
    return module, entry


def layers_from_state_dict(state: dict[str, np.ndarray]) -> list[Layer] | str:
    """The state dict's layers in the order of its keys, or the reason it cannot be read as layers."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, entry = _split(str(key))
        if entry in _SKIPPED:
            continue
        modules.setdefault(module, {})[entry] = np.asarray(value, dtype=np.float32)
    layers: list[Layer] = []
    for module, entries in modules.items():
        found = _module_layers(module, entries)
        if isinstance(found, str):
            return found
        layers += found
    if not layers:
        return "no weights in the state dict"
    return layers


def _module_layers(module: str, entries: dict[str, np.ndarray]) -> list[Layer] | str:
    entries = dict(entries)
    name = module or "(top level)"
    out: list[Layer] = []
    if "in_proj_weight" in entries:
        weight, bias = entries.pop("in_proj_weight"), entries.pop("in_proj_bias", None)
        if weight.ndim != 2 or weight.shape[0] % 3:
            return f"{module}.in_proj_weight has shape {weight.shape}: not three stacked projections"
        for part, w, b in zip(
            "qkv", np.split(weight, 3), np.split(bias, 3) if bias is not None else (None,) * 3, strict=True
        ):
            out.append(Layer(f"{module}.{part}", "linear", np.ascontiguousarray(w), b))
    if "weight" in entries:
        weight, bias = entries.pop("weight"), entries.pop("bias", None)
        kind = KIND_OF_RANK.get(weight.ndim)
        if kind is None:
            return f"{name}.weight has shape {weight.shape}: no layer kind reads a rank-{weight.ndim} weight"
        if kind == "linear" and _TABLE_NAME.search(module.rpartition(".")[2]):
            if bias is not None:
                return f"{name}: a table (embedding) with a bias"
            kind = "embedding"
        if bias is not None and bias.shape != weight.shape[:1]:
            return f"{name}.bias has shape {bias.shape}, its weight {weight.shape[0]} outputs"
        out.append(Layer(module, kind, weight, bias))
    if "running_mean" in entries or "running_var" in entries:
        mean, var = entries.pop("running_mean", None), entries.pop("running_var", None)
        if mean is None or var is None or mean.shape != var.shape or mean.ndim != 1:
            return f"{name}: running_mean and running_var must both be there, one value per channel"
        if not out or out[-1].kind != "norm" or out[-1].weight.shape != mean.shape:
            return f"{name}: running statistics without a norm weight of {mean.shape[0]} channels"
        out.append(Layer(f"{module}.running", "norm_stats", np.stack([mean, var], axis=1)))
    for entry, value in list(entries.items()):
        if entry in ("bias", "in_proj_bias"):
            return f"{name}.{entry} has no weight beside it"
        if value.ndim >= 2 and _TABLE_NAME.search(entry):
            out.append(
                Layer(
                    f"{module}.{entry}" if module else entry, "embedding", value.reshape(-1, value.shape[-1])
                )
            )
            entries.pop(entry)
    if entries:
        unknown = ", ".join(f"{module}.{e}" if module else e for e in sorted(entries))
        return f"unsupported state-dict entries {unknown}"
    return out
