"""STATNN (Unterthiner et al. 2020): per-tensor statistics fed to gradient-boosted trees.

For every weight and bias tensor in computation order: mean, standard deviation and the
0/25/50/75/100 percentiles (7 numbers). Mixed zoos have different tensor counts, so the feature
vector is padded with NaN to the longest network in the batch; the trees treat NaN as missing.
``layer_set_features`` is a richer per-layer summary for measuring a zoo (jobs/zoo_ceiling.py).
"""

from __future__ import annotations

import numpy as np

from pipeline.chunking import unchunk_record

STATS_PER_TENSOR = 7
LAYER_QUANTILES = np.linspace(0.0, 1.0, 21)


def tensor_statistics(t: np.ndarray) -> np.ndarray:
    """(7,) mean, std and the 0/25/50/75/100 percentiles; zeros for an empty tensor (a layer without bias)."""
    flat = np.asarray(t, dtype=np.float64).ravel()
    if flat.size == 0:
        return np.zeros(STATS_PER_TENSOR)
    return np.concatenate([[flat.mean(), flat.std()], np.percentile(flat, [0, 25, 50, 75, 100])])


def state_features(state: dict[str, np.ndarray]) -> np.ndarray:
    """(7 · tensors,) statistics of a state dict's weights and biases, in its order."""
    return np.concatenate([tensor_statistics(t) for t in state.values()])


def layer_set_features(state: dict[str, np.ndarray]) -> np.ndarray:
    """(105 · layers,) what a per-layer set encoder could see of each layer, in fixed length for trees.

    Per layer, 21 quantiles (0, 5, ..., 100%) of: its weights, their magnitudes, the norms of its rows
    (output units), the norms of its columns (input units), and its bias (zeros without one). None of
    them changes when the layer's units are permuted, and none links a unit to the next layer's
    weights for it: the most an encoder that summarises each layer on its own (as SNE's hierarchy
    does) can use, beyond STATNN's 7 numbers per tensor.
    """
    out = []
    for name, weight in state.items():
        if not name.endswith(".weight"):
            continue
        w = np.asarray(weight, dtype=np.float64)
        w = w.reshape(w.shape[0], w.shape[1] if w.ndim > 1 else 1, -1)  # (out, in, kernel elements)
        bias = np.asarray(state.get(name[: -len("weight")] + "bias", np.zeros(0)), dtype=np.float64)
        columns = (
            w.ravel(),
            np.abs(w).ravel(),
            np.sqrt((w**2).sum(axis=(1, 2))),
            np.sqrt((w**2).sum(axis=(0, 2))),
            bias.ravel() if bias.size else np.zeros(1),
        )
        out += [np.quantile(c, LAYER_QUANTILES) for c in columns]
    return np.concatenate(out)


def statnn_features(record: dict) -> np.ndarray:
    """state_features of one chunk record."""
    return state_features(unchunk_record(record))


def pad_features(rows: list[np.ndarray], width: int | None = None) -> np.ndarray:
    """(B, width) with NaN where a network has fewer tensors than the widest one."""
    width = width or max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : min(width, len(r))] = r[:width]
    return out


class STATNN:
    """Gradient-boosted trees on STATNN features; ``fit`` then ``predict`` on lists of feature rows."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.width = 0
        self.regressor = None

    def fit(self, rows: list[np.ndarray], y: np.ndarray) -> STATNN:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.width = max(len(r) for r in rows)
        # sklearn's default leaf size (20) makes one constant leaf of a small zoo; scale it down.
        leaf = int(min(20, max(2, len(rows) // 10)))
        self.regressor = HistGradientBoostingRegressor(
            max_iter=300, learning_rate=0.05, min_samples_leaf=leaf, random_state=self.seed
        )
        self.regressor.fit(pad_features(rows, self.width), np.asarray(y, dtype=np.float64))
        return self

    def predict(self, rows: list[np.ndarray]) -> np.ndarray:
        if self.regressor is None:
            raise RuntimeError("STATNN.predict before fit")
        return self.regressor.predict(pad_features(rows, self.width))
