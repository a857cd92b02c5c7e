"""The Small CNN Zoo layout (Unterthiner et al. 2020): one folder per dataset holding

    weights.npy      float matrix, one row per checkpoint, columns as in layout.csv (Keras order)
    metrics.csv.gz   one row per checkpoint, aligned with weights.npy: config.*, modeldir, step, metrics
    layout.csv       varname,start_idx,end_idx,size,shape: where each variable sits in a row

The zoo URI is a dataset folder or a parent of several. ``weights.npy`` is never loaded whole: its
header is parsed here and a part (a row range of one folder) reads only its byte range.
Checkpoint ids are ``"<dataset>/<modeldir>/step<step>"``; step 86 is a run's final checkpoint.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import math
import os
import posixpath
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

from pipeline import storage
from pipeline.zoo.checkpoint import Checkpoint, Layer, Rejection, validate, with_generalization_gap
from pipeline.zoo.listing import (
    SMALLCNNZOO_FILES,
    ZooError,
    ZooListing,
    file_stamp,
    fingerprint,
    mark_duplicates,
    printable,
    relative,
)

FINAL_STEP = 86
# A part reads one contiguous byte range of weights.npy: big enough for few requests, small in memory.
PART_BYTES = 32 * 2**20
STANDARD_PROPERTIES = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "size", "shape")
# The published architecture in PyTorch layout: (kind, weight shape, bias shape) per layer; 4970 params.
SMALLCNN_SPEC = (
    ("conv2d", (16, 1, 3, 3), (16,)),
    ("conv2d", (16, 16, 3, 3), (16,)),
    ("conv2d", (16, 16, 3, 3), (16,)),
    ("linear", (10, 16), (10,)),
)
KIND_OF_KERNEL_NDIM = {4: "conv2d", 3: "conv1d", 2: "linear"}
# A 2-D float matrix's .npy header is under 128 bytes; numpy itself refuses headers over 10 000 as unsafe.
# A larger length field is damage, and must not decide how much is fetched.
NPY_HEADER_MAX = 2**16
# Metrics CSVs deflate 3-10x. One that inflates past both this ratio and this size is a decompression bomb,
# refused before pandas parses it (parsing costs several times the text in memory).
METRICS_MAX_RATIO = 64
METRICS_MAX_SMALL = 64 * 2**20
KERAS_NAME = {"conv2d": "conv2d", "conv1d": "conv1d", "linear": "dense"}


# --- Keras ⇄ PyTorch layout ------------------------------------------------------------------------


def keras_to_torch(kind: str, kernel: np.ndarray) -> np.ndarray:
    """conv2d (kh, kw, in, out) → (out, in, kh, kw); conv1d (k, in, out) → (out, in, k); dense (in, out) → (out, in)."""
    axes = {"conv2d": (3, 2, 0, 1), "conv1d": (2, 1, 0), "linear": (1, 0)}[kind]
    return np.ascontiguousarray(kernel.transpose(axes))


def torch_to_keras(kind: str, weight: np.ndarray) -> np.ndarray:
    """Inverse of :func:`keras_to_torch`."""
    axes = {"conv2d": (2, 3, 1, 0), "conv1d": (2, 1, 0), "linear": (1, 0)}[kind]
    return np.ascontiguousarray(weight.transpose(axes))


def _torch_shape(kind: str, keras_shape: tuple[int, ...]) -> tuple[int, ...]:
    axes = {"conv2d": (3, 2, 0, 1), "conv1d": (2, 1, 0), "linear": (1, 0)}[kind]
    return tuple(keras_shape[a] for a in axes)


# --- reading the three files -----------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, ...]:
    value = ast.literal_eval(text.strip())
    if isinstance(value, int):
        value = (value,)
    if not isinstance(value, tuple) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(f"not a shape: {text!r}")
    return value


def read_layout(layout_uri: str) -> tuple[list[dict], int]:
    """(layers in computation order, number of columns) from layout.csv; ZooError when inconsistent.

    Each layer: {"name", "kind", "kernel": [start, end, keras shape], "bias": [start, end, shape] | None}.
    """
    fs, path = storage.filesystem(layout_uri)
    try:
        text = fs.cat_file(path).decode()
    except UnicodeDecodeError as e:
        raise ZooError(f"{layout_uri} is not UTF-8 text ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in LAYOUT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ZooError(f"{layout_uri}: missing column(s) {', '.join(missing)}")
    scopes: dict[str, dict] = {}
    end_prev = 0
    for n, row in enumerate(reader, start=2):
        where = f"{layout_uri} line {n} ({row['varname']})"
        if blank := [c for c in LAYOUT_COLUMNS if row.get(c) is None]:  # a short (cut) row
            raise ZooError(f"{where}: missing value(s) for {', '.join(blank)}")
        try:
            start, end, size = int(row["start_idx"]), int(row["end_idx"]), int(row["size"])
            shape = _parse_shape(row["shape"])
        except (ValueError, SyntaxError) as e:
            raise ZooError(f"{where}: unreadable value: {e}") from None
        if math.prod(shape) != size or end - start != size:
            raise ZooError(
                f"{where}: parameter count contradicts itself: size {size}, shape {shape} "
                f"({math.prod(shape)}), end - start {end - start}"
            )
        if start != end_prev:
            raise ZooError(f"{where}: starts at column {start}, expected {end_prev} (gap or overlap)")
        end_prev = end
        scope, _, leaf = row["varname"].rpartition("/")
        leaf = leaf.split(":")[0]
        if leaf not in ("kernel", "bias"):
            raise ZooError(f"{where}: unsupported variable {leaf!r}; only kernel and bias are known")
        layer = scopes.setdefault(scope, {"name": scope.rsplit("/", 1)[-1], "kernel": None, "bias": None})
        if layer[leaf] is not None:
            raise ZooError(f"{where}: a second {leaf} for {scope}")
        layer[leaf] = [start, end, list(shape)]
    layers = []
    for scope, layer in scopes.items():
        if layer["kernel"] is None:
            raise ZooError(f"{layout_uri}: {scope} has a bias but no kernel")
        kind = KIND_OF_KERNEL_NDIM.get(len(layer["kernel"][2]))
        if kind is None:
            raise ZooError(
                f"{layout_uri}: {scope} kernel shape {layer['kernel'][2]} is not a dense/conv kernel"
            )
        if layer["bias"] is not None and layer["bias"][2] != [layer["kernel"][2][-1]]:
            raise ZooError(f"{layout_uri}: {scope} bias shape {layer['bias'][2]} does not match its kernel")
        layers.append({**layer, "kind": kind})
    if not layers:
        raise ZooError(f"{layout_uri}: no variables listed")
    return layers, end_prev


def read_npy_header(weights_uri: str) -> dict:
    """{"rows", "cols", "dtype", "offset"} of a 2-D C-order float .npy file, read from its first bytes only."""
    fs, path = storage.filesystem(weights_uri)
    head = fs.cat_file(path, start=0, end=16)
    try:
        version = np.lib.format.read_magic(io.BytesIO(head))
    except ValueError as e:
        raise ZooError(f"{weights_uri}: not a .npy file ({e})") from None
    length_bytes = 2 if version == (1, 0) else 4
    header_len = int.from_bytes(head[8 : 8 + length_bytes], "little")
    if header_len > NPY_HEADER_MAX:
        raise ZooError(
            f"{weights_uri}: its .npy header claims {header_len} bytes, more than the {NPY_HEADER_MAX} any "
            "weights matrix needs (damaged)"
        )
    prefix = io.BytesIO(fs.cat_file(path, start=0, end=8 + length_bytes + header_len))
    np.lib.format.read_magic(prefix)
    try:
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(prefix)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(prefix)
    except ValueError as e:
        raise ZooError(f"{weights_uri}: unreadable .npy header ({e})") from None
    if len(shape) != 2 or fortran_order or dtype.kind != "f":
        raise ZooError(
            f"{weights_uri}: expected a 2-D C-order float matrix, got shape {shape}, dtype {dtype}, "
            f"fortran_order={fortran_order}"
        )
    return {"rows": shape[0], "cols": shape[1], "dtype": dtype.str, "offset": prefix.tell()}


def _python_values(series: pd.Series) -> list:
    """Plain Python scalars (JSON-able), None for missing."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in series.tolist()]


