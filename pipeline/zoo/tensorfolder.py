"""A folder of safetensors files and a properties table: any PyTorch or Hugging Face checkpoint, unconverted.

    <zoo>/properties.csv          one row per checkpoint (docs/zoo-formats.md)
    <zoo>/<any path>.safetensors  one checkpoint's state dict, PyTorch names

``properties.csv`` columns: ``file`` (the checkpoint's path relative to the zoo, required), optional ``id``
(default: ``file`` without its extension), ``family`` and ``dataset`` (default ``unknown``), ``architecture``
(pipeline.families JSON, for probes and permutations), the property columns (``test_accuracy``, …), and
any other column becomes a hyperparameter. A state dict becomes layers by pipeline.zoo.state_dict. The
safetensors format keeps no module order, so layers follow the file's ``module_order`` metadata (a JSON
list of module names, which ``write_zoo`` writes) where it has one, else the natural order of the names.
Integer tensors (index buffers such as ``position_ids``, BatchNorm's step counter) are not weights and
are not read. Nothing here unpickles: safetensors holds raw tensors and a JSON header.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from collections.abc import Iterable, Iterator

import numpy as np

from pipeline import storage
from pipeline.zoo.checkpoint import (
    CLASSIFIER_PROPERTIES,
    INR_PROPERTIES,
    Checkpoint,
    Rejection,
    validate,
    with_generalization_gap,
)
from pipeline.zoo.listing import (
    ZooError,
    ZooListing,
    file_stamp,
    fingerprint,
    first_line,
    mark_duplicates,
    printable,
    relative,
)
from pipeline.zoo.state_dict import layers_from_state_dict, natural_order

PROPERTIES_FILE = "properties.csv"
SUFFIX = ".safetensors"
ROWS_PER_PART = 64
PROPERTIES = (*CLASSIFIER_PROPERTIES, *INR_PROPERTIES)
KNOWN_COLUMNS = ("file", "id", "family", "dataset", "architecture", *PROPERTIES)
ORDER_KEY = "module_order"


def list_zoo(uri: str) -> ZooListing:
    """Parts of ROWS_PER_PART table rows; a safetensors file no row names is listed as a rejection."""
    fs, root = storage.filesystem(uri)
    found = {p: info for p, info in fs.find(root, detail=True).items() if relative(root, p)}
    files = {relative(root, p): info for p, info in found.items()}
    outside = {relative(root, p) for p, info in found.items() if storage.link_outside(root, p, info)}
    if PROPERTIES_FILE in outside:
        raise ZooError(f"{uri}: {PROPERTIES_FILE} is a symbolic link out of the zoo: not read")
    if PROPERTIES_FILE not in files:
        raise ZooError(
            f"{uri}: {PROPERTIES_FILE} is missing (one row per checkpoint, see docs/zoo-formats.md)"
        )
    try:
        text = fs.cat_file(posixpath.join(root, PROPERTIES_FILE)).decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text)))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ZooError(f"{uri}: {PROPERTIES_FILE} is not a readable CSV table: {e}") from None
    if not rows or "file" not in rows[0]:
        raise ZooError(f"{uri}: {PROPERTIES_FILE} needs a 'file' column and one row per checkpoint")

    entries = []
    named = set()
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        rel = (row.get("file") or "").strip().lstrip("/")
        named.add(rel)
        cid = (row.get("id") or "").strip() or (rel[: -len(SUFFIX)] if rel.endswith(SUFFIX) else rel)
        reason = None
        if not rel:
            reason, cid = f"{PROPERTIES_FILE} line {number} names no file", cid or f"line-{number}"
        elif rel in outside or ".." in rel.split("/"):
            reason = f"{printable(rel)} leads out of the zoo: not read"
        elif rel not in files:
            reason = f"{printable(rel)} is missing"
        entries.append({"id": printable(cid), "row": row, "file": rel, "reason": reason})
    for rel in natural_order(r for r in files if r.endswith(SUFFIX) and r not in named):
        reason = f"{printable(rel)} has no row in {PROPERTIES_FILE}: no properties to learn from"
        entries.append({"id": printable(rel[: -len(SUFFIX)]), "row": None, "file": rel, "reason": reason})

    parts = [
        {
            "uri": uri,
            "format": "safetensors",
            "options": {},
            "entries": entries[i : i + ROWS_PER_PART],
            "ids": [e["id"] for e in entries[i : i + ROWS_PER_PART]],
        }
        for i in range(0, len(entries), ROWS_PER_PART)
    ]
    mark_duplicates(parts, lambda part, i: f"{PROPERTIES_FILE} ({part['entries'][i]['file']})")
    stamps = [
        (rel, int(info["size"]), file_stamp(info))
        for rel, info in files.items()
        if rel == PROPERTIES_FILE or rel.endswith(SUFFIX)
    ]
    return ZooListing(
        uri=uri,
        format="safetensors",
        options={},
        parts=parts,
        num_listed=len(entries),
        fingerprint=fingerprint("safetensors", {}, stamps),
    )


def read_part(part: dict) -> Iterator[Checkpoint | Rejection]:
    """One Checkpoint or Rejection per listed entry, in listing order."""
    fs, root = storage.filesystem(part["uri"])
    rejected_at = {int(i): reason for i, reason in part.get("rejections", [])}
    for i, entry in enumerate(part["entries"]):
        reason = rejected_at.get(i) or entry["reason"]
        if reason:
            yield Rejection(entry["id"], reason)
            continue
        try:
            blob = fs.cat_file(posixpath.join(root, entry["file"]))
        except FileNotFoundError:
            yield Rejection(entry["id"], f"{printable(entry['file'])} is missing")
            continue
        except IsADirectoryError:
            yield Rejection(entry["id"], f"{printable(entry['file'])} is a folder, not a safetensors file")
            continue
        item = _checkpoint(entry, blob)
        if isinstance(item, Checkpoint):
            reason = validate(item)
            item = Rejection(item.id, reason) if reason else item
        yield item


def _state_dict(blob: bytes, where: str) -> dict[str, np.ndarray] | str:
    """The file's floating-point tensors as float32, in module order, or why the file cannot be read."""
    import safetensors
    import torch
    from safetensors.torch import load

    try:
        tensors = load(blob)  # any float dtype, bfloat16 included (numpy has none)
        header_length = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_length]).get("__metadata__") or {}
    except (safetensors.SafetensorError, ValueError, UnicodeDecodeError) as e:
        return f"{where} is not a readable safetensors file: {first_line(e)}"
    weights = {k: v for k, v in tensors.items() if v.is_floating_point()}
    if any(v.is_complex() for v in tensors.values()):
        return f"{where} holds complex tensors, not weights"
    order = natural_order(weights)
    if ORDER_KEY in metadata:
        try:
            modules = json.loads(metadata[ORDER_KEY])
            rank = {str(m): i for i, m in enumerate(modules)}
        except (ValueError, TypeError):
            return f"{where}: metadata {ORDER_KEY!r} is not a JSON list of module names"
        order.sort(key=lambda k: rank.get(k.rpartition(".")[0], len(rank)))
    return {k: weights[k].to(torch.float32).numpy() for k in order}


