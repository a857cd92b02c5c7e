"""The native zoo format (version 1): safetensors shards + a Parquet manifest, no pickle anywhere.

Layout under the zoo URI (see docs/native-format.md)::

    zoo.json                       {"format": "sne-native", "version": 1}
    manifest/<shard>.parquet       one row per checkpoint of the shard; written last (commit marker)
    shards/<shard>.safetensors     tensors "<checkpoint id>/<layer name>.weight" and ".bias"

A part is one shard. A shard without its manifest part is invisible (an interrupted writer).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import re
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.zoo.checkpoint import Checkpoint, Layer, Rejection, validate, with_generalization_gap
from pipeline.zoo.listing import (
    ZooError,
    ZooListing,
    file_stamp,
    fingerprint,
    mark_duplicates,
    parse_json,
    printable,
    relative,
)

FORMAT_NAME = "sne-native"
VERSION = 1
PROPERTY_PREFIX = "property."
FIXED_COLUMNS = ("id", "shard", "family", "dataset", "num_params", "layers", "hyperparameters", "sha256")
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Manifests are fetched in batches: concurrent GETs on S3, bounded memory on the driver.
MANIFEST_BATCH = 256


def tensor_digest(layers: list[Layer]) -> str:
    """sha256 over a checkpoint's float32 tensors (per layer: weight, then bias) as stored in its shard."""
    h = hashlib.sha256()
    for layer in layers:
        for arr in (layer.weight, layer.bias):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return h.hexdigest()


def _manifest_uri(zoo_uri: str, shard: str) -> str:
    return storage.join(zoo_uri, "manifest", f"{shard}.parquet")


def _shard_uri(zoo_uri: str, shard: str) -> str:
    return storage.join(zoo_uri, "shards", f"{shard}.safetensors")


def _check_zoo_json(zoo_uri: str) -> None:
    fs, path = storage.filesystem(storage.join(zoo_uri, "zoo.json"))
    try:
        meta = parse_json(fs.cat_file(path))
    except FileNotFoundError:
        raise ZooError(f"{zoo_uri} is not a native zoo: zoo.json is missing") from None
    except IsADirectoryError:
        raise ZooError(f"{zoo_uri}: zoo.json is a folder, not a file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ZooError(f"{zoo_uri}: zoo.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ZooError(f"{zoo_uri}: zoo.json names format {meta!r}, expected {FORMAT_NAME!r}")
    if meta.get("version") != VERSION:
        raise ZooError(
            f"{zoo_uri}: native format version {meta.get('version')!r} is not supported "
            f"(this reader knows version {VERSION})"
        )


# --- reading ---------------------------------------------------------------------------------------


def _link_out(rel: str, outside: dict[str, str]) -> str | None:
    """``rel`` or the first folder above it that is a link out of the zoo (reading through it would leave the
    zoo); None when there is none. ``find`` does not descend into linked folders, so their files go unlisted."""
    steps = rel.split("/")
    for k in range(1, len(steps) + 1):
        if (prefix := "/".join(steps[:k])) in outside:
            return prefix
    return None


def _id_column(blob: bytes) -> list[str]:
    """The manifest part's ids; ValueError when the column cannot hold ids (another type, or nulls)."""
    column = pq.read_table(io.BytesIO(blob), columns=["id"]).column("id")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"column id holds {column.type}, not strings")
    if column.null_count:
        raise ValueError(f"{column.null_count} row(s) without an id")
    return column.to_pylist()


