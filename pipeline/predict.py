"""Predict a property for every checkpoint of any zoo with a trained encoder (no Ray needed).

The zoo is streamed checkpoint by checkpoint, chunked with the encoder's chunk size and encoded
in batches, so memory follows the batch, not the zoo.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.chunking import chunk_checkpoint
from pipeline.collate import collate_chunk_records
from pipeline.encoder import SNE, EncoderConfig
from pipeline.evaluation import regression_metrics
from pipeline.export import load_encoder_files
from pipeline.zoo import Rejection, read_zoo

RUN_ID = re.compile(r"^(runs:/)?([0-9a-f]{32})(/encoder)?/?$")


def load_encoder(encoder: str, tracking_uri: str | None = None) -> tuple[SNE, dict]:
    """An encoder from an MLflow run id (or ``runs:/<id>/encoder``) or a folder URI of exported files."""
    m = RUN_ID.match(encoder)
    if m:
        from pipeline import tracking

        with tempfile.TemporaryDirectory() as d:
            local = tracking.download_artifacts(
                tracking.resolve_tracking_uri(tracking_uri), m.group(2), "encoder", d
            )
            state, meta = load_encoder_files(local)
    else:
        state, meta = load_encoder_files(encoder)
    # Encoders exported before the embedding norm or the layer statistics existed carry neither key nor layer;
    # those exported before the "sets" summary used STATNN's.
    older = {"embedding_norm": False, "layer_statistics": False, "layer_summary": "statnn"}
    sne = SNE(EncoderConfig(**{**older, **meta["encoder"]}, output="linear"))
    sne.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    sne.eval()
    return sne, meta


def _batches(
    zoo_uri: str, format: str, chunk_size: int, batch_size: int, rejected: list
) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for item in read_zoo(zoo_uri, format):
        if isinstance(item, Rejection):
            rejected.append(item)
            continue
        batch.append(chunk_checkpoint(item, chunk_size))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def predict_zoo(
    encoder: str, zoo_uri: str, *, format: str = "auto", tracking_uri: str | None = None, batch_size: int = 32
) -> dict:
    """{"rows": [{id, family, dataset, prediction, true}], "metrics": {...} | None, "rejected": [...], "property"}."""
    sne, meta = load_encoder(encoder, tracking_uri)
    prop = meta["property"]
    rows, rejected = [], []
    for records in _batches(zoo_uri, format, meta["chunk_size"], batch_size, rejected):
        links = sne.cfg.layer_statistics and sne.cfg.layer_summary == "links"
        batch = collate_chunk_records(records, None, meta["normalize"], links=links)
        raw = sne(batch)
        pred = torch.sigmoid(raw) if meta["loss"] == "bce" else raw * meta["target_std"] + meta["target_mean"]
        for r, p in zip(records, pred.tolist(), strict=True):
            true = r.get(prop)
            rows.append(
                {
                    "id": r["id"],
                    "family": r["family"],
                    "dataset": r["dataset"],
                    "prediction": p,
                    "true": None if true is None or math.isnan(true) else float(true),
                }
            )
    known = [r for r in rows if r["true"] is not None]
    metrics = None
    if len(known) >= 2:
        metrics = regression_metrics(
            np.array([r["prediction"] for r in known]), np.array([r["true"] for r in known])
        )
    return {
        "rows": rows,
        "metrics": metrics,
        "rejected": [{"id": r.id, "reason": r.reason} for r in rejected],
        "property": prop,
    }


def write_predictions(rows: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("id,family,dataset,prediction,true\n")
        for r in rows:
            true = "" if r["true"] is None else f"{r['true']:.6f}"
            f.write(f"{r['id']},{r['family']},{r['dataset']},{r['prediction']:.6f},{true}\n")
    return path
