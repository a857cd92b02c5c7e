"""STATNN (Unterthiner et al. 2020): per-tensor statistics fed to gradient-boosted trees.

For every weight and bias tensor in computation order: mean, standard deviation and the
0/25/50/75/100 percentiles (7 numbers). Mixed zoos have different tensor counts, so the feature
vector is padded with NaN to the longest network in the batch; the trees treat NaN as missing.
``layer_summary`` is a richer per-layer summary: an SNE layer input (collate) and, through
``layer_set_features``, features for trees in research/zoo_ceiling.py. ``link_summaries`` adds what no
single layer shows: how the gains of its units chain with the layers below and above. SNE's default
layer input ("links") is both.
"""

from __future__ import annotations

import numpy as np

from pipeline.chunking import unchunk_record

STATS_PER_TENSOR = 7
STATNN_QUANTILES = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
LAYER_QUANTILES = np.linspace(0.0, 1.0, 21)
LAYER_SUMMARY = 5 * len(LAYER_QUANTILES) + 3
LINK_SUMMARY = 4 * len(LAYER_QUANTILES) + 1
_TINY = 1e-12  # keeps the log of a dead unit's gain finite


def quantiles(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.quantile's default (linear) quantiles of a flat array, by one sort: numpy's own call costs
    ~0.4 ms of overhead, which adds up to a fifth of a training step over a batch's layers."""
    s = np.sort(np.asarray(x, dtype=np.float64).ravel())
    position = q * (s.size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, s.size - 1)
    return s[low] + (s[high] - s[low]) * (position - low)


def tensor_statistics(t: np.ndarray) -> np.ndarray:
    """(7,) mean, std and the 0/25/50/75/100 percentiles; zeros for an empty tensor (a layer without bias)."""
    flat = np.asarray(t, dtype=np.float64).ravel()
    if flat.size == 0:
        return np.zeros(STATS_PER_TENSOR)
    return np.concatenate([[flat.mean(), flat.std()], quantiles(flat, STATNN_QUANTILES)])


def state_features(state: dict[str, np.ndarray]) -> np.ndarray:
    """(7 · tensors,) statistics of a state dict's weights and biases, in its order."""
    return np.concatenate([tensor_statistics(t) for t in state.values()])


def layer_summary(weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """(LAYER_SUMMARY,) one layer seen as sets: 21 quantiles (0, 5, ..., 100%) of each of its weights,
    their magnitudes, the RMS of its rows (output units), the RMS of its columns (input units), and its
    bias (zeros without one); then the log of its output units, input units and kernel elements.
    ``weight`` is (out, in) or (out, in, kernel...): a kernel is one connection.

    None of these changes when the layer's units are permuted, and none links a unit to the next
    layer's weights for it. RMS keeps layers of different widths on one scale, and the sizes say what
    the RMS leaves out: on the small zoo, trees on this summary without the sizes fall from test tau
    0.59 (with norms, which carry the width) to 0.53 (research/zoo_ceiling.py).
    """
    w = np.asarray(weight, dtype=np.float64)
    w = w.reshape(w.shape[0], w.shape[1] if w.ndim > 1 else 1, -1)  # (out, in, kernel elements)
    b = np.zeros(1) if bias is None or np.size(bias) == 0 else np.asarray(bias, dtype=np.float64).ravel()
    columns = (
        w.ravel(),
        np.abs(w).ravel(),
        np.sqrt((w**2).mean(axis=(1, 2))),
        np.sqrt((w**2).mean(axis=(0, 2))),
        b,
    )
    return np.concatenate([*(quantiles(c, LAYER_QUANTILES) for c in columns), np.log(w.shape)])


def _fold_inputs(squares: np.ndarray, units_below: int) -> np.ndarray | None:
    """A layer's squared connections (out, in) with its inputs summed onto the units of the layer below:
    a flatten after a conv feeds each channel in at every position. None when they do not map."""
    if squares.shape[1] == units_below:
        return squares
    if squares.shape[1] % units_below == 0:
        return squares.reshape(squares.shape[0], units_below, -1).sum(axis=2)
    return None


def link_summaries(weights: list[np.ndarray]) -> list[np.ndarray]:
    """Per layer, (LINK_SUMMARY,) numbers that tie its units to the layers below and above it.

    ``weights``: the raw weights in computation order, each (out, in) or (out, in, kernel...). Each unit
    gets a forward gain s (how strongly it moves with the network's input: s = sqrt(W² · s_below²), inputs
    at 1, connections summed in quadrature, activations ignored) and a backward influence g (how strongly
    it moves the output, by the same rule from the top). Per layer: 21 quantiles of log s, of log g, of
    log s·g, and of log s / |row| (the gain of the units each unit listens to), then the rank
    correlation of s and g. Permuting units leaves them unchanged, but, unlike layer_summary, they change
    when a layer's units are rewired to different units of the next layer. Where a layer's inputs do not
    map onto the units below (a shortcut, say), the chain starts afresh there.
    """
    squares = []
    for w in weights:
        w = np.asarray(w, dtype=np.float64)
        squares.append((w.reshape(w.shape[0], w.shape[1] if w.ndim > 1 else 1, -1) ** 2).sum(axis=2))
    linked = [None] + [_fold_inputs(squares[i], squares[i - 1].shape[0]) for i in range(1, len(squares))]
    gain = []
    for i, m in enumerate(squares):
        inputs = np.ones(m.shape[1]) if linked[i] is None else gain[i - 1] ** 2
        gain.append(np.sqrt((m if linked[i] is None else linked[i]) @ inputs))
    influence = [np.ones(m.shape[0]) for m in squares]
    for i in range(len(squares) - 1, 0, -1):
        if linked[i] is not None:
            influence[i - 1] = np.sqrt(linked[i].T @ influence[i] ** 2)
    out = []
    for m, s, g in zip(squares, gain, influence, strict=True):
        log_s, log_g = np.log(s + _TINY), np.log(g + _TINY)
        listened = log_s - 0.5 * np.log(m.sum(axis=1) + _TINY)
        # Both rankings are permutations of 0..n-1 (ties broken by position), so their Pearson
        # correlation needs one dot product; np.corrcoef's overhead was a third of this function.
        centre = (s.size - 1) / 2
        rank_s, rank_g = np.argsort(np.argsort(s)) - centre, np.argsort(np.argsort(g)) - centre
        correlation = float(rank_s @ rank_g / (rank_s @ rank_s)) if s.size > 1 else 0.0
        columns = (log_s, log_g, log_s + log_g, listened)
        out.append(np.concatenate([*(quantiles(c, LAYER_QUANTILES) for c in columns), [correlation]]))
    return out


def layer_set_features(state: dict[str, np.ndarray], links: bool = False) -> np.ndarray:
    """(LAYER_SUMMARY · layers,) layer_summary of each layer of a state dict, in its order, with the
    weights and bias scaled by sqrt(fan-in) as SNE sees them (collate's "fan_in" normalisation): the
    summary SNE's encoder is given, in fixed length for trees. ``links`` appends each layer's
    link_summaries (of the raw weights), as SNE's "links" summary does.
    """
    out, weights = [], []
    for name, weight in state.items():
        if name.endswith(".weight"):
            w = np.asarray(weight, dtype=np.float64)
            scale = np.sqrt(w[0].size)  # fan-in: inputs × kernel elements
            bias = state.get(name[: -len("weight")] + "bias")
            out.append(layer_summary(w * scale, None if bias is None else np.asarray(bias) * scale))
            weights.append(w)
    if links:
        out = [np.concatenate(pair) for pair in zip(out, link_summaries(weights), strict=True)]
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


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    # Imported here: the encoder imports this module and should not pull in the storage stack.
    from pipeline.evaluation import regression_metrics

    metrics = regression_metrics(pred, true)
    return {"kendall_tau": float(metrics["kendall_tau"]), "mse": float(metrics["mse"])}


def fit_trees(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """STATNN's trees on any feature matrix (rows ``train`` fit, rows ``test`` score): Kendall tau and MSE."""
    seen = ~np.isnan(x[train]).all(axis=0)  # the trees cannot bin a column the training rows never set
    model = STATNN().fit(list(x[train][:, seen]), y[train])
    return scores(model.predict(list(x[test][:, seen])), y[test])


def fit_mlp(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """A neural learner on the same features as the trees: how much of the gap is the learner's."""
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import QuantileTransformer

    # Rank-based scaling fitted on the training rows: one diverged network (|w| = 22,000 in the small zoo)
    # wrecks a mean/std scaling. A padded (absent) tensor becomes 0, the middle of the distribution.
    scaler = QuantileTransformer(
        output_distribution="normal", n_quantiles=min(1000, len(train)), random_state=0
    )
    z = np.nan_to_num(scaler.fit(x[train]).transform(x))
    model = MLPRegressor(
        hidden_layer_sizes=(256, 256), alpha=1.0, early_stopping=True, max_iter=600, random_state=0
    )
    model.fit(z[train], y[train])
    return scores(model.predict(z[test]), y[test])