def list_zoo(uri: str) -> ZooListing:
    """One part per committed shard (one whose manifest part exists); duplicate ids are marked."""
    fs, root = storage.filesystem(uri)
    # withdirs: a folder where a manifest part belongs is named as such, not passed over.
    found = {p: info for p, info in fs.find(root, withdirs=True, detail=True).items() if relative(root, p)}
    files = {relative(root, p): info for p, info in found.items()}
    # Files that are links out of the zoo (or lie under such a folder) are named, never read.
    outside = {
        relative(root, p): t for p, info in found.items() if (t := storage.link_outside(root, p, info))
    }
    for name in ("zoo.json", "manifest"):
        if name in outside:
            raise ZooError(f"{uri}: {name} is a symbolic link to {outside[name]}, outside the zoo: not read")
    _check_zoo_json(uri)
    manifests = sorted(
        rel[len("manifest/") : -len(".parquet")]
        for rel in files
        if rel.startswith("manifest/") and rel.endswith(".parquet") and rel.count("/") == 1
    )
    if not manifests:
        raise ZooError(f"empty zoo: {uri} has no manifest parts (manifest/*.parquet)")

    parts: list[dict] = []
    for start in range(0, len(manifests), MANIFEST_BATCH):
        batch = manifests[start : start + MANIFEST_BATCH]
        paths = [posixpath.join(root, "manifest", f"{s}.parquet") for s in batch]
        readable = [
            p
            for p in paths
            if relative(root, p) not in outside and files[relative(root, p)]["type"] != "directory"
        ]
        blobs = fs.cat(readable, on_error="return")
        for shard, path in zip(batch, paths, strict=True):
            part = {"uri": uri, "format": "native", "options": {}, "shard": shard}
            blob = blobs.get(path)
            shown = printable(shard)
            escaping = [
                link
                for f in (f"manifest/{shard}.parquet", f"shards/{shard}.safetensors")
                if (link := _link_out(f, outside))
            ]
            try:
                if escaping:
                    raise ZooError(
                        f"{printable(escaping[0])} is a symbolic link to {outside[escaping[0]]}, outside the zoo: "
                        "not read"
                    )
                if files[f"manifest/{shard}.parquet"]["type"] == "directory":
                    raise ZooError(f"manifest/{shown}.parquet is a folder, not a file")
                if blob is None:
                    blob = FileNotFoundError(path)
                if isinstance(blob, BaseException):
                    raise blob
                ids = _id_column(blob)
            except ZooError as e:  # a link out of the zoo or a folder: the shard is rejected whole, unread
                part["ids"] = [f"{shown}/*"]
                part["manifest_error"] = str(e)
            except Exception as e:  # an unreadable manifest cannot list its checkpoints: one entry
                part["ids"] = [f"{shown}/*"]
                part["manifest_error"] = f"manifest part manifest/{shown}.parquet is unreadable: {e}"
            else:
                part["ids"] = ids
            parts.append(part)

    parts = [part for part in parts if part["ids"]]  # a manifest part with no rows lists nothing
    mark_duplicates(parts, lambda part, i: f"shard {printable(part['shard'])}")
    committed = {"zoo.json"} | {f"manifest/{s}.parquet" for s in manifests}
    committed |= {f"shards/{s}.safetensors" for s in manifests}
    stamps = [(rel, int(info["size"]), file_stamp(info)) for rel, info in files.items() if rel in committed]
    return ZooListing(
        uri=uri,
        format="native",
        options={},
        parts=parts,
        num_listed=sum(len(part["ids"]) for part in parts),
        fingerprint=fingerprint("native", {}, stamps),
    )


def read_part(part: dict) -> Iterator[Checkpoint | Rejection]:
    """Checkpoints of one shard, in manifest order; the whole shard is rejected when unreadable."""
    import safetensors.numpy

    ids: list[str] = part["ids"]
    shard = part["shard"]
    shown = printable(shard)

    def reject_all(reason: str) -> Iterator[Rejection]:
        for cid in ids:
            yield Rejection(cid, reason)

    if part.get("manifest_error"):
        yield from reject_all(part["manifest_error"])
        return
    fs, manifest_path = storage.filesystem(_manifest_uri(part["uri"], shard))
    rows: dict = {}
    try:
        # A repeated id is read from its first row; its later listings are rejected as duplicates.
        for row in pq.read_table(io.BytesIO(fs.cat_file(manifest_path))).to_pylist():
            rows.setdefault(row["id"], row)
    except Exception as e:
        yield from reject_all(f"manifest part manifest/{shown}.parquet is unreadable: {e}")
        return
    _, shard_path = storage.filesystem(_shard_uri(part["uri"], shard))
    try:
        blob = fs.cat_file(shard_path)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a file named "shards"
        yield from reject_all(f"shard file shards/{shown}.safetensors is missing")
        return
    except IsADirectoryError:
        yield from reject_all(f"shard file shards/{shown}.safetensors is a folder, not a file")
        return
    try:
        tensors = safetensors.numpy.load(blob)
    except Exception as e:
        yield from reject_all(f"shard file shards/{shown}.safetensors is corrupt or truncated: {e}")
        return
    del blob

    rejected_at = {int(i): reason for i, reason in part.get("rejections", [])}
    for i, cid in enumerate(ids):
        if i in rejected_at:
            yield Rejection(cid, rejected_at[i])
            continue
        row = rows.get(cid)
        if row is None:
            yield Rejection(cid, f"no longer in manifest/{shown}.parquet (the zoo changed after listing)")
            continue
        try:
            item = _checkpoint_from_row(row, tensors, shown)
        except (KeyError, TypeError, ValueError) as e:
            yield Rejection(cid, f"manifest row in shard {shown} is malformed: {e}")
            continue
        if isinstance(item, Checkpoint):
            reason = validate(item)
            if reason:
                item = Rejection(cid, reason)
        yield item