def _format_step(step) -> str:
    return str(int(step)) if isinstance(step, (int, float)) and float(step).is_integer() else str(step)


def _family(layers: list[dict]) -> str:
    spec = tuple(
        (
            layer["kind"],
            _torch_shape(layer["kind"], tuple(layer["kernel"][2])),
            None if layer["bias"] is None else tuple(layer["bias"][2]),
        )
        for layer in layers
    )
    return "smallcnn" if spec == SMALLCNN_SPEC else "smallcnn-variant"


def _dataset_folders(uri: str) -> list[str]:
    fs, root = storage.filesystem(uri)
    if not fs.exists(root):
        raise ZooError(f"no zoo at {uri}: the path does not exist")
    entries = fs.ls(root, detail=True)
    if any(posixpath.basename(e["name"].rstrip("/")) in SMALLCNNZOO_FILES for e in entries):
        return [root]
    folders = []
    for entry in sorted(entries, key=lambda e: e["name"]):
        if entry.get("islink") and os.path.isdir(entry["name"]):
            if target := storage.link_outside(root, entry["name"], entry):
                name = posixpath.basename(entry["name"].rstrip("/"))
                raise ZooError(f"{uri}: {name} is a symbolic link to {target}, outside the zoo: not read")
            entry = {**entry, "type": "directory"}
        if entry["type"] == "directory":
            names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(entry["name"], detail=False)}
            if names & set(SMALLCNNZOO_FILES):
                folders.append(entry["name"].rstrip("/"))
    if not folders:
        raise ZooError(
            f"{uri}: no Small CNN Zoo dataset folder ({', '.join(SMALLCNNZOO_FILES)}) here or one level below"
        )
    return folders


