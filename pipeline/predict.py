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
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pipeline import storage
from pipeline.chunking import chunk_checkpoint
from pipeline.collate import collate_chunk_records
from pipeline.encoder import EncoderConfig, build_set_encoder
from pipeline.evaluation import regression_metrics, scatter_plot, subset_metrics
from pipeline.export import load_encoder_files, load_peers, load_training_ids
from pipeline.probes import NO_PROBE, probe_columns
from pipeline.side_inputs import INPUT_WIDTHS, reads_probes
from pipeline.train import RUN_ENCODER_FIELDS
from pipeline.zoo import Rejection, ZooListing, open_zoo, read_part

RUN_ID = re.compile(r"^(runs:/)?([0-9a-f]{32})(/encoder)?/?$")


def load_encoder(encoder: str, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict]:
    """An encoder from an MLflow run id (or ``runs:/<id>/encoder``), a registered model (``models:/NAME/VERSION``,
    ``/latest`` or ``@ALIAS``) or a folder URI of exported files.

    The meta it returns carries "training_ids" ({id: "train" | "val"}, None for an export without them)
    and "peers" (the PeerConsensus of an encoder that reads peer agreement, else None) too.
    """
    m = RUN_ID.match(encoder)
    if m or encoder.startswith("models:/"):
        from pipeline import tracking

        uri = tracking.resolve_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory() as d:
            if m:
                local = tracking.download_artifacts(uri, m.group(2), "encoder", d)
            else:
                local = tracking.download_model(uri, encoder, d)
            state, meta = load_encoder_files(local)
            meta["training_ids"] = load_training_ids(local)
            meta["peers"] = load_peers(local)
    else:
        state, meta = load_encoder_files(encoder)
        meta["training_ids"] = load_training_ids(encoder)
        meta["peers"] = load_peers(encoder)
    recorded = meta["encoder"]
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    missing = [name for name in RUN_ENCODER_FIELDS if name not in recorded]
    if missing:
        raise ValueError(f"encoder {encoder} does not record its {', '.join(missing)}: it cannot be rebuilt")
    cfg = EncoderConfig(**recorded)
    other = {k: cfg.input_widths[k] for k in cfg.side_inputs() if cfg.input_widths[k] != INPUT_WIDTHS.get(k)}
    if other:
        raise ValueError(
            f"encoder {encoder} reads side inputs of other widths than this code computes ("
            + ", ".join(f"{k}: {w}, here {INPUT_WIDTHS.get(k)}" for k, w in other.items())
            + "); predict with the version that trained it, or train it again"
        )
    sne = build_set_encoder(cfg)
    sne.load_state_dict(tensors)
    sne.eval()
    return sne, meta


def _read_batches(listing: ZooListing, batch_size: int, rejected: list) -> Iterator[list]:
    """The zoo's checkpoints in lists of ``batch_size``; rejections go to ``rejected``."""
    batch: list = []
    for item in (item for part in listing.parts for item in read_part(part)):
        if isinstance(item, Rejection):
            rejected.append(item)
            continue
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunked(checkpoints: list, chunk_sizes: list[int], probe: bool) -> dict[int, list[dict]]:
    """{chunk size: chunk records of ``checkpoints``}. The probes run once per network, and only where
    ``probe`` (an encoder reads them): what a network computes does not depend on how its weights are cut,
    so every chunk size carries the same probe columns."""
    probed = [probe_columns(c) if probe else NO_PROBE for c in checkpoints]
    return {
        size: [chunk_checkpoint(c, size) | columns for c, columns in zip(checkpoints, probed, strict=True)]
        for size in sorted(set(chunk_sizes))
    }


class _Member:
    """One encoder of an ensemble, with what it needs to read a batch as its training read it."""

    def __init__(self, encoder: str, tracking_uri: str | None, zoo_fingerprint: str):
        self.uri = encoder
        self.sne, self.meta = load_encoder(encoder, tracking_uri)
        self.seen = self.meta["training_ids"] or {}
        # A training network is compared with the other training networks, as in training; in another zoo an
        # id that repeats a training network's is a different network.
        self.same_zoo = zoo_fingerprint == self.meta.get("zoo_fingerprint")

    def predict(self, records: list[dict]) -> tuple[list[float], dict]:
        """(its prediction per record in the property's units, the collated batch)."""
        peers = self.meta["peers"]
        if peers is not None:
            records = [r | {"peer": peers.record_features(r, leave_out=self.same_zoo)} for r in records]
        batch = collate_chunk_records(
            records, None, self.meta["normalize"], layer_summaries=self.sne.cfg.layer_statistics
        )
        raw = self.sne(batch)
        if self.meta["loss"] == "bce":
            pred = torch.sigmoid(raw)
        else:
            pred = raw * self.meta["target_std"] + self.meta["target_mean"]
        return pred.tolist(), batch


def _load_members(encoders: Sequence[str], tracking_uri: str | None, zoo_fingerprint: str) -> list[_Member]:
    if not encoders:
        raise ValueError("no encoder given")
    members = [_Member(e, tracking_uri, zoo_fingerprint) for e in encoders]
    properties = {m.meta["property"] for m in members}
    if len(properties) > 1:
        named = ", ".join(f"{m.uri} predicts {m.meta['property']}" for m in members)
        raise ValueError(f"an ensemble's encoders must predict one property: {named}")
    return members