def _checkpoint_from_row(row: dict, tensors: dict[str, np.ndarray], shard: str) -> Checkpoint | Rejection:
    """The checkpoint of one manifest row; TypeError / ValueError / KeyError when the row is malformed."""
    for name in ("id", "family", "dataset", "layers"):
        if not isinstance(row[name], str):
            raise TypeError(f"{name} is {type(row[name]).__name__} {row[name]!r}, not a string")
    if not isinstance(row["num_params"], int) or isinstance(row["num_params"], bool):
        raise TypeError(
            f"num_params is {type(row['num_params']).__name__} {row['num_params']!r}, not an integer"
        )
    hyperparameters = parse_json(row["hyperparameters"] or "{}")
    if not isinstance(hyperparameters, dict):
        raise TypeError(f"hyperparameters is {type(hyperparameters).__name__}, not a JSON object")
    cid = row["id"]
    layers: list[Layer] = []
    for spec in parse_json(row["layers"]):
        arrays = []
        for what, shape in (("weight", spec["weight_shape"]), ("bias", spec.get("bias_shape"))):
            if shape is None:
                arrays.append(None)
                continue
            key = f"{cid}/{spec['name']}.{what}"
            if key not in tensors:
                return Rejection(cid, f"tensor {key!r} is missing from shards/{shard}.safetensors")
            arr = tensors[key]
            if tuple(arr.shape) != tuple(shape):
                return Rejection(
                    cid, f"tensor {key!r} has shape {tuple(arr.shape)}, the manifest says {tuple(shape)}"
                )
            arrays.append(np.array(arr, dtype=np.float32))  # a writable copy, like every other reader's
        layers.append(Layer(spec["name"], spec["kind"], arrays[0], arrays[1]))
    properties = {
        name[len(PROPERTY_PREFIX) :]: float(value)
        for name, value in row.items()
        if name.startswith(PROPERTY_PREFIX) and value is not None and not math.isnan(value)
    }
    # Object storage can hand back damaged bytes that still parse; the digest catches them.
    if row.get("sha256") and tensor_digest(layers) != row["sha256"]:
        return Rejection(
            cid, f"tensor bytes in shards/{shard}.safetensors do not match the manifest's sha256 (corrupt)"
        )
    run = row.get("run")
    if run is not None and not isinstance(run, str):
        raise TypeError(f"run is {type(run).__name__} {run!r}, not a string")
    checkpoint = Checkpoint(
        id=cid,
        family=row["family"],
        dataset=row["dataset"],
        layers=layers,
        properties=with_generalization_gap(properties),
        hyperparameters=hyperparameters,
        run=run or "",
    )
    if row["num_params"] != checkpoint.num_params:
        return Rejection(
            cid, f"parameter count {checkpoint.num_params} contradicts the manifest's {row['num_params']}"
        )
    return checkpoint


# --- writing ---------------------------------------------------------------------------------------


def _ensure_zoo_json(zoo_uri: str) -> None:
    fs, path = storage.filesystem(storage.join(zoo_uri, "zoo.json"))
    if fs.exists(path):
        _check_zoo_json(zoo_uri)
        return
    storage.write_bytes_atomic(
        storage.join(zoo_uri, "zoo.json"), json.dumps({"format": FORMAT_NAME, "version": VERSION}).encode()
    )


def _manifest_table(shard_name: str, checkpoints: list[Checkpoint]) -> pa.Table:
    property_names = sorted({name for c in checkpoints for name in c.properties})
    # The optional run column appears only where some checkpoint is one step of a longer run.
    with_runs = any(c.run for c in checkpoints)
    columns: dict[str, list] = {name: [] for name in FIXED_COLUMNS}
    columns |= {"run": []} if with_runs else {}
    columns |= {PROPERTY_PREFIX + name: [] for name in property_names}
    for c in checkpoints:
        columns["id"].append(c.id)
        columns["shard"].append(shard_name)
        columns["family"].append(c.family)
        columns["dataset"].append(c.dataset)
        columns["num_params"].append(c.num_params)
        layers = [
            {
                "name": layer.name,
                "kind": layer.kind,
                "weight_shape": list(layer.weight.shape),
                "bias_shape": None if layer.bias is None else list(layer.bias.shape),
            }
            for layer in c.layers
        ]
        columns["layers"].append(json.dumps(layers))
        columns["hyperparameters"].append(json.dumps(c.hyperparameters, sort_keys=True))
        columns["sha256"].append(tensor_digest(c.layers))
        if with_runs:
            columns["run"].append(c.run or None)
        for name in property_names:
            value = c.properties.get(name)
            columns[PROPERTY_PREFIX + name].append(None if value is None else float(value))
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("shard", pa.string()),
            ("family", pa.string()),
            ("dataset", pa.string()),
            ("num_params", pa.int64()),
            ("layers", pa.string()),
            ("hyperparameters", pa.string()),
            ("sha256", pa.string()),
            *([("run", pa.string())] if with_runs else []),
            *[(PROPERTY_PREFIX + name, pa.float64()) for name in property_names],
        ],
        metadata={"format": FORMAT_NAME, "version": str(VERSION)},
    )
    return pa.Table.from_pydict(columns, schema=schema)


