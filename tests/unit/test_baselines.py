"""Weight-statistics features: STATNN's per-tensor numbers and the per-layer set summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import families
from pipeline.baselines import (
    LAYER_QUANTILES,
    LAYER_SUMMARY,
    LINK_SUMMARY,
    STATNN_QUANTILES,
    layer_set_features,
    layer_summary,
    link_summaries,
    quantiles,
    state_features,
)


def _mlp_state(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    arch = {"family": "mlp", "input_shape": [6], "ops": [
        {"op": "linear", "in": 6, "out": 5}, {"op": "relu"},
        {"op": "linear", "in": 5, "out": 4}, {"op": "relu"},
        {"op": "linear", "in": 4, "out": 3},
    ]}  # fmt: skip
    module = families.build_module(arch)
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def test_layer_set_features_ignore_a_function_preserving_permutation_of_hidden_units():
    state = _mlp_state(0)
    names = list(state)  # weight, bias of each linear layer in order
    permuted = dict(state)
    order = np.random.default_rng(1).permutation(5)  # the first hidden layer's units
    permuted[names[0]] = state[names[0]][order]
    permuted[names[1]] = state[names[1]][order]
    permuted[names[2]] = state[names[2]][:, order]
    assert not np.array_equal(permuted[names[0]], state[names[0]])
    features = layer_set_features(state)
    assert features.shape == (3 * LAYER_SUMMARY,)
    np.testing.assert_allclose(layer_set_features(permuted), features)
    # ... while a different network of the same shape looks different.
    assert not np.allclose(layer_set_features(_mlp_state(2)), features)


def test_links_follow_the_wiring_between_layers_that_per_layer_summaries_miss():
    state = _mlp_state(0)
    names = list(state)
    order = np.random.default_rng(1).permutation(5)
    permuted = dict(state)  # function-preserving: the hidden units move with their outgoing weights
    permuted[names[0]], permuted[names[1]] = state[names[0]][order], state[names[1]][order]
    permuted[names[2]] = state[names[2]][:, order]
    rewired = dict(state)  # the same layers, but the hidden units now feed other units of the next layer
    rewired[names[0]], rewired[names[1]] = state[names[0]][order], state[names[1]][order]
    with_links = layer_set_features(state, links=True)
    assert with_links.shape == (3 * (LAYER_SUMMARY + LINK_SUMMARY),)
    np.testing.assert_allclose(layer_set_features(permuted, links=True), with_links)
    np.testing.assert_allclose(layer_set_features(rewired), layer_set_features(state))
    assert not np.allclose(layer_set_features(rewired, links=True), with_links)


def test_link_gains_of_a_known_chain_fold_a_flatten_onto_channels():
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(2, 1, 3, 3))  # 2 channels, flattened over 4 positions into the linear layer
    linear = rng.normal(size=(3, 8))
    conv_links, linear_links = link_summaries([conv, linear])
    assert conv_links.shape == linear_links.shape == (LINK_SUMMARY,)
    q = len(LAYER_QUANTILES)
    channel_gain = np.sqrt((conv**2).sum(axis=(1, 2, 3)))  # one input at scale 1
    np.testing.assert_allclose(conv_links[:q][[0, -1]], np.log(np.sort(channel_gain)), rtol=1e-9)
    folded = (linear**2).reshape(3, 2, 4).sum(axis=2)  # each channel feeds 4 inputs
    unit_gain = np.sqrt(folded @ channel_gain**2)
    np.testing.assert_allclose(linear_links[:q][[0, -1]], np.log([unit_gain.min(), unit_gain.max()]))
    # The output layer's influence is 1; a conv channel's is its RMS reach into the outputs.
    np.testing.assert_allclose(linear_links[q : 2 * q], 0.0, atol=1e-9)
    influence = np.sqrt(folded.T @ np.ones(3))
    np.testing.assert_allclose(conv_links[q : 2 * q][[0, -1]], np.log(np.sort(influence)))
    # Last: the rank correlation of gain and influence (the conv's 2 channels: +1 or -1).
    ranks = np.argsort(np.argsort(channel_gain)), np.argsort(np.argsort(influence))
    assert conv_links[-1] == pytest.approx(np.corrcoef(*ranks)[0, 1])


def _blocks(summary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(5, 21) quantile blocks and the 3 log sizes."""
    return summary[:-3].reshape(5, len(LAYER_QUANTILES)), summary[-3:]


def test_layer_summary_of_a_known_layer():
    # One output unit with weights (3, 4) and no bias: row RMS √12.5, column RMS 3 and 4.
    blocks, sizes = _blocks(layer_summary(np.array([[3.0, 4.0]])))
    values, magnitudes, rows, columns, bias = blocks
    assert values[0] == 3.0 and values[-1] == 4.0
    np.testing.assert_allclose(magnitudes, values)
    np.testing.assert_allclose(rows, np.sqrt(12.5))
    assert columns[0] == 3.0 and columns[-1] == 4.0
    np.testing.assert_allclose(bias, 0.0)
    np.testing.assert_allclose(sizes, np.log([1, 2, 1]))


def test_layer_summary_treats_a_kernel_as_one_connection():
    # conv (out 2, in 3, 2x2): a row's RMS covers an output channel, a column's an input channel.
    weight = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2)
    blocks, sizes = _blocks(layer_summary(weight, np.array([1.0, -1.0])))
    rows, columns, bias = blocks[2:]
    np.testing.assert_allclose(
        [rows[0], rows[-1]], sorted(np.sqrt((weight.reshape(2, -1) ** 2).mean(axis=1)))
    )
    in_rms = np.sqrt((weight**2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose([columns[0], columns[-1]], [in_rms.min(), in_rms.max()])
    assert bias[0] == -1.0 and bias[-1] == 1.0
    np.testing.assert_allclose(sizes, np.log([2, 3, 4]))


def test_layer_set_features_see_weights_as_the_encoder_does():
    # Scaled by sqrt(fan-in) like collate's default normalisation: here fan-in 3 · 2 · 2 = 12.
    weight, bias = np.random.default_rng(0).normal(size=(2, 3, 2, 2)), np.array([0.5, -0.5])
    features = layer_set_features({"conv.weight": weight, "conv.bias": bias})
    np.testing.assert_allclose(features, layer_summary(weight * np.sqrt(12), bias * np.sqrt(12)))


def test_statnn_features_are_seven_numbers_per_tensor():
    state = _mlp_state(0)
    features = state_features(state)
    assert features.shape == (7 * len(state),)
    w = state[next(iter(state))].astype(np.float64)
    np.testing.assert_allclose(
        features[:7], [w.mean(), w.std(), w.min(), *np.percentile(w, [25, 50, 75]), w.max()]
    )


def test_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 32, 1001):
        x = rng.normal(size=n)
        for q in (LAYER_QUANTILES, STATNN_QUANTILES):
            np.testing.assert_allclose(quantiles(x, q), np.quantile(x, q))
