"""The trained encoder as a portable artifact: ``encoder.safetensors`` + ``encoder.json`` (no pickle).

``encoder.json`` holds what prediction needs besides the weights: the encoder sizes, chunk size,
weight normalisation, the property, the loss and the target scaling.
"""

from __future__ import annotations

import json
import os

import numpy as np

WEIGHTS_FILE = "encoder.safetensors"
META_FILE = "encoder.json"


def save_encoder(directory: str, state: dict[str, np.ndarray], meta: dict) -> str:
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(directory, WEIGHTS_FILE))
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return directory


def load_encoder_files(uri: str) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict, meta) from a folder URI (local or s3://) holding the two files."""
    from safetensors.numpy import load

    from pipeline import storage

    fs, path = storage.filesystem(storage.join(uri, META_FILE))
    if not fs.exists(path):
        raise FileNotFoundError(f"no {META_FILE} under {uri}: not an exported encoder")
    meta = json.loads(fs.cat_file(path))
    wfs, wpath = storage.filesystem(storage.join(uri, WEIGHTS_FILE))
    if not wfs.exists(wpath):
        raise FileNotFoundError(f"no {WEIGHTS_FILE} under {uri}")
    return load(wfs.cat_file(wpath)), meta