def list_zoo(uri: str, steps: str = "final") -> ZooListing:
    """Row-range parts over every dataset folder; ZooError when the three files disagree."""
    fs, root = storage.filesystem(uri)
    parts: list[dict] = []
    stamps: list[tuple[str, int, str]] = []
    for folder in _dataset_folders(uri):
        folder_uri = storage.to_uri(fs, folder)
        infos = {posixpath.basename(i["name"].rstrip("/")): i for i in fs.ls(folder, detail=True)}
        missing = [f for f in SMALLCNNZOO_FILES if f not in infos]
        if missing:
            raise ZooError(
                f"{folder_uri}: missing {', '.join(missing)} (a dataset folder needs all three files)"
            )
        for f in SMALLCNNZOO_FILES:
            if target := storage.link_outside(root, infos[f]["name"], infos[f]):
                raise ZooError(f"{folder_uri}: {f} is a symbolic link to {target}, outside the zoo: not read")
            if infos[f]["type"] == "directory" or (
                infos[f].get("islink") and os.path.isdir(infos[f]["name"])
            ):
                raise ZooError(f"{folder_uri}: {f} is a folder, not a file")
        stamps += [
            (relative(root, infos[f]["name"]) or f, int(infos[f]["size"]), file_stamp(infos[f]))
            for f in SMALLCNNZOO_FILES
        ]
        layers, num_columns = read_layout(storage.join(folder_uri, "layout.csv"))
        header = read_npy_header(storage.join(folder_uri, "weights.npy"))
        if header["cols"] != num_columns:
            raise ZooError(
                f"{folder_uri}: weights.npy has {header['cols']} columns but layout.csv ends at column "
                f"{num_columns}"
            )
        metrics = _read_metrics(storage.join(folder_uri, "metrics.csv.gz"))
        if len(metrics) != header["rows"]:
            raise ZooError(
                f"{folder_uri}: weights.npy has {header['rows']} rows but metrics.csv.gz has {len(metrics)}; "
                f"they must be aligned row by row"
            )
        # Fewer bytes than claimed is a truncation (rows past the end are rejected as read); more means the
        # header does not describe the file (a wrong dtype or shape), so no row can be trusted.
        data_bytes = int(infos["weights.npy"]["size"]) - header["offset"]
        claimed = header["rows"] * header["cols"] * np.dtype(header["dtype"]).itemsize
        if data_bytes > claimed:
            raise ZooError(
                f"{folder_uri}: weights.npy holds {data_bytes} bytes after its header, its header claims "
                f"{claimed} ({header['rows']} rows × {header['cols']} columns of {header['dtype']})"
            )
        parts += _folder_parts(uri, folder_uri, steps, layers, header, metrics)
    if not parts:
        raise ZooError(
            f"empty zoo: {uri} has no rows"
            + (f" with step {FINAL_STEP} (use steps='all' for every step)" if steps == "final" else "")
        )

    mark_duplicates(parts, lambda part, i: f"{printable(part['folder'])} row {part['rows'][i]}")
    options = {"steps": steps}
    return ZooListing(
        uri=uri,
        format="smallcnnzoo",
        options=options,
        parts=parts,
        num_listed=sum(len(part["ids"]) for part in parts),
        fingerprint=fingerprint("smallcnnzoo", options, stamps),
    )


