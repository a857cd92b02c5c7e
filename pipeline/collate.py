"""Chunk records → one packed batch of tensors for the encoder (no padding across layers or checkpoints).

Shapes: B checkpoints, Lt layers in the batch, T weight chunks, U bias chunks, C chunk size, E the largest
element size in the batch (element vectors are zero-padded to E).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.baselines import layer_summary, link_summaries
from pipeline.chunking import SCHEMA_VERSION
from pipeline.side_inputs import NETWORK_INPUTS
from pipeline.zoo.checkpoint import LAYER_KINDS

NORMALIZATIONS = ("fan_in", "none")


def records_from_batch(batch: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[dict[str, Any]]:
    """A list of record dicts from either a list of records or a dict of columns (Ray Data numpy batches)."""
    if isinstance(batch, Mapping):
        if "id" not in batch:
            raise ValueError(f"a batch of columns needs an 'id' column, got {sorted(batch)}")
        return [{key: column[i] for key, column in batch.items()} for i in range(len(batch["id"]))]
    return [dict(record) for record in batch]


def _target(record: Mapping[str, Any], property_name: str) -> float:
    value = record.get(property_name)
    if value is None or math.isnan(float(value)):
        raise ValueError(f"checkpoint {str(record['id'])!r} has no value for property {property_name!r}")
    return float(value)


def _side_vectors(
    records: Sequence[Mapping[str, Any]], key: str, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(B, width) float32 of each record's optional fixed-width vector ``key`` (zeros where it is null or
    missing) and (B,) float32 with 1 where it is present."""
    vectors = np.zeros((len(records), width), dtype=np.float32)
    present = np.zeros(len(records), dtype=np.float32)
    for b, record in enumerate(records):
        vector = record.get(key)
        if vector is None:
            continue
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (width,):
            raise ValueError(
                f"checkpoint {str(record['id'])!r}: {key} of shape {vector.shape}, expected ({width},)"
            )
        vectors[b], present[b] = vector, 1.0
    return vectors, present


