"""Checkpoint ⇄ chunk record: pad-chunk each layer's weights and biases (numpy; docs/chunk-records.md).

A layer's weight (PyTorch layout) is read as a row-major list of *elements*, ordered by (out, in), so one
output neuron's weights sit together: a linear weight is one scalar per element, a conv1d kernel one k-vector,
a conv2d kernel one (kh*kw)-vector, a norm layer's scale one scalar per channel, a norm_stats layer one
(mean, variance) pair per channel (pipeline.zoo.checkpoint.element_size). The element list is zero-padded
to a multiple of the chunk size C and split into chunks of C elements; a mask marks the real elements.
Biases are chunked the same way (scalars).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.zoo.checkpoint import Checkpoint, Layer, element_size, fan_in

# 2: the probe column (pipeline.probes). 3: the probe_probabilities column. 4: the norm, norm_stats and
# embedding layer kinds. 5: the run column; property names no longer among the hyperparameters.
SCHEMA_VERSION = 5

# Property columns every record carries (None where the checkpoint lacks the property).
PROPERTY_COLUMNS = (
    "test_accuracy",
    "train_accuracy",
    "generalization_gap",
    "test_loss",
    "train_loss",
    "frequency",
    "amplitude",
    "fit_error",
)

# Per-layer list columns; weight/bias chunks are flat so that Parquet stores them as plain float lists.
CHUNK_RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("family", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("run", pa.string(), nullable=False),
        pa.field("num_params", pa.int64(), nullable=False),
        pa.field("chunk_size", pa.int32(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("layer_name", pa.list_(pa.string())),
        pa.field("layer_kind", pa.list_(pa.string())),
        pa.field("layer_index", pa.list_(pa.int32())),
        pa.field("layer_weight_shape", pa.list_(pa.list_(pa.int64()))),
        pa.field("layer_element_size", pa.list_(pa.int32())),
        pa.field("layer_fan_in", pa.list_(pa.int64())),
        # large_list: one Arrow block of big checkpoints can exceed 2**31 floats.
        pa.field("weight_chunks", pa.list_(pa.large_list(pa.float32()))),
        pa.field("weight_mask", pa.list_(pa.large_list(pa.bool_()))),
        pa.field("bias_chunks", pa.list_(pa.list_(pa.float32()))),
        pa.field("bias_mask", pa.list_(pa.list_(pa.bool_()))),
        *[pa.field(name, pa.float64()) for name in PROPERTY_COLUMNS],
        pa.field("hyperparameters", pa.string()),
        # What the network computes on fixed data-free probes (pipeline.probes); null when the checkpoint
        # names no runnable architecture.
        pa.field("probe", pa.list_(pa.float32())),
        # A classifier's softmax on those probes, flattened (probes x classes, half precision: 10 KB for
        # 512 probes and 10 classes), for its agreement with the training networks of its dataset
        # (pipeline.probes.PeerConsensus); null without a probe or for a single output.
        pa.field("probe_probabilities", pa.list_(pa.float16())),
    ],
    metadata={"chunk_record_schema_version": str(SCHEMA_VERSION)},
)
# How chunk records are written to Parquet: dictionary encoding only where values repeat (names, kinds).
# Tried on the weight floats it finds nothing to share, falls back and still writes the pages: writing
# took 4x as long and the files grew 1.5x (0.28 against 0.07 s per 1,000 demo-size records, 62 against
# 42 MB per 2,048; BENCHMARKS.md).
PARQUET_WRITE_OPTIONS = {"use_dictionary": ["family", "dataset", "run", "layer_name", "layer_kind"]}
# The columns cut from a network's weights; every other column (its identity, properties, probes) says
# something a function-preserving permutation of the weights keeps.
WEIGHT_COLUMNS = tuple(
    f.name for f in CHUNK_RECORD_SCHEMA if f.name.startswith(("layer_", "weight_", "bias_"))
)


def records_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Chunk records (``chunk_checkpoint``'s dicts) as an Arrow table of ``CHUNK_RECORD_SCHEMA``; a key a
    row lacks is null. Built column by column: the same table as ``pa.Table.from_pylist``, which spent six
    times as long walking the rows (0.18 s against 0.03 s per 1,000 demo-size records), a third of
    prepare's work per checkpoint once the probes are skipped (BENCHMARKS.md)."""
    return pa.Table.from_arrays(
        [pa.array([row.get(f.name) for row in rows], type=f.type) for f in CHUNK_RECORD_SCHEMA],
        schema=CHUNK_RECORD_SCHEMA,
    )


