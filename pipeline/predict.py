"""Predict a property for every checkpoint of any zoo with a trained encoder (no Ray needed).

The zoo is streamed checkpoint by checkpoint, chunked with the encoder's chunk size and encoded
in batches, so memory follows the batch, not the zoo.
"""

from __future__ import annotations

import collections
import math
import re
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

from pipeline import storage
from pipeline.chunking import chunk_checkpoint
from pipeline.collate import collate_chunk_records
from pipeline.encoder import SNE, EncoderConfig
from pipeline.evaluation import regression_metrics, scatter_plot, subset_metrics
from pipeline.export import load_encoder_files, load_peers, load_training_ids
from pipeline.zoo import Rejection, ZooListing, open_zoo, read_part

RUN_ID = re.compile(r"^(runs:/)?([0-9a-f]{32})(/encoder)?/?$")


def load_encoder(encoder: str, tracking_uri: str | None = None) -> tuple[SNE, dict]:
    """An encoder from an MLflow run id (or ``runs:/<id>/encoder``) or a folder URI of exported files.

    The meta it returns carries "training_ids" ({id: "train" | "val"}, None for older exports) and "peers"
    (the PeerConsensus of an encoder that reads peer agreement, else None) too.
    """
    m = RUN_ID.match(encoder)
    if m:
        from pipeline import tracking

        with tempfile.TemporaryDirectory() as d:
            local = tracking.download_artifacts(
                tracking.resolve_tracking_uri(tracking_uri), m.group(2), "encoder", d
            )
            state, meta = load_encoder_files(local)
            meta["training_ids"] = load_training_ids(local)
            meta["peers"] = load_peers(local)
    else:
        state, meta = load_encoder_files(encoder)
        meta["training_ids"] = load_training_ids(encoder)
        meta["peers"] = load_peers(encoder)
    # Encoders exported before the embedding norm or the layer statistics existed carry neither key nor layer;
    # those exported before the "sets" summary used STATNN's, and none before the probe summary read probes
    # (nor, before the peer consensus, peer agreement).
    older = {
        "embedding_norm": False,
        "layer_statistics": False,
        "layer_summary": "statnn",
        "probe_summary": False,
        "peer_agreement": False,
    }
    sne = SNE(EncoderConfig(**{**older, **meta["encoder"]}, output="linear"))
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    # Encoders exported before the input scaling read their side inputs through asinh alone: the identity
    # scaling a fresh encoder holds.
    for key, value in sne.state_dict().items():
        if key.split(".")[0] in ("probe_scaling", "peer_scaling"):
            tensors.setdefault(key, value)
    sne.load_state_dict(tensors)
    sne.eval()
    return sne, meta


