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

``PeerConsensus`` reads the same runs against each other: how far a classifier agrees, on the probes,
with the training networks of its dataset.
"""

from __future__ import annotations

import collections
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


def _set_features(module, x, noise):
    """(PER_SET,) features of one probe set, and the softmax on it ((K, classes); None for one output)."""
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
        return out, p.float().numpy()
    return out, None


def probe_summary(checkpoint) -> np.ndarray | None:
    """(PROBE_FEATURES,) float32 for a checkpoint with a runnable architecture, else None (also when the
    named architecture does not fit the checkpoint's layers).

    Non-finite values (a diverged network) become 0 and log-spreads are clipped to ±50, so one broken
    network cannot poison a batch.
    """
    run = run_probes(checkpoint)
    return None if run is None else run[0]


def run_probes(checkpoint) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(probe_summary's vector, the class probabilities on the probes) or None where probe_summary is None.

    The probabilities are (len(PROBE_SETS) * PROBES_PER_SET, classes) float32, the sets in PROBE_SETS'
    order, or None for a network with a single output (not a classifier).
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
    vector = np.nan_to_num(np.concatenate([f for f, _ in parts]), nan=0.0, posinf=50.0, neginf=-50.0)
    probabilities = None if parts[0][1] is None else np.concatenate([p for _, p in parts])
    if probabilities is not None:
        # A diverged network's softmax can be NaN; read it as no preference, not as a hole in its peers' sums.
        broken = ~np.isfinite(probabilities).all(axis=1)
        probabilities[broken] = 1.0 / probabilities.shape[1]
    return np.clip(vector, -50.0, 50.0).astype(np.float32), probabilities


PEER_FEATURES = 3 * len(PROBE_SETS)


class PeerConsensus:
    """The mean class probabilities on the probes of a set of reference networks (a run's training
    networks), per group (their dataset) and class count: what accurate networks of one task tend to agree
    on, even on noise inputs, as label-free accuracy estimates from agreement use.

    ``features`` says how far one network agrees with the consensus of its group, per probe set: the share
    of probes whose top class is the consensus's, the mean dot product of the two probability vectors, and
    the mean KL divergence from the consensus. A reference network is compared with the others only (leave
    one out), so it is read as a new network of its group would be. Fitted on training networks alone, like
    a scaler, and kept with the exported encoder: it reads no labels and no network outside the reference.
    """

    def __init__(self, sums: dict[str, np.ndarray] | None = None, members: dict[str, str] | None = None):
        self.sums = dict(sums or {})  # key -> (len(PROBE_SETS) * PROBES_PER_SET, classes) float64 sums
        self.members = dict(members or {})  # reference network id -> key
        self.counts = dict(collections.Counter(self.members.values()))  # key -> reference networks summed

    @staticmethod
    def key(group: str, classes: int) -> str:
        return f"{group}/{classes}"

    def add(self, ids: list[str], groups: list[str], probabilities: list[np.ndarray | None]) -> None:
        """Sum more reference networks in (those without probabilities are skipped), so the consensus of a
        zoo too large to hold is fitted batch by batch."""
        for i, g, p in zip(ids, groups, probabilities, strict=True):
            if p is None:
                continue
            key = self.key(str(g), p.shape[1])
            self.sums[key] = self.sums.get(key, 0.0) + p.astype(np.float64)
            self.members[str(i)] = key
            self.counts[key] = self.counts.get(key, 0) + 1

    @classmethod
    def fit(cls, ids: list[str], groups: list[str], probabilities: list[np.ndarray | None]) -> PeerConsensus:
        consensus = cls()
        consensus.add(ids, groups, probabilities)
        return consensus

    def features(
        self, id: str, group: str, probabilities: np.ndarray | None, leave_out: bool = True
    ) -> np.ndarray | None:
        """(PEER_FEATURES,) float32, or None without probabilities or without another network to compare.

        ``leave_out``: a reference network's id is compared with the others only. Pass False for networks
        of another zoo, whose ids may repeat the reference's without being the same networks.
        """
        if probabilities is None:
            return None
        key = self.key(str(group), probabilities.shape[1])
        total, count = self.sums.get(key), self.counts.get(key, 0)
        p = probabilities.astype(np.float64)
        if leave_out and self.members.get(str(id)) == key:
            total, count = total - p, count - 1
        if total is None or count < 1:
            return None
        consensus = total / count
        out = np.zeros(PEER_FEATURES, dtype=np.float32)
        per_set = PROBES_PER_SET
        for k in range(len(PROBE_SETS)):
            own, c = p[k * per_set : (k + 1) * per_set], consensus[k * per_set : (k + 1) * per_set]
            out[3 * k] = np.mean(own.argmax(1) == c.argmax(1))
            out[3 * k + 1] = np.mean((own * c).sum(1))
            out[3 * k + 2] = np.mean((c * (np.log(c + 1e-12) - np.log(own + 1e-12))).sum(1))
        return out

    def record_features(self, record, leave_out: bool = True) -> list[float] | None:
        """``features`` of a chunk record (its id, dataset and probe_probabilities column)."""
        vector = self.features(record["id"], record["dataset"], probabilities_of(record), leave_out)
        return None if vector is None else vector.tolist()

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able dict) that ``from_state`` turns back into this consensus (for the export)."""
        return dict(self.sums), {"members": self.members}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> PeerConsensus:
        return cls({k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, meta["members"])


# A chunk record's probe columns for a network that is not probed.
NO_PROBE = {"probe": None, "probe_probabilities": None}


def probe_columns(checkpoint) -> dict[str, Any]:
    """A chunk record's probe columns for a checkpoint (``chunking.CHUNK_RECORD_SCHEMA``): its probe
    summary and its class probabilities on the probes, each None where the network cannot be run or has
    a single output. They depend on the function alone, not on how its weights are chunked."""
    run = run_probes(checkpoint)
    probabilities = None if run is None else run[1]
    return {
        "probe": None if run is None else run[0].tolist(),
        "probe_probabilities": None
        if probabilities is None
        else probabilities.reshape(-1).astype(np.float16),
    }


def probe_table(table):
    """Prepare's probe stage: a block of chunk records (an Arrow table) with its probe columns filled in
    for every network whose architecture can be run; the others keep null probe columns. Each network is
    rebuilt from its record (``chunking.checkpoint_from_record``, exact), so probing is a pass of its own
    over chunked records, run with the resources it needs (a network per probe run) apart from chunking's."""
    import pyarrow as pa

    from pipeline.chunking import CHUNK_RECORD_SCHEMA, checkpoint_from_record

    probes, probabilities = [], []
    for record in table.to_pylist():
        hyperparameters = json.loads(record.get("hyperparameters") or "{}")
        found = (
            probe_columns(checkpoint_from_record(record))
            if runnable_architecture(hyperparameters) is not None
            else NO_PROBE
        )
        probes.append(found["probe"])
        probabilities.append(found["probe_probabilities"])
    for name, values in (("probe", probes), ("probe_probabilities", probabilities)):
        field = CHUNK_RECORD_SCHEMA.field(name)
        table = table.set_column(table.schema.get_field_index(name), field, pa.array(values, type=field.type))
    return table


def probabilities_of(record) -> np.ndarray | None:
    """A chunk record's class probabilities on the probes as (len(PROBE_SETS) * PROBES_PER_SET, classes),
    or None where it has none."""
    flat = record.get("probe_probabilities")
    if flat is None:
        return None
    flat = np.asarray(flat, dtype=np.float32)
    rows = len(PROBE_SETS) * PROBES_PER_SET
    if flat.size == 0 or flat.size % rows:
        raise ValueError(
            f"checkpoint {str(record['id'])!r}: {flat.size} probe probabilities, not a multiple of {rows} probes"
        )
    return flat.reshape(rows, -1)