def pad_chunk(values: np.ndarray, chunk_size: int, elem_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat float32 of n_chunks*C*E values and a bool mask of n_chunks*C (True = real element)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    num_elements = flat.size // elem_size
    num_chunks = -(-num_elements // chunk_size)
    padded = np.zeros(num_chunks * chunk_size * elem_size, dtype=np.float32)
    padded[: flat.size] = flat
    mask = np.zeros(num_chunks * chunk_size, dtype=bool)
    mask[:num_elements] = True
    return padded, mask


def chunk_checkpoint(checkpoint: Checkpoint, chunk_size: int) -> dict[str, Any]:
    """One chunk record (a dict of Arrow-friendly values matching CHUNK_RECORD_SCHEMA) for a checkpoint.

    Its probe columns are null: chunking reads weights and never runs a network. Prepare's probe stage
    (``pipeline.probes.probe_table``) fills them in, with its own resources.

    Raises ValueError for a chunk size below 1, an unknown layer kind, a wrong weight rank, an empty
    weight or a bias that does not match the layer's output units.
    """
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk size must be a positive integer, got {chunk_size!r}")
    if not checkpoint.layers:
        raise ValueError(f"checkpoint {checkpoint.id!r} has no layers")
    names, kinds, shapes, elem_sizes, fan_ins = [], [], [], [], []
    weight_chunks, weight_masks, bias_chunks, bias_masks = [], [], [], []
    for layer in checkpoint.layers:
        shape = tuple(int(d) for d in layer.weight.shape)
        where = f"checkpoint {checkpoint.id!r}, layer {layer.name!r}"
        try:
            elem = element_size(layer.kind, shape)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if layer.weight.size == 0:
            raise ValueError(f"{where}: empty weight of shape {shape}")
        w, wm = pad_chunk(layer.weight, chunk_size, elem)
        if layer.bias is None:
            b, bm = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool)
        elif tuple(layer.bias.shape) != (shape[0],):
            raise ValueError(
                f"{where}: bias shape {tuple(layer.bias.shape)} does not match {shape[0]} outputs"
            )
        else:
            b, bm = pad_chunk(layer.bias, chunk_size, 1)
        names.append(layer.name)
        kinds.append(layer.kind)
        shapes.append(list(shape))
        elem_sizes.append(elem)
        fan_ins.append(fan_in(layer.kind, shape))
        weight_chunks.append(w)
        weight_masks.append(wm)
        bias_chunks.append(b)
        bias_masks.append(bm)
    record: dict[str, Any] = {
        "id": str(checkpoint.id),
        "family": str(checkpoint.family),
        "dataset": str(checkpoint.dataset),
        "run": str(checkpoint.run_id),
        "num_params": int(checkpoint.num_params),
        "chunk_size": int(chunk_size),
        "schema_version": SCHEMA_VERSION,
        "layer_name": names,
        "layer_kind": kinds,
        "layer_index": list(range(len(names))),
        "layer_weight_shape": shapes,
        "layer_element_size": elem_sizes,
        "layer_fan_in": fan_ins,
        "weight_chunks": weight_chunks,
        "weight_mask": weight_masks,
        "bias_chunks": bias_chunks,
        "bias_mask": bias_masks,
    }
    for name in PROPERTY_COLUMNS:
        value = checkpoint.properties.get(name)
        record[name] = None if value is None else float(value)
    # A property a zoo also keeps among its hyperparameters (an INR's frequency: what it was fitted to) would
    # hand the target to any model that reads them; only the property columns carry it.
    hyperparameters = {k: v for k, v in checkpoint.hyperparameters.items() if k not in PROPERTY_COLUMNS}
    record["hyperparameters"] = json.dumps(hyperparameters, sort_keys=True)
    record["probe"] = record["probe_probabilities"] = None  # filled in by prepare's probe stage
    return record


def _unpad(chunks: Any, mask: Any, shape: tuple[int, ...], elem_size: int, where: str) -> np.ndarray:
    values = np.asarray(chunks, dtype=np.float32).reshape(-1, elem_size)
    real = np.asarray(mask, dtype=bool).reshape(-1)
    if values.shape[0] != real.size:
        raise ValueError(f"{where}: {values.shape[0]} chunked elements but a mask of {real.size}")
    count = int(math.prod(shape)) // elem_size
    if int(real.sum()) != count or not real[:count].all():
        raise ValueError(f"{where}: mask marks {int(real.sum())} real elements, shape {shape} needs {count}")
    return values[:count].reshape(shape).copy()


def unchunk_record(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """The exact state dict (``"<layer>.weight"``/``".bias"``, PyTorch layout, float32) of a record.

    Accepts a record as built by chunk_checkpoint or as read back from Parquet / Ray Data (numpy arrays).
    """
    version = int(record["schema_version"])
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"record {record['id']!r}: schema version {version}, this code reads {SCHEMA_VERSION}"
        )
    state: dict[str, np.ndarray] = {}
    for i, name in enumerate(record["layer_name"]):
        name = str(name)
        shape = tuple(int(d) for d in record["layer_weight_shape"][i])
        elem = int(record["layer_element_size"][i])
        where = f"record {record['id']!r}, layer {name!r}"
        state[f"{name}.weight"] = _unpad(
            record["weight_chunks"][i], record["weight_mask"][i], shape, elem, where
        )
        if len(record["bias_mask"][i]) > 0:
            state[f"{name}.bias"] = _unpad(
                record["bias_chunks"][i], record["bias_mask"][i], shape[:1], 1, where
            )
    return state


def checkpoint_from_record(record: dict[str, Any]) -> Checkpoint:
    """The Checkpoint (layers, family, dataset, properties, hyperparameters) a record was made from."""
    state = unchunk_record(record)
    layers = []
    for name, kind in zip(record["layer_name"], record["layer_kind"], strict=True):
        name = str(name)
        layers.append(Layer(name, str(kind), state[f"{name}.weight"], state.get(f"{name}.bias")))
    properties = {
        name: float(record[name])
        for name in PROPERTY_COLUMNS
        if record.get(name) is not None and not math.isnan(float(record[name]))
    }
    hyper = record.get("hyperparameters")
    return Checkpoint(
        id=str(record["id"]),
        family=str(record["family"]),
        dataset=str(record["dataset"]),
        layers=layers,
        properties=properties,
        hyperparameters=json.loads(hyper) if hyper else {},
        run="" if record.get("run") in (None, record["id"]) else str(record["run"]),
    )
