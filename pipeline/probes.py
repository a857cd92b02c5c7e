"""Data-free function probes: what a network computes on fixed random inputs, as a fixed-width vector.

The weights fix the function, and the function fixes most of what SNE predicts (a classifier's accuracy
on its own training data ranks its test accuracy at τ 0.91 on the `small` zoo), but reading the
function off weight statistics takes more training networks than a zoo has. Running the network
reads it directly. The probes hold no data: white Gaussian noise and smooth noise (Gaussian noise on a
coarse grid, upsampled) in the network's input shape, the same for every network of that shape, so
the vector depends on the weights and the architecture alone.

A network can be probed when its checkpoint names a runnable architecture (``hyperparameters
["architecture"]``, which every zoo built by ``jobs/make_zoo.py`` carries); other checkpoints get no
probe vector and SNE reads their weights only.

Per probe set (white, smooth), with f the network's outputs on the K probes:
- how far f moves under an input perturbation of 1% and 10% of the probes' scale, relative to how far
  it spreads over the probes (a roughness profile: for a sine network, about its frequency);
- log of that spread;
- for classifiers (two or more outputs): the share of probes whose top class survives the 10%
  perturbation; quantiles (10/50/90%) of the top softmax probability and of the entropy (over log of
  the class count); the shares of the three most predicted classes. Zero for a single output.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

PROBES_PER_SET = 256
PROBE_SETS = ("white", "smooth")
_SCALES = (0.01, 0.1)
_QUANTILES = (0.1, 0.5, 0.9)
_TOP_CLASSES = 3
PER_SET = len(_SCALES) + 1 + 1 + 2 * len(_QUANTILES) + _TOP_CLASSES
PROBE_FEATURES = PER_SET * len(PROBE_SETS)
_PROBE_SEED = 20241
_SMOOTH_GRID = 4  # coarse grid points per spatial axis before upsampling


def runnable_architecture(hyperparameters: dict[str, Any]) -> dict[str, Any] | None:
    """The architecture dict a checkpoint's hyperparameters name, or None when they name none."""
    arch = hyperparameters.get("architecture")
    if isinstance(arch, str):
        try:
            arch = json.loads(arch)
        except json.JSONDecodeError:
            return None
    if not isinstance(arch, dict) or "ops" not in arch or "input_shape" not in arch:
        return None
    return arch


@functools.lru_cache(maxsize=16)
def probe_inputs(input_shape: tuple[int, ...]):
    """({set name: (PROBES_PER_SET, *input_shape) float32 tensor}, the perturbation noise of the same shape),
    fixed by _PROBE_SEED and the shape."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(_PROBE_SEED)
    white = torch.randn(PROBES_PER_SET, *input_shape, generator=g)
    spatial = input_shape[1:]
    if not spatial:  # a vector input (an INR's coordinate): nothing to smooth over
        smooth = torch.randn(PROBES_PER_SET, *input_shape, generator=g)
    else:
        channels = input_shape[0]
        coarse = torch.randn(PROBES_PER_SET, channels, *(min(_SMOOTH_GRID, s) for s in spatial), generator=g)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        smooth = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)
        smooth = smooth / smooth.std()
    noise = torch.randn(PROBES_PER_SET, *input_shape, generator=g)
    return {"white": white, "smooth": smooth}, noise


def _set_features(module, x, noise) -> np.ndarray:
    import torch

    out = np.zeros(PER_SET, dtype=np.float32)
    f = module(x).reshape(len(x), -1).double()
    spread = float((f - f.mean(0)).norm(dim=1).mean()) + 1e-12
    for i, scale in enumerate(_SCALES):
        moved = module(x + scale * noise).reshape(len(x), -1).double()  # the last, 10%, is kept below
        out[i] = float((moved - f).norm(dim=1).mean()) / spread
    k = len(_SCALES)
    out[k] = np.log(spread)
    classes = f.shape[1]
    if classes >= 2:
        p = torch.softmax(f, dim=1)
        top = p.argmax(dim=1)
        out[k + 1] = float((moved.argmax(dim=1) == top).double().mean())
        q = torch.tensor(_QUANTILES, dtype=torch.float64)
        entropy = -(p * p.clamp_min(1e-300).log()).sum(dim=1) / np.log(classes)
        out[k + 2 : k + 2 + len(_QUANTILES)] = torch.quantile(p.max(dim=1).values, q).numpy()
        out[k + 2 + len(_QUANTILES) : k + 2 + 2 * len(_QUANTILES)] = torch.quantile(entropy, q).numpy()
        shares = np.sort(np.bincount(top.numpy(), minlength=classes) / len(top))[::-1][:_TOP_CLASSES]
        out[PER_SET - len(shares) :] = shares
    return out


def probe_summary(checkpoint) -> np.ndarray | None:
    """(PROBE_FEATURES,) float32 for a checkpoint with a runnable architecture, else None (also when the
    named architecture does not fit the checkpoint's layers).

    Non-finite values (a diverged network) become 0 and log-spreads are clipped to ±50, so one broken
    network cannot poison a batch.
    """
    arch = runnable_architecture(checkpoint.hyperparameters)
    if arch is None:
        return None
    import torch

    from pipeline import families

    try:
        module = families.build_module(arch)
        families.load_checkpoint_into(module, checkpoint)
        module.eval()
        inputs, noise = probe_inputs(tuple(int(d) for d in arch["input_shape"]))
        with torch.no_grad():
            parts = [_set_features(module, inputs[name], noise) for name in PROBE_SETS]
    except (ValueError, RuntimeError, KeyError, TypeError):
        # An architecture its weights do not fit (or one this code cannot build) is not runnable: the
        # network keeps its weights and goes unprobed, which prepare's probe count shows.
        return None
    vector = np.nan_to_num(np.concatenate(parts), nan=0.0, posinf=50.0, neginf=-50.0)
    return np.clip(vector, -50.0, 50.0).astype(np.float32)
