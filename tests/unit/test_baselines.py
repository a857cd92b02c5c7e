"""Weight-statistics features: STATNN's per-tensor numbers and the per-layer set summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import families
from pipeline.baselines import (
    BASELINE_MODELS,
    LAYER_QUANTILES,
    LAYER_SUMMARY,
    LINK_SUMMARY,
    STATNN_QUANTILES,
    STATS_PER_TENSOR,
    FeatureLayout,
    baseline_row,
    fit_baseline,
    layer_roles,
    layer_set_features,
    layer_summary,
    link_summaries,
    quantiles,
    state_features,
)
from pipeline.chunking import chunk_checkpoint
from pipeline.evaluation import regression_metrics
from pipeline.probes import probe_columns


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


def test_statnn_aligns_tensors_by_layer_role_so_families_share_their_head():
    assert layer_roles(["conv2d", "norm", "norm_stats", "conv2d", "linear", "linear"]) == [
        "conv[0]", "norm[0]", "norm_stats[0]", "conv[1]", "linear[-2]", "linear[-1]",
    ]  # fmt: skip
    assert layer_roles(["linear"] * 3) == ["linear[-3]", "linear[-2]", "linear[-1]"]


def _scaled_zoo(count: int, mixed: bool = False) -> tuple[dict[str, dict], dict[str, str]]:
    """Untrained MLPs (and, if ``mixed``, CNNs) whose weights are scaled by a factor that is the target,
    half on each of two datasets; ids split 40/20/40 into train, val and test."""
    rng = np.random.default_rng(0)
    mlp = {"family": "mlp", "input_shape": [6], "ops": [
        {"op": "linear", "in": 6, "out": 8}, {"op": "relu"}, {"op": "linear", "in": 8, "out": 3},
    ]}  # fmt: skip
    cnn = {"family": "cnn", "input_shape": [1, 6, 6], "ops": [
        {"op": "conv2d", "in": 1, "out": 4, "kernel": 3, "stride": 1, "padding": 0}, {"op": "relu"}, {"op": "gap"},
        {"op": "linear", "in": 4, "out": 3},
    ]}  # fmt: skip
    rows, assignment = {}, {}
    for i in range(count):
        arch = cnn if mixed and i % 2 else mlp
        torch.manual_seed(i)
        module = families.build_module(arch)
        scale = float(rng.uniform(0.5, 2.0))
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(scale)
        checkpoint = families.checkpoint_from_module(
            module, id=f"n{i:03d}", family=arch["family"], dataset="ab"[i % 2], architecture=arch,
            properties={"test_accuracy": scale},
        )  # fmt: skip
        record = chunk_checkpoint(checkpoint, 8) | probe_columns(checkpoint)
        rows[checkpoint.id] = baseline_row(record, "test_accuracy", flat=True)
        assignment[checkpoint.id] = "train" if i < 0.4 * count else "val" if i < 0.6 * count else "test"
    return rows, assignment


@pytest.mark.parametrize("model", BASELINE_MODELS)
def test_each_feature_baseline_learns_on_train_chooses_on_val_and_never_reads_test_targets(model):
    rows, assignment = _scaled_zoo(100)
    pred, val_tau = fit_baseline(model, rows, assignment, seed=0)
    test = sorted(i for i, s in assignment.items() if s == "test")
    assert sorted(pred) == test
    tau = regression_metrics(np.array([pred[i] for i in test]), np.array([rows[i]["target"] for i in test]))
    assert tau["kendall_tau"] > 0.6 and val_tau > 0.6, (tau, val_tau)
    hidden = {i: {**r, "target": 0.0} if assignment[i] == "test" else r for i, r in rows.items()}
    assert fit_baseline(model, hidden, assignment, seed=0) == (pred, val_tau)
    # The validation score is what chose the settings: it reads the validation targets, not the test's.
    # With the validation targets' order reversed, every setting's validation τ changes sign.
    val_ids = sorted((i for i, s in assignment.items() if s == "val"), key=lambda i: rows[i]["target"])
    reversed_val = dict(rows)
    for i, j in zip(val_ids, val_ids[::-1], strict=True):
        reversed_val[i] = {**rows[i], "target": rows[j]["target"]}
    assert fit_baseline(model, reversed_val, assignment, seed=0)[1] < 0


def test_statnn_reads_mixed_families_and_mlp_refuses_them():
    rows, assignment = _scaled_zoo(60, mixed=True)
    assert len(fit_baseline("statnn", rows, assignment, seed=0)[0]) == 24
    # Cross-architecture: the conv roles only the test networks have are not read; the shared head is.
    cnn_test = {
        i: "test" if rows[i]["architecture"] != rows["n000"]["architecture"] else s
        for i, s in assignment.items()
    }
    for model in ("statnn", "statnn-side"):
        assert len(fit_baseline(model, rows, cnn_test, seed=0)[0]) == 24 + 18
    with pytest.raises(ValueError, match="one architecture"):
        fit_baseline("mlp", rows, assignment, seed=0)


def test_statnn_side_reads_the_probe_and_dataset_that_plain_statnn_does_not():
    rows, assignment = _scaled_zoo(100)
    for row in rows.values():  # a target the weights do not show: the dataset's level
        row["target"] = 1.0 if row["dataset"] == "a" else 0.0
        row["target"] += 0.01 * float(row["probe"][0])
    layout = FeatureLayout(list(rows.values()), side=True)
    x = layout.matrix(list(rows.values()))
    assert x.shape[1] == STATS_PER_TENSOR * len(layout.roles) + len(next(iter(rows.values()))["probe"]) + 2
    test = [i for i, s in assignment.items() if s == "test"]
    y = np.array([rows[i]["target"] for i in test])

    def tau(model):
        pred, _ = fit_baseline(model, rows, assignment, seed=0)
        return regression_metrics(np.array([pred[i] for i in test]), y)["kendall_tau"]

    assert tau("statnn-side") > tau("statnn") + 0.3