def _inflates_past(blob: bytes, limit: int) -> bool:
    """Whether gzip ``blob`` inflates to more than ``limit`` bytes, found out a chunk at a time."""
    total = 0
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
        while chunk := f.read(2**20):
            total += len(chunk)
            if total > limit:
                return True
    return False


def _read_metrics(metrics_uri: str) -> pd.DataFrame:
    fs, path = storage.filesystem(metrics_uri)
    blob = fs.cat_file(path)
    limit = max(METRICS_MAX_SMALL, METRICS_MAX_RATIO * len(blob))
    try:
        bomb = _inflates_past(blob, limit)
        metrics = None if bomb else pd.read_csv(io.BytesIO(blob), compression="gzip", index_col=0)
    except Exception as e:  # gzip/CSV errors come in many types; the zoo is unusable either way
        raise ZooError(f"{metrics_uri}: unreadable ({type(e).__name__}: {e})") from None
    if bomb:
        raise ZooError(
            f"{metrics_uri}: inflates past {limit} bytes from {len(blob)} (a decompression bomb): not parsed"
        )
    missing = [c for c in ("modeldir", "step") if c not in metrics.columns]
    if missing:
        raise ZooError(f"{metrics_uri}: missing column(s) {', '.join(missing)}")
    return metrics.reset_index(drop=True)