def _checkpoint(entry: dict, blob: bytes) -> Checkpoint | Rejection:
    where, row = printable(entry["file"]), entry["row"]
    state = _state_dict(blob, where)
    if isinstance(state, str):
        return Rejection(entry["id"], state)
    layers = layers_from_state_dict(state)
    if isinstance(layers, str):
        return Rejection(entry["id"], f"{where}: {layers}")
    properties = {}
    for name in PROPERTIES:
        text = (row.get(name) or "").strip()
        if text:
            try:
                properties[name] = float(text)
            except ValueError:
                return Rejection(entry["id"], f"{PROPERTIES_FILE}: {name} {text!r} is not a number")
    hyperparameters = {
        k: _value(v) for k, v in row.items() if k and k not in KNOWN_COLUMNS and v not in (None, "")
    }
    architecture = (row.get("architecture") or "").strip()
    if architecture:
        hyperparameters["architecture"] = architecture
    return Checkpoint(
        id=entry["id"],
        family=(row.get("family") or "").strip() or "unknown",
        dataset=(row.get("dataset") or "").strip() or "unknown",
        layers=layers,
        properties=with_generalization_gap(properties),
        hyperparameters=hyperparameters,
    )


def _value(text: str):
    """A table cell as a number where it reads as one."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def write_zoo(uri: str, checkpoints: Iterable[Checkpoint]) -> None:
    """Write checkpoints as ``<id>.safetensors`` (their layers' state dict, module order in the metadata)
    and ``properties.csv``. Raises ZooError for no checkpoints or an id that is not a plain file name."""
    from safetensors.numpy import save

    items = list(checkpoints)
    if not items:
        raise ZooError(f"no checkpoints to write to {uri}")
    rows = []
    for c in items:
        if not c.id or "/" in c.id or c.id in (".", ".."):
            raise ZooError(f"checkpoint id {c.id!r} cannot name a file")
        state, modules = {}, []
        for layer in c.layers:
            if layer.kind == "norm_stats":  # back to PyTorch's buffers of the norm module
                module = layer.name.removesuffix(".running")
                state[f"{module}.running_mean"] = np.ascontiguousarray(layer.weight[:, 0])
                state[f"{module}.running_var"] = np.ascontiguousarray(layer.weight[:, 1])
                continue
            modules.append(layer.name)
            state[f"{layer.name}.weight"] = np.ascontiguousarray(layer.weight, dtype=np.float32)
            if layer.bias is not None:
                state[f"{layer.name}.bias"] = np.ascontiguousarray(layer.bias, dtype=np.float32)
        blob = save(state, metadata={ORDER_KEY: json.dumps(modules)})
        storage.write_bytes_atomic(storage.join(uri, f"{c.id}{SUFFIX}"), blob)
        row = {"file": f"{c.id}{SUFFIX}", "id": c.id, "family": c.family, "dataset": c.dataset}
        row |= {k: v for k, v in c.properties.items() if k != "generalization_gap" and not math.isnan(v)}
        row |= {k: v for k, v in c.hyperparameters.items()}
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes_atomic(storage.join(uri, PROPERTIES_FILE), text.getvalue().encode())