def _batches(listing: ZooListing, chunk_size: int, batch_size: int, rejected: list) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for item in (item for part in listing.parts for item in read_part(part)):
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
    encoder: str,
    zoo_uri: str,
    *,
    format: str = "auto",
    tracking_uri: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """Predictions for every checkpoint of a zoo, and their scores where true values are known.

    Returns {"rows": [{id, family, dataset, prediction, true, used_in_training}], "metrics",
    "per_subset", "metrics_all", "rejected", "property", "training_ids_known", "same_zoo", "unprobed",
    "without_peers", "unseen_datasets"}. ``used_in_training``
    is "train" or "val" for a checkpoint the encoder was fitted or selected on, "" otherwise. Scores on
    those would flatter the encoder, so "metrics" and "per_subset" (overall, per dataset, per family)
    cover only the others; "metrics_all" covers every checkpoint with a true value. An export made
    before it recorded its training ids scores them all (``training_ids_known`` False). Ids are matched
    as they are; ``same_zoo`` says whether the zoo's listing is the one the encoder was trained on (a
    copy elsewhere, or another zoo whose ids repeat the training zoo's, is not). A tqdm bar on stderr
    when ``progress``.
    """
    from tqdm import tqdm

    sne, meta = load_encoder(encoder, tracking_uri)
    prop, seen = meta["property"], meta["training_ids"] or {}
    links = sne.cfg.layer_statistics and sne.cfg.layer_summary == "links"
    listing = open_zoo(zoo_uri, format)
    same_zoo = listing.fingerprint == meta.get("zoo_fingerprint")
    rows, rejected, unprobed, without_peers = [], [], 0, 0
    with tqdm(
        total=listing.num_listed, unit="ckpt", desc="predict", file=sys.stderr, disable=not progress
    ) as bar:
        for records in _batches(listing, meta["chunk_size"], batch_size, rejected):
            if meta["peers"] is not None:
                for r in records:
                    # A training network is compared with the other training networks, as in training; in
                    # another zoo an id that repeats a training network's is a different network.
                    r["peer"] = meta["peers"].record_features(r, leave_out=same_zoo)
            batch = collate_chunk_records(records, None, meta["normalize"], links=links)
            unprobed += int((batch["probe_present"] == 0).sum())
            without_peers += int((batch["peer_present"] == 0).sum())
            raw = sne(batch)
            pred = (
                torch.sigmoid(raw)
                if meta["loss"] == "bce"
                else raw * meta["target_std"] + meta["target_mean"]
            )
            for r, p in zip(records, pred.tolist(), strict=True):
                true = r.get(prop)
                rows.append(
                    {
                        "id": r["id"],
                        "family": r["family"],
                        "dataset": r["dataset"],
                        "prediction": p,
                        "true": None if true is None or math.isnan(true) else float(true),
                        "used_in_training": seen.get(r["id"], ""),
                    }
                )
            bar.update(len(records))
        bar.update(len(rejected))
    known = [r for r in rows if r["true"] is not None]
    unseen = [r for r in known if not r["used_in_training"]]
    return {
        "rows": rows,
        "metrics": _metrics(unseen),
        "per_subset": _subsets(unseen),
        "metrics_all": _metrics(known),
        "rejected": [{"id": r.id, "reason": r.reason} for r in rejected],
        "property": prop,
        "training_ids_known": meta["training_ids"] is not None,
        "same_zoo": same_zoo,
        # Networks the encoder had to read without a probe (no runnable architecture), when it reads probes.
        "unprobed": unprobed if sne.cfg.probe_summary else 0,
        # Networks it read without peer agreement, when it reads it (README: their level suffers).
        "without_peers": without_peers if sne.cfg.peer_agreement else 0,
        # {dataset: networks} of datasets no training network had, when the encoder reads dataset vectors:
        # it reads them as an unknown dataset.
        "unseen_datasets": dict(
            sorted(
                collections.Counter(
                    r["dataset"] for r in rows if sne.cfg.datasets and r["dataset"] not in sne.cfg.datasets
                ).items()
            )
        ),
    }


def _metrics(rows: list[dict]) -> dict | None:
    if len(rows) < 2:
        return None
    return regression_metrics(np.array([r["prediction"] for r in rows]), np.array([r["true"] for r in rows]))


def _subsets(rows: list[dict]) -> list[dict]:
    if len(rows) < 2:
        return []
    columns = {k: [r[k] for r in rows] for k in ("prediction", "true", "family", "dataset")}
    return subset_metrics(
        np.array(columns["prediction"]), np.array(columns["true"]), columns["family"], columns["dataset"]
    )


def write_predictions(rows: list[dict], uri: str) -> str:
    """The table as CSV at a local path or URI (s3://...); the URI."""
    lines = ["id,family,dataset,prediction,true,used_in_training"]
    for r in rows:
        true = "" if r["true"] is None else f"{r['true']:.6f}"
        lines.append(
            f"{r['id']},{r['family']},{r['dataset']},{r['prediction']:.6f},{true},{r['used_in_training']}"
        )
    storage.write_bytes_atomic(uri, ("\n".join(lines) + "\n").encode())
    return uri


def plot_predictions(result: dict, uri: str) -> str | None:
    """Predicted vs true for the checkpoints the encoder never saw, by family, as a PNG at a path or URI;
    None when fewer than two have a true value."""
    unseen = [r for r in result["rows"] if r["true"] is not None and not r["used_in_training"]]
    if len(unseen) < 2:
        return None
    m = result["metrics"]
    title = f"{result['property']}: tau={m['kendall_tau']:.3f}, {m['n']} unseen networks"
    pred, true = (np.array([r[k] for r in unseen]) for k in ("prediction", "true"))
    return scatter_plot(pred, true, [r["family"] for r in unseen], uri, title)