def _folder_parts(
    uri: str, folder_uri: str, steps: str, layers: list[dict], header: dict, metrics: pd.DataFrame
) -> list[dict]:
    folder_name = printable(posixpath.basename(folder_uri.rstrip("/")))  # ids must be valid UTF-8
    if "config.dataset" in metrics.columns:
        datasets = [folder_name if d is None else str(d) for d in _python_values(metrics["config.dataset"])]
    else:
        datasets = [folder_name] * len(metrics)
    steps_col = _python_values(metrics["step"])
    modeldirs = [str(m) for m in _python_values(metrics["modeldir"])]
    ids = [f"{d}/{m}/step{_format_step(s)}" for d, m, s in zip(datasets, modeldirs, steps_col, strict=True)]
    selected = [i for i, s in enumerate(steps_col) if steps == "all" or s == FINAL_STEP]

    property_cols, hyper_cols = [], {}
    for col in metrics.columns:
        if col.startswith("config."):
            if col != "config.dataset":
                hyper_cols[col[len("config.") :]] = col
        elif col in ("modeldir", "step"):
            hyper_cols[col] = col
        elif pd.api.types.is_numeric_dtype(metrics[col]) and not pd.api.types.is_bool_dtype(metrics[col]):
            property_cols.append(col)
        else:
            hyper_cols[col] = col
    prop_values = {c: _python_values(metrics[c]) for c in property_cols}
    hyper_values = {k: _python_values(metrics[c]) for k, c in hyper_cols.items()}

    family = _family(layers)
    row_bytes = header["cols"] * np.dtype(header["dtype"]).itemsize
    rows_per_part = max(1, PART_BYTES // max(1, row_bytes))
    parts = []
    for lo in range(0, len(selected), rows_per_part):
        rows = selected[lo : lo + rows_per_part]
        parts.append(
            {
                "uri": uri,
                "format": "smallcnnzoo",
                "options": {"steps": steps},
                "folder": folder_uri,
                "weights": header,
                "layers": layers,
                "family": family,
                "rows": rows,
                "ids": [ids[r] for r in rows],
                "runs": [f"{datasets[r]}/{modeldirs[r]}" for r in rows],
                "datasets": [datasets[r] for r in rows],
                "properties": {c: [v[r] for r in rows] for c, v in prop_values.items()},
                "hyperparameters": {k: [v[r] for r in rows] for k, v in hyper_values.items()},
            }
        )
    return parts


def read_part(part: dict) -> Iterator[Checkpoint | Rejection]:
    """Checkpoints of the part's rows, weights in PyTorch layout; rows past a truncated end are rejected.

    Only the listed rows are fetched: one byte range per run of consecutive rows (so steps="final"
    reads a ninth of the file), all ranges in one ``cat_ranges`` call (concurrent on S3).
    """
    header = part["weights"]
    dtype = np.dtype(header["dtype"])
    cols = header["cols"]
    row_bytes = cols * dtype.itemsize
    rows: list[int] = part["rows"]
    weights_uri = storage.join(part["folder"], "weights.npy")
    fs, path = storage.filesystem(weights_uri)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        for cid in part["ids"]:
            yield Rejection(cid, f"{printable(weights_uri)} is missing")
        return
    runs: list[list[int]] = []  # [first row, last row] of consecutive listed rows
    for row in rows:
        if runs and row == runs[-1][1] + 1:
            runs[-1][1] = row
        else:
            runs.append([row, row])
    # Clamped to the file size: ranges past a truncated end come back short or empty.
    starts = [min(header["offset"] + a * row_bytes, size) for a, _ in runs]
    ends = [min(header["offset"] + (b + 1) * row_bytes, size) for _, b in runs]
    wanted = [k for k in range(len(runs)) if ends[k] > starts[k]]
    fetched = fs.cat_ranges(
        [path] * len(wanted), [starts[k] for k in wanted], [ends[k] for k in wanted], on_error="raise"
    )
    blobs = dict.fromkeys(range(len(runs)), b"") | dict(zip(wanted, fetched, strict=True))
    located: dict[int, tuple[bytes, int]] = {}  # row → (its run's bytes, offset of the row in them)
    for k, (a, b) in enumerate(runs):
        for row in range(a, b + 1):
            located[row] = (blobs[k], (row - a) * row_bytes)

    rejected_at = {int(i): reason for i, reason in part.get("rejections", [])}
    for i, (row, cid) in enumerate(zip(rows, part["ids"], strict=True)):
        if i in rejected_at:
            yield Rejection(cid, rejected_at[i])
            continue
        blob, lo = located[row]
        if lo + row_bytes > len(blob):
            yield Rejection(
                cid,
                f"weights.npy is truncated: row {row} needs bytes up to {header['offset'] + (row + 1) * row_bytes}, "
                f"the file has {size}",
            )
            continue
        vector = np.frombuffer(blob, dtype=dtype, count=cols, offset=lo).astype(np.float32)
        layers = []
        for spec in part["layers"]:
            k0, k1, kshape = spec["kernel"]
            weight = keras_to_torch(spec["kind"], vector[k0:k1].reshape(kshape))
            bias = None
            if spec["bias"] is not None:
                b0, b1, _ = spec["bias"]
                bias = vector[b0:b1].copy()
            layers.append(Layer(spec["name"], spec["kind"], weight, bias))
        properties = {c: float(v[i]) for c, v in part["properties"].items() if v[i] is not None}
        hyperparameters = {k: v[i] for k, v in part["hyperparameters"].items()}
        architecture = _runnable_architecture(part["family"], part["datasets"][i], layers, hyperparameters)
        if architecture is not None:
            hyperparameters["architecture"] = architecture
        checkpoint = Checkpoint(
            id=cid,
            family=part["family"],
            dataset=part["datasets"][i],
            layers=layers,
            properties=with_generalization_gap(properties),
            hyperparameters=hyperparameters,
            run=part["runs"][i],
        )
        reason = validate(checkpoint)
        yield Rejection(cid, reason) if reason else checkpoint


# Input side of the public zoo's datasets (grayscale, one channel); the network pools globally, so any
# size runs, and other datasets are probed at 32.
DATASET_IMAGE_SIZE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32}
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leakyrelu", "silu")


def _runnable_architecture(
    family: str, dataset: str, layers: list[Layer], hyperparameters: dict
) -> str | None:
    """The Small CNN architecture of a run (its activation from ``config.activation``), so the network can
    be probed; the one the checkpoint already names, or None for another layout or an unknown activation."""
    if hyperparameters.get("architecture") or family != "smallcnn":
        return None
    activation = str(hyperparameters.get("activation", "")).lower()
    if activation not in ACTIVATIONS:
        return None
    from pipeline import families
    from pipeline.datasets import IMAGE_DATASETS, IMAGE_SIZE

    size = IMAGE_SIZE if dataset in IMAGE_DATASETS else DATASET_IMAGE_SIZE.get(dataset, 32)
    channels = int(layers[0].weight.shape[1])
    return families.architecture_json(families.smallcnn_architecture(activation, 0.0, (channels, size, size)))