def _used_in_training(members: list[_Member], id: str) -> str:
    """A network's mark in the table: "train" where any member was fitted on it, else "val" where any member
    was selected on it, else the empty string."""
    used = {m.seen.get(id, "") for m in members}
    return "train" if "train" in used else "val" if "val" in used else ""


@torch.no_grad()
def predict_zoo(
    encoder: str | Sequence[str],
    zoo_uri: str,
    *,
    format: str = "auto",
    tracking_uri: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """Predictions for every checkpoint of a zoo, and their scores where true values are known.

    ``encoder``: one encoder, or several (an ensemble, e.g. runs of different seeds or settings, or the best
    trials of a sweep) that must predict the same property; a network's prediction is then the mean of
    theirs, in the property's units.

    Returns {"rows": [{id, family, dataset, prediction, true, used_in_training}], "metrics",
    "per_subset", "metrics_all", "members", "rejected", "property", "training_ids_known", "same_zoo",
    "unprobed", "without_peers", "unseen_datasets"}. ``used_in_training``
    is "train" or "val" for a checkpoint an encoder was fitted or selected on, "" otherwise. Scores on
    those would flatter the encoder, so "metrics" and "per_subset" (overall, per dataset, per family)
    cover only the others; "metrics_all" covers every checkpoint with a true value. "members" lists each
    encoder with its own "metrics" on the same networks (a single encoder's are "metrics"). An export made
    before it recorded its training ids scores them all (``training_ids_known`` False). Ids are matched
    as they are; ``same_zoo`` says whether the zoo's listing is the one the encoders were trained on (a
    copy elsewhere, or another zoo whose ids repeat the training zoo's, is not). A tqdm bar on stderr
    when ``progress``.
    """
    from tqdm import tqdm

    listing = open_zoo(zoo_uri, format)
    members = _load_members(
        [encoder] if isinstance(encoder, str) else list(encoder), tracking_uri, listing.fingerprint
    )
    prop = members[0].meta["property"]
    rows, own, rejected = [], [[] for _ in members], []
    # Per network: read without a probe (no runnable architecture) where any member reads probes; without
    # peer agreement by a member that reads it (docs/results.md: their level suffers); as of an unknown dataset by a
    # member with dataset vectors.
    unprobed, without_peers, unknown_dataset = [], [], []
    probed = any(reads_probes(m.sne.cfg.network_inputs) for m in members)
    with tqdm(
        total=listing.num_listed, unit="ckpt", desc="predict", file=sys.stderr, disable=not progress
    ) as bar:
        for checkpoints in _read_batches(listing, batch_size, rejected):
            records = _chunked(checkpoints, [m.meta["chunk_size"] for m in members], probed)
            peerless = np.zeros(len(checkpoints), dtype=bool)
            for m, predictions in zip(members, own, strict=True):
                pred, batch = m.predict(records[m.meta["chunk_size"]])
                predictions.extend(pred)
                if "peer" in m.sne.cfg.network_inputs:
                    peerless |= batch["peer_present"].numpy() == 0
            without_peers.extend(peerless)
            for r in records[members[0].meta["chunk_size"]]:
                true = r.get(prop)
                rows.append(
                    {
                        "id": r["id"],
                        "family": r["family"],
                        "dataset": r["dataset"],
                        "prediction": None,
                        "true": None if true is None or math.isnan(true) else float(true),
                        "used_in_training": _used_in_training(members, r["id"]),
                    }
                )
                unprobed.append(probed and r["probe"] is None)
                unknown_dataset.append(
                    any(m.sne.cfg.datasets and r["dataset"] not in m.sne.cfg.datasets for m in members)
                )
            bar.update(len(checkpoints))
        bar.update(len(rejected))
    for i, row in enumerate(rows):
        row["prediction"] = float(np.mean([predictions[i] for predictions in own]))
    known = [i for i, r in enumerate(rows) if r["true"] is not None]
    unseen = [i for i in known if not rows[i]["used_in_training"]]
    return {
        "rows": rows,
        "metrics": _metrics([rows[i] for i in unseen]),
        "per_subset": _subsets([rows[i] for i in unseen]),
        "metrics_all": _metrics([rows[i] for i in known]),
        "members": [
            {
                "encoder": m.uri,
                "metrics": _metrics([rows[i] | {"prediction": predictions[i]} for i in unseen]),
            }
            for m, predictions in zip(members, own, strict=True)
        ],
        "rejected": [{"id": r.id, "reason": r.reason} for r in rejected],
        "property": prop,
        "training_ids_known": all(m.meta["training_ids"] is not None for m in members),
        "same_zoo": all(m.same_zoo for m in members),
        "unprobed": int(sum(unprobed)),
        "without_peers": int(sum(without_peers)),
        "unseen_datasets": dict(
            sorted(
                collections.Counter(
                    r["dataset"] for r, u in zip(rows, unknown_dataset, strict=True) if u
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