def write_shard(zoo_uri: str, shard_name: str, checkpoints: list[Checkpoint]) -> None:
    """Write ``shards/<shard>.safetensors`` then ``manifest/<shard>.parquet`` (last: the commit marker).

    Rewriting a shard replaces it. Raises ZooError for an unusable name, no checkpoints, or an id
    or layer name used twice within the shard. Weights are stored as float32.
    """
    import safetensors.numpy

    if not SHARD_NAME.match(shard_name):
        raise ZooError(f"shard name {shard_name!r} must match {SHARD_NAME.pattern}")
    if not checkpoints:
        raise ZooError(f"shard {shard_name!r}: no checkpoints to write")
    tensors: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for c in checkpoints:
        if c.id in seen:
            raise ZooError(f"shard {shard_name!r}: checkpoint id {c.id!r} appears twice")
        seen.add(c.id)
        for layer in c.layers:
            for what, arr in (("weight", layer.weight), ("bias", layer.bias)):
                if arr is None:
                    continue
                key = f"{c.id}/{layer.name}.{what}"
                if key in tensors:
                    raise ZooError(f"checkpoint {c.id!r}: layer name {layer.name!r} appears twice")
                tensors[key] = np.ascontiguousarray(arr, dtype=np.float32)
    _ensure_zoo_json(zoo_uri)
    # One metadata key: safetensors writes a multi-key map in random order, and identical shards should
    # have identical bytes (same ETag on S3).
    blob = safetensors.numpy.save(tensors, metadata={"format": f"{FORMAT_NAME}/{VERSION}"})
    storage.write_bytes_atomic(_shard_uri(zoo_uri, shard_name), blob)
    buf = io.BytesIO()
    pq.write_table(_manifest_table(shard_name, checkpoints), buf)
    storage.write_bytes_atomic(_manifest_uri(zoo_uri, shard_name), buf.getvalue())


def finished_shards(zoo_uri: str) -> set[str]:
    """Names of the shards whose manifest part exists (committed shards)."""
    fs, path = storage.filesystem(storage.join(zoo_uri, "manifest"))
    if not fs.isdir(path):
        return set()
    names = (posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    return {n[: -len(".parquet")] for n in names if n.endswith(".parquet")}


def write_zoo(
    zoo_uri: str,
    checkpoints: Iterable[Checkpoint],
    shard_size: int = 256,
    max_shard_bytes: int = 256 * 2**20,
) -> None:
    """Write a new native zoo as shards ``shard-000000``, … of at most ``shard_size`` checkpoints
    (fewer when their weights pass ``max_shard_bytes``). Streams: holds one shard in memory.

    Raises ZooError if the URI already holds a native zoo's shards, for no checkpoints, or a repeated id.
    """
    if shard_size < 1:
        raise ZooError(f"shard_size must be at least 1, got {shard_size}")
    if finished_shards(zoo_uri):
        raise ZooError(f"{zoo_uri} already holds a native zoo; write to a new URI")
    seen: set[str] = set()
    batch: list[Checkpoint] = []
    batch_bytes = 0
    index = 0
    for c in checkpoints:
        if c.id in seen:
            raise ZooError(f"checkpoint id {c.id!r} appears twice; ids must be unique within a zoo")
        seen.add(c.id)
        batch.append(c)
        batch_bytes += 4 * c.num_params
        if len(batch) >= shard_size or batch_bytes >= max_shard_bytes:
            write_shard(zoo_uri, f"shard-{index:06d}", batch)
            index, batch, batch_bytes = index + 1, [], 0
    if batch:
        write_shard(zoo_uri, f"shard-{index:06d}", batch)
    elif index == 0:
        raise ZooError(f"no checkpoints to write to {zoo_uri}")