# --- writing ---------------------------------------------------------------------------------------


def _architecture(c: Checkpoint) -> list[tuple]:
    return [
        (layer.kind, tuple(layer.weight.shape), None if layer.bias is None else tuple(layer.bias.shape))
        for layer in c.layers
    ]


def write_zoo(uri: str, checkpoints: Iterable[Checkpoint]) -> None:
    """Write one dataset folder (weights.npy, layout.csv, metrics.csv.gz) as the public zoo lays it out.

    All checkpoints must share one architecture (ZooError otherwise). Layers get Keras names
    (conv2d, conv2d_1, dense, …); each row holds bias then kernel per layer, in Keras order. Optional
    hyperparameters "step" (default 86) and "modeldir" (default the checkpoint id) fill those columns;
    the others become config.* columns. Properties beyond the four standard metrics become extra columns;
    generalization_gap is not stored (the reader recomputes it). Holds the zoo's weights in memory once.
    """
    items = list(checkpoints)
    if not items:
        raise ZooError(f"no checkpoints to write to {uri}")
    arch = _architecture(items[0])
    for c in items:
        if _architecture(c) != arch:
            raise ZooError(
                f"checkpoint {c.id!r} has architecture {_architecture(c)}, unlike {items[0].id!r} ({arch}); "
                f"a Small CNN Zoo folder holds one architecture"
            )
    for layer in items[0].layers:
        if layer.kind not in KERAS_NAME:
            raise ZooError(f"layer {layer.name!r}: kind {layer.kind!r} has no Small CNN Zoo equivalent")

    counts: dict[str, int] = {}
    layout_rows = []
    column = 0
    for layer in items[0].layers:
        base = KERAS_NAME[layer.kind]
        n = counts.get(base, 0)
        counts[base] = n + 1
        scope = f"sequential/{base}" + (f"_{n}" if n else "")
        variables = [] if layer.bias is None else [("bias", tuple(layer.bias.shape))]
        variables.append(("kernel", tuple(torch_to_keras(layer.kind, layer.weight).shape)))
        for leaf, shape in variables:
            size = math.prod(shape)
            layout_rows.append([f"{scope}/{leaf}:0", column, column + size, size, str(shape)])
            column += size

    fs, root = storage.filesystem(uri)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, "weights.npy"), "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": (len(items), column)}
        )
        for c in items:
            pieces = []
            for layer in c.layers:
                if layer.bias is not None:
                    pieces.append(np.asarray(layer.bias, dtype=np.float32).ravel())
                pieces.append(torch_to_keras(layer.kind, np.asarray(layer.weight, dtype=np.float32)).ravel())
            f.write(np.concatenate(pieces).astype("<f4").tobytes())

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LAYOUT_COLUMNS)
    writer.writerows(layout_rows)
    storage.write_bytes_atomic(storage.join(uri, "layout.csv"), buf.getvalue().encode())
    csv_text = _metrics_frame(items).to_csv(index=True)
    storage.write_bytes_atomic(storage.join(uri, "metrics.csv.gz"), gzip.compress(csv_text.encode(), mtime=0))


def _metrics_frame(items: list[Checkpoint]) -> pd.DataFrame:
    def config_key(key: str) -> str:
        return key if key.startswith("config.") else f"config.{key}"

    config_keys = sorted(
        {config_key(k) for c in items for k in c.hyperparameters if k not in ("step", "modeldir", "dataset")}
        | {"config.dataset"}
    )
    extra_props = sorted(
        {p for c in items for p in c.properties if p not in STANDARD_PROPERTIES and p != "generalization_gap"}
    )
    records = []
    for c in items:
        record = {key: None for key in config_keys}
        for k, v in c.hyperparameters.items():
            if k not in ("step", "modeldir", "dataset"):
                record[config_key(k)] = v
        record["config.dataset"] = c.dataset
        record["modeldir"] = c.hyperparameters.get("modeldir", c.id)
        record["step"] = c.hyperparameters.get("step", FINAL_STEP)
        for p in (*STANDARD_PROPERTIES, *extra_props):
            record[p] = c.properties.get(p)
        records.append(record)
    return pd.DataFrame.from_records(
        records, columns=[*config_keys, "modeldir", "step", *STANDARD_PROPERTIES, *extra_props]
    )