def collate_chunk_records(
    batch: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    property_name: str | None = "test_accuracy",
    normalize: str = "fan_in",
    layer_summaries: bool = False,
) -> dict[str, Any]:
    """Pack chunk records into tensors (see module docstring for shapes).

    Returns weight_chunks (T,C,E) float32, weight_mask (T,C) bool, weight_layer (T,) long,
    bias_chunks (U,C,1), bias_mask (U,C), bias_layer (U,), per layer (Lt,) long layer_kind, layer_depth,
    layer_element_size, layer_checkpoint and float layer_fan_in, for every network input of
    pipeline.side_inputs.NETWORK_INPUTS (probe, peer) its vectors (B, width) float (zeros where a record has
    none) and <key>_present (B,) float (1 where it has one), with ``layer_summaries`` two summaries of each
    layer: layer_summary (Lt, LAYER_SUMMARY) float (baselines.layer_summary of its normalised weights and
    bias: quantiles of values, magnitudes, row and column RMS and bias, and the layer's sizes) and
    layer_links (Lt, LINK_SUMMARY) float (baselines.link_summaries of the raw weights: how each layer's
    unit gains chain with the layers below and above; off by default, as only the encoders that read them
    should pay for them: they are most of the collate time of a batch), target (B,) float
    (omitted when property_name is None), the lists ids, families, datasets, and dataset_present (B,) float
    (ones; training's context dropout zeroes some to hide their dataset from the encoder).
    normalize="fan_in" multiplies each layer's weights and bias by sqrt(fan_in), so weights of any width
    land on a common scale; "none" keeps raw values. A missing or NaN target, mixed chunk sizes, an unknown
    layer kind or schema version raise ValueError.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    records = records_from_batch(batch)
    if not records:
        raise ValueError("cannot collate an empty batch")
    chunk_sizes = {int(r["chunk_size"]) for r in records}
    if len(chunk_sizes) != 1:
        raise ValueError(f"a batch must share one chunk size, got {sorted(chunk_sizes)}")
    (c,) = chunk_sizes

    weights, weight_masks, weight_layer = [], [], []
    biases, bias_masks, bias_layer = [], [], []
    kinds, depths, elem_sizes, fan_ins, owners, summaries = [], [], [], [], [], []
    link_rows = []
    for b, record in enumerate(records):
        if int(record["schema_version"]) != SCHEMA_VERSION:
            raise ValueError(
                f"checkpoint {str(record['id'])!r}: schema version {int(record['schema_version'])}, "
                f"this code reads {SCHEMA_VERSION}"
            )
        raw_weights = []
        for i, kind in enumerate(record["layer_kind"]):
            if str(kind) not in LAYER_KINDS:
                raise ValueError(f"checkpoint {str(record['id'])!r}: unknown layer kind {str(kind)!r}")
            g = len(kinds)
            e = int(record["layer_element_size"][i])
            fan_in = float(record["layer_fan_in"][i])
            scale = np.float32(math.sqrt(fan_in)) if normalize == "fan_in" else np.float32(1.0)
            w = np.asarray(record["weight_chunks"][i], dtype=np.float32).reshape(-1, c, e) * scale
            wm = np.asarray(record["weight_mask"][i], dtype=bool).reshape(-1, c)
            weights.append(w)
            weight_masks.append(wm)
            weight_layer.append(np.full(w.shape[0], g, dtype=np.int64))
            bm = np.asarray(record["bias_mask"][i], dtype=bool).reshape(-1, c)
            bias = np.asarray(record["bias_chunks"][i], dtype=np.float32).reshape(-1, c, 1) * scale
            biases.append(bias)
            bias_masks.append(bm)
            if layer_summaries:
                # Chunks hold the weights output unit by output unit, so the real ones are (out, in, e)
                # again (a norm layer's channels are (C, 1, 1), a norm_stats layer's (C, 1, 2)).
                shape = [int(d) for d in record["layer_weight_shape"][i]]
                in_units = max(1, math.prod(shape[1:]) // e)
                layer_weights = w[wm].reshape(-1, in_units, e)
                summaries.append(layer_summary(layer_weights, bias[bm]))
                raw_weights.append(layer_weights / scale)
            bias_layer.append(np.full(bm.shape[0], g, dtype=np.int64))
            kinds.append(LAYER_KINDS.index(str(kind)))
            depths.append(int(record["layer_index"][i]))
            elem_sizes.append(e)
            fan_ins.append(fan_in)
            owners.append(b)
        if layer_summaries:
            link_rows.extend(link_summaries(raw_weights))

    e_max = max(elem_sizes)
    packed = np.zeros((sum(w.shape[0] for w in weights), c, e_max), dtype=np.float32)
    start = 0
    for w in weights:
        packed[start : start + w.shape[0], :, : w.shape[2]] = w
        start += w.shape[0]

    out: dict[str, Any] = {
        "weight_chunks": torch.from_numpy(packed),
        "weight_mask": torch.from_numpy(np.concatenate(weight_masks)),
        "weight_layer": torch.from_numpy(np.concatenate(weight_layer)),
        "bias_chunks": torch.from_numpy(np.concatenate(biases)),
        "bias_mask": torch.from_numpy(np.concatenate(bias_masks)),
        "bias_layer": torch.from_numpy(np.concatenate(bias_layer)),
        "layer_kind": torch.tensor(kinds, dtype=torch.long),
        "layer_depth": torch.tensor(depths, dtype=torch.long),
        "layer_element_size": torch.tensor(elem_sizes, dtype=torch.long),
        "layer_fan_in": torch.tensor(fan_ins, dtype=torch.float32),
        "layer_checkpoint": torch.tensor(owners, dtype=torch.long),
        "ids": [str(r["id"]) for r in records],
        "families": [str(r["family"]) for r in records],
        "datasets": [str(r["dataset"]) for r in records],
        # 0 hides a network's dataset from an encoder that reads it (training's context dropout).
        "dataset_present": torch.ones(len(records), dtype=torch.float32),
    }
    for entry in NETWORK_INPUTS:
        vectors, present = _side_vectors(records, entry.key, entry.width)
        out[entry.key], out[f"{entry.key}_present"] = torch.from_numpy(vectors), torch.from_numpy(present)
    if layer_summaries:
        out["layer_summary"] = torch.from_numpy(np.stack(summaries).astype(np.float32))
        out["layer_links"] = torch.from_numpy(np.stack(link_rows).astype(np.float32))
    if property_name is not None:
        out["target"] = torch.tensor([_target(r, property_name) for r in records], dtype=torch.float32)
    return out
