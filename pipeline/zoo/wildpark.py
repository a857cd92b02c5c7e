"""The CNN Wild Park layout (Kofinas et al., ICLR 2024): one folder per training run, one per checkpoint.

    <zoo>/<run>/<checkpoint>/checkpoint.pt    a torch.save dict: "model" (state dict ``layers.<i>``,
                                              ``fc``), "config" (channels, kernel_size, stride, padding,
                                              residual, activation per layer, n_classes), "last_result"
                                              ({"test/acc": …, …}) and "iteration"

A checkpoint's id is ``<run>/<checkpoint>``. ``steps="final"`` keeps each run's last checkpoint folder
(natural order of the names), ``"all"`` every one. The files are pickles holding Ray's training state
and an OmegaConf config beside the weights: they are loaded with ``torch.load(weights_only=True)``,
which builds nothing but tensors and plain containers, plus an explicit allowlist: numpy's scalar and
dtype reconstructors (Ray records metrics as numpy scalars) and, for OmegaConf's classes, stand-ins of
our own that keep their pickled state as data (no OmegaConf code runs, and it need not be installed). A
file needing anything else is rejected with the name of what it asked for, never unpickled.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import posixpath
from collections.abc import Iterator

import numpy as np

from pipeline import storage
from pipeline.zoo.checkpoint import Checkpoint, Layer, Rejection, validate, with_generalization_gap
from pipeline.zoo.listing import (
    ZooError,
    ZooListing,
    file_stamp,
    fingerprint,
    first_line,
    printable,
    relative,
)
from pipeline.zoo.state_dict import natural_order

CHECKPOINT_FILE = "checkpoint.pt"
PER_PART = 64
STEPS = ("final", "all")
CONFIG_LISTS = ("channels", "kernel_size", "stride", "padding", "residual", "activation")
# last_result key → property; Wild Park trains CIFAR-10 classifiers and reports accuracies as fractions.
RESULT_PROPERTIES = {
    "test/acc": "test_accuracy",
    "train/acc": "train_accuracy",
    "test/loss": "test_loss",
    "train/loss": "train_loss",
}


def list_zoo(uri: str, steps: str = "final") -> ZooListing:
    """Parts of PER_PART checkpoints, in the natural order of their run and checkpoint folders."""
    if steps not in STEPS:
        raise ZooError(f"steps must be one of {', '.join(STEPS)}, got {steps!r}")
    fs, root = storage.filesystem(uri)
    found = {relative(root, p): info for p, info in fs.find(root, detail=True).items() if relative(root, p)}
    runs: dict[str, list[str]] = {}
    for rel in found:
        parts = rel.split("/")
        if len(parts) == 3 and parts[2] == CHECKPOINT_FILE:
            runs.setdefault(parts[0], []).append(parts[1])
    if not runs:
        raise ZooError(f"{uri}: no <run>/<checkpoint>/{CHECKPOINT_FILE} files (CNN Wild Park layout)")
    entries = []
    for run in natural_order(runs):
        folders = natural_order(runs[run])
        for folder in folders if steps == "all" else folders[-1:]:
            rel = f"{run}/{folder}/{CHECKPOINT_FILE}"
            outside = storage.link_outside(root, posixpath.join(root, rel), found[rel])
            entries.append(
                {"id": printable(f"{run}/{folder}"), "run": printable(run), "file": rel, "outside": outside}
            )
    stamps = [(e["file"], int(found[e["file"]]["size"]), file_stamp(found[e["file"]])) for e in entries]
    parts = [
        {
            "uri": uri,
            "format": "wildpark",
            "options": {"steps": steps},
            "entries": entries[i : i + PER_PART],
            "ids": [e["id"] for e in entries[i : i + PER_PART]],
        }
        for i in range(0, len(entries), PER_PART)
    ]
    options = {"steps": steps}
    return ZooListing(uri, "wildpark", options, parts, len(entries), fingerprint("wildpark", options, stamps))


def read_part(part: dict) -> Iterator[Checkpoint | Rejection]:
    """One Checkpoint or Rejection per listed checkpoint file."""
    fs, root = storage.filesystem(part["uri"])
    for entry in part["entries"]:
        if entry["outside"]:
            yield Rejection(
                entry["id"], f"{entry['file']} is a symbolic link to {entry['outside']}, outside the zoo"
            )
            continue
        try:
            blob = fs.cat_file(posixpath.join(root, entry["file"]))
        except FileNotFoundError:
            yield Rejection(entry["id"], f"{entry['file']} is missing")
            continue
        item = _checkpoint(entry["id"], blob)
        if isinstance(item, Checkpoint):
            item = dataclasses.replace(item, run=entry["run"])
            reason = validate(item)
            item = Rejection(item.id, reason) if reason else item
        yield item


class _Captured:
    """Stands in for a configuration object of the file (OmegaConf's DictConfig, ListConfig and nodes):
    it keeps the pickled state as data and runs none of that class's code."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__["state"] = state


class _TypeName:
    """Stands in for a type the file only names (``typing.Any`` as a node's declared type)."""


# What a Wild Park file may ask torch.load(weights_only=True) to build beyond tensors and plain values:
# its config, an OmegaConf object (read as captured state), Ray's metrics as numpy scalars, and the
# builtin types those name.
_STAND_INS = {
    "omegaconf.dictconfig.DictConfig": _Captured,
    "omegaconf.listconfig.ListConfig": _Captured,
    "omegaconf.nodes.AnyNode": _Captured,
    "omegaconf.nodes.IntegerNode": _Captured,
    "omegaconf.nodes.FloatNode": _Captured,
    "omegaconf.nodes.StringNode": _Captured,
    "omegaconf.nodes.BooleanNode": _Captured,
    "omegaconf.base.ContainerMetadata": _Captured,
    "omegaconf.base.Metadata": _Captured,
    "typing.Any": _TypeName,
}


def _safe_globals() -> list:
    import _codecs
    import collections

    from numpy._core.multiarray import scalar

    numpy_types = [
        scalar,
        np.dtype,
        *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")),
    ]
    builtins = [dict, list, int, float, str, bool, collections.defaultdict, _codecs.encode]
    return [*((stand_in, name) for name, stand_in in _STAND_INS.items()), *numpy_types, *builtins]


def _unwrap(value):
    """Captured configuration objects as plain JSON values (a DictConfig's content as a dict, a ListConfig's
    as a list, a node as its value); numpy scalars as numbers."""
    if isinstance(value, _Captured):
        state = value.__dict__.get("state") or {}
        if "_content" in state:
            return _unwrap(state["_content"])
        return _unwrap(state.get("_val"))
    if isinstance(value, dict):
        return {str(k): _unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _load(blob: bytes) -> dict | str:
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        wanted = next(
            (line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line),
            first[0] if first else "",
        )
        return f"{CHECKPOINT_FILE} asks to build objects beyond tensors and plain values ({wanted}): not unpickled"
    except Exception as e:  # truncated zip, bad magic, …
        return f"{CHECKPOINT_FILE} is corrupt or truncated: {type(e).__name__}: {first_line(e)}"
    config = _unwrap(obj.get("config")) if isinstance(obj, dict) else None
    if not isinstance(obj.get("model") if isinstance(obj, dict) else None, dict) or not isinstance(
        config, dict
    ):
        return f"{CHECKPOINT_FILE} holds no 'model' state dict and 'config' (not a Wild Park checkpoint)"
    return {**obj, "config": config, "last_result": _unwrap(obj.get("last_result"))}


def _checkpoint(cid: str, blob: bytes) -> Checkpoint | Rejection:
    import torch

    obj = _load(blob)
    if isinstance(obj, str):
        return Rejection(cid, obj)
    config, model = obj["config"], obj["model"]
    missing = [k for k in (*CONFIG_LISTS, "n_classes") if k not in config]
    if missing:
        return Rejection(cid, f"config lacks {', '.join(missing)}")
    n = len(config["residual"])
    layers = []
    for name in [f"layers.{i}" for i in range(n)] + ["fc"]:
        weight, bias = model.get(f"{name}.weight"), model.get(f"{name}.bias")
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            return Rejection(cid, f"model has no floating-point {name}.weight")
        kind = "conv2d" if weight.ndim == 4 else "linear"
        as_array = None if bias is None else bias.detach().float().numpy().copy()
        layers.append(Layer(name, kind, weight.detach().float().numpy().copy(), as_array))
    extra = sorted(set(model) - {f"{layer.name}.{p}" for layer in layers for p in ("weight", "bias")})
    if extra:
        return Rejection(cid, f"model holds entries the Wild Park layout does not: {', '.join(extra[:5])}")
    result = obj.get("last_result") if isinstance(obj.get("last_result"), dict) else {}
    properties = {}
    for key, name in RESULT_PROPERTIES.items():
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            properties[name] = float(value)
    hyperparameters = {k: json.dumps(config[k]) for k in CONFIG_LISTS}
    hyperparameters["iteration"] = int(obj["iteration"]) if isinstance(obj.get("iteration"), int) else None
    architecture = {
        "family": "wildpark",
        "input_shape": [int(config["channels"][0]), 32, 32],  # CIFAR-10
        "ops": [{"op": "wildpark_cnn", "config": {k: config[k] for k in (*CONFIG_LISTS, "n_classes")}}],
    }
    hyperparameters["architecture"] = json.dumps(architecture, sort_keys=True)
    return Checkpoint(
        cid, "wildpark", "cifar10", layers, with_generalization_gap(properties), hyperparameters
    )
