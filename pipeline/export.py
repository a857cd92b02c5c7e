"""The trained encoder as a portable artifact: ``encoder.safetensors`` + ``encoder.json`` (no pickle),
and ``training_ids.json``.

``encoder.json`` holds what prediction needs besides the weights: the encoder sizes, chunk size,
weight normalisation, the property, the loss and the target scaling. ``training_ids.json`` lists the
checkpoints the encoder was fitted on ("train") and selected on ("val"), so that prediction can score
only networks it never saw; a separate file because it grows with the zoo. An encoder that reads peer
agreement also carries its training networks' consensus on the probes (pipeline.probes.PeerConsensus):
``peers.safetensors`` (the summed class probabilities per dataset) and ``peers.json`` (which networks they are).

``encoder.json`` records the export's ``format_version``; a folder of another version is refused by name
rather than read as something it is not. Bump it whenever what an export holds, or how it is read,
changes.
"""

from __future__ import annotations

import json
import os

import numpy as np

WEIGHTS_FILE = "encoder.safetensors"
META_FILE = "encoder.json"
TRAINING_IDS_FILE = "training_ids.json"
PEERS_FILE = "peers.safetensors"
PEERS_META_FILE = "peers.json"
FORMAT_VERSION = 1


def save_encoder(
    directory: str,
    state: dict[str, np.ndarray],
    meta: dict,
    training_ids: dict[str, list[str]] | None = None,
    peers=None,
) -> str:
    """``training_ids``: {"train": [...], "val": [...]}, the checkpoint ids used in fitting and selection
    (training always writes them; None writes no file, and prediction then scores every network).
    ``peers``: the PeerConsensus an encoder reading peer agreement was trained with."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(directory, WEIGHTS_FILE))
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump({**meta, "format_version": FORMAT_VERSION}, f, indent=2, sort_keys=True)
    if training_ids is not None:
        with open(os.path.join(directory, TRAINING_IDS_FILE), "w") as f:
            json.dump({k: sorted(v) for k, v in training_ids.items()}, f)
    if peers is not None:
        arrays, peers_meta = peers.state()
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()}, os.path.join(directory, PEERS_FILE)
        )
        with open(os.path.join(directory, PEERS_META_FILE), "w") as f:
            json.dump(peers_meta, f, sort_keys=True)
    return directory


def load_encoder_files(uri: str) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict, meta) from a folder URI (local or s3://) holding the two files, of this FORMAT_VERSION."""
    from safetensors.numpy import load

    from pipeline import storage

    fs, path = storage.filesystem(storage.join(uri, META_FILE))
    if not fs.exists(path):
        raise FileNotFoundError(f"no {META_FILE} under {uri}: not an exported encoder")
    meta = json.loads(fs.cat_file(path))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        made_by = "a later" if isinstance(version, int) and version > FORMAT_VERSION else "an earlier"
        raise ValueError(
            f"the encoder under {uri} was exported by {made_by} version of this code (export format "
            f"{version or 'unversioned'}; this code reads {FORMAT_VERSION}): predict with the version "
            "that trained it, or train it again"
        )
    wfs, wpath = storage.filesystem(storage.join(uri, WEIGHTS_FILE))
    if not wfs.exists(wpath):
        raise FileNotFoundError(f"no {WEIGHTS_FILE} under {uri}")
    return load(wfs.cat_file(wpath)), meta


def load_training_ids(uri: str) -> dict[str, str] | None:
    """{checkpoint id: "train" | "val"} of an exported encoder; None for an export saved without them."""
    from pipeline import storage

    fs, path = storage.filesystem(storage.join(uri, TRAINING_IDS_FILE))
    if not fs.exists(path):
        return None
    return {i: split for split, ids in json.loads(fs.cat_file(path)).items() for i in ids}


def load_peers(uri: str):
    """The PeerConsensus exported with an encoder, or None where there is none."""
    from safetensors.numpy import load

    from pipeline import storage
    from pipeline.probes import PeerConsensus

    fs, path = storage.filesystem(storage.join(uri, PEERS_META_FILE))
    if not fs.exists(path):
        return None
    afs, apath = storage.filesystem(storage.join(uri, PEERS_FILE))
    return PeerConsensus.from_state(load(afs.cat_file(apath)), json.loads(fs.cat_file(path)))
