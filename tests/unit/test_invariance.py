import json

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.chunking import chunk_checkpoint, unchunk_record
from pipeline.invariance import logit_invariance_loss, permute_record, random_hidden_permutation
from pipeline.zoo.checkpoint import Checkpoint, Layer

KINDS = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}


def _layers_of(net: nn.Sequential) -> list[Layer]:
    return [
        Layer(str(i), KINDS[type(m)], m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
        for i, m in enumerate(net)
        if type(m) in KINDS
    ]


def _load(net: nn.Sequential, layers: list[Layer]) -> nn.Sequential:
    modules = iter(m for m in net if type(m) in KINDS)
    with torch.no_grad():
        for layer, module in zip(layers, modules, strict=True):
            module.weight.copy_(torch.from_numpy(layer.weight))
            module.bias.copy_(torch.from_numpy(layer.bias))
    return net


def _mlp() -> tuple[nn.Sequential, torch.Tensor]:
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))
    return net, torch.randn(16, 5)


def _cnn_flatten() -> tuple[nn.Sequential, torch.Tensor]:
    # 12x12 → conv3 10x10 → pool 5x5 → conv3 3x3: the flatten gives 5 channels x 9 positions.
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3),
        nn.Flatten(),
        nn.Linear(45, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )
    return net, torch.randn(8, 2, 12, 12)


def _cnn_global_pool() -> tuple[nn.Sequential, torch.Tensor]:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 5, padding=2),
        nn.ReLU(),
        nn.Conv2d(4, 6, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    return net, torch.randn(8, 1, 9, 9)


def _conv1d() -> tuple[nn.Sequential, torch.Tensor]:
    net = nn.Sequential(nn.Conv1d(2, 6, 7), nn.Tanh(), nn.Conv1d(6, 5, 3), nn.Flatten(), nn.Linear(5 * 10, 2))
    return net, torch.randn(8, 2, 18)


@pytest.mark.parametrize("build", [_mlp, _cnn_flatten, _cnn_global_pool, _conv1d])
def test_permutation_preserves_the_function(build):
    torch.manual_seed(0)
    net, x = build()
    layers = _layers_of(net)
    with torch.no_grad():
        before = net(x)
    permuted = random_hidden_permutation(layers, np.random.default_rng(3))
    for i, (old, new) in enumerate(zip(layers, permuted, strict=True)):
        assert new.weight.shape == old.weight.shape
        if i < len(layers) - 1:  # every hidden layer's units really move (the bias shows it)
            np.testing.assert_array_equal(np.sort(new.bias), np.sort(old.bias))
            assert not np.array_equal(new.bias, old.bias), f"layer {i}: identity permutation"
    np.testing.assert_array_equal(permuted[-1].bias, layers[-1].bias)  # outputs stay in place
    with torch.no_grad():
        after = _load(net, permuted)(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_inputs_are_left_untouched():
    net, _ = _cnn_flatten()
    layers = _layers_of(net)
    copies = [(layer.weight.copy(), layer.bias.copy()) for layer in layers]
    random_hidden_permutation(layers, np.random.default_rng(0))
    for layer, (w, b) in zip(layers, copies, strict=True):
        np.testing.assert_array_equal(layer.weight, w)
        np.testing.assert_array_equal(layer.bias, b)


def test_non_sequential_fan_in_is_rejected():
    layers = [
        Layer("a", "linear", np.ones((4, 3), np.float32)),
        Layer("b", "linear", np.ones((2, 6), np.float32)),
    ]
    with pytest.raises(ValueError, match="'b' has 6 inputs, not a multiple of the 4 outputs"):
        random_hidden_permutation(layers, np.random.default_rng(0))


def test_permute_record_keeps_identity_and_function():
    torch.manual_seed(1)
    net, x = _cnn_flatten()
    checkpoint = Checkpoint("ck", "cnn", "digits", _layers_of(net), {"test_accuracy": 0.4})
    record = chunk_checkpoint(checkpoint, 5) | {"peer": [0.5, 0.25], "probe": [1.0, 2.0]}
    permuted = permute_record(record, np.random.default_rng(7))
    assert (permuted["id"], permuted["chunk_size"], permuted["test_accuracy"]) == ("ck", 5, 0.4)
    # All the record says beside its weights holds for the copy: the function is the same.
    for name in ("peer", "probe", "probe_probabilities", "hyperparameters", "num_params"):
        assert permuted[name] == record[name]
    state = unchunk_record(permuted)
    assert not np.array_equal(state["0.weight"], checkpoint.layers[0].weight)
    layers = [Layer(n, "x", state[f"{n}.weight"], state[f"{n}.bias"]) for n in ("0", "3", "5", "7")]
    with torch.no_grad():
        before = net(x)
        after = _load(net, layers)(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_logit_invariance_loss_is_half_mean_squared_difference():
    pred = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = logit_invariance_loss(pred, torch.tensor([1.0, 0.0, 5.0]))
    assert loss.item() == pytest.approx(0.5 * (0 + 4 + 4) / 3)
    loss.backward()
    assert pred.grad is not None and pred.grad[0] == 0
    assert logit_invariance_loss(pred, pred.detach()).item() == 0


def _trained_permutation_sensitivity(invariance_weight: float) -> float:
    """Train a small SNE for a few steps with weight λ; return how far its output moves under fresh
    function-preserving permutations of networks it never saw (mean |f(W) - f(gW)|)."""
    from pipeline.config import debug, from_dict
    from pipeline.train import TargetScaler, build_encoder, collate, train_step

    rng = np.random.default_rng(0)

    def mlp_record(i: int, seed: int) -> dict:
        r = np.random.default_rng(seed * 1000 + i)
        scale = float(r.uniform(0.3, 1.5))
        layers = [
            Layer(
                "0",
                "linear",
                (scale * r.normal(size=(12, 6)) / 2.5).astype(np.float32),
                (0.1 * r.normal(size=12)).astype(np.float32),
            ),
            Layer(
                "1",
                "linear",
                (scale * r.normal(size=(8, 12)) / 3.5).astype(np.float32),
                (0.1 * r.normal(size=8)).astype(np.float32),
            ),
            Layer("2", "linear", (r.normal(size=(3, 8)) / 2.8).astype(np.float32), np.zeros(3, np.float32)),
        ]
        return chunk_checkpoint(
            Checkpoint(f"m{seed}-{i}", "mlp", "digits", layers, {"test_accuracy": scale / 1.5}), 4
        )

    config = from_dict({"invariance_weight": invariance_weight, "chunk_size": 4, "lr": 1e-3}, debug())
    encoder = build_encoder(config).train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    train = [mlp_record(i, 1) for i in range(16)]
    for _ in range(40):
        train_step(encoder, optimizer, train, config, TargetScaler(0.5, 0.25), rng)
    encoder.eval()
    held_out = [mlp_record(i, 2) for i in range(16)]
    check_rng = np.random.default_rng(99)
    with torch.no_grad():
        before = encoder(collate(held_out, config))
        moved = [
            (encoder(collate([permute_record(r, check_rng) for r in held_out], config)) - before).abs()
            for _ in range(3)
        ]
    return float(torch.stack(moved).mean())


def test_training_with_logit_invariance_makes_the_encoder_less_sensitive_to_permutations():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; restored so later tests keep their threads
    try:
        without = _trained_permutation_sensitivity(0.0)
        with_invariance = _trained_permutation_sensitivity(10.0)
    finally:
        torch.set_num_threads(threads)
    assert with_invariance < 0.5 * without, (with_invariance, without)


@pytest.mark.parametrize("chunk_size, invariant", [(8, True), (4, False)])
def test_the_encoder_is_invariant_by_construction_when_each_row_is_one_chunk(chunk_size, invariant):
    """Chunks hold a layer's weights output unit by output unit. With the chunk size equal to every row's
    length (8 inputs per unit here), a hidden-unit permutation only reorders chunks and the elements inside
    them, both sets: the untrained encoder already gives the permuted copy the same prediction, and the
    logit-invariance loss has nothing to act on. With rows split across chunks it does."""
    from pipeline.collate import collate_chunk_records
    from pipeline.config import paper
    from pipeline.train import build_encoder

    rng = np.random.default_rng(0)
    layers = [
        Layer(
            "0",
            "conv2d",
            rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
            rng.normal(size=8).astype(np.float32),
        ),
        Layer(
            "1",
            "conv2d",
            rng.normal(size=(8, 8, 3, 3)).astype(np.float32),
            rng.normal(size=8).astype(np.float32),
        ),
        Layer(
            "2", "linear", rng.normal(size=(10, 8)).astype(np.float32), rng.normal(size=10).astype(np.float32)
        ),
    ]
    record = chunk_checkpoint(Checkpoint("n", "cnn", "digits", layers, {"test_accuracy": 0.5}), chunk_size)
    copies = [permute_record(record, np.random.default_rng(s)) for s in range(4)]
    encoder = build_encoder(paper()).eval()
    with torch.no_grad():
        z = encoder.embed(collate_chunk_records([record, *copies]))
    gap = float((z[1:] - z[0]).norm(dim=1).max() / z[0].norm())  # relative change of the embedding
    assert (gap < 1e-5) if invariant else (gap > 1e-4), gap


def _resnet_checkpoint(seed: int) -> tuple[nn.Module, Checkpoint]:
    from pipeline import families

    architecture = families.sample_architecture("resnet", "digits", np.random.default_rng(seed), "relu")
    torch.manual_seed(seed)
    module = families.build_module(architecture).train()
    with torch.no_grad():  # running statistics away from (0, 1), as after training
        for _ in range(3):
            module(2.0 * torch.randn(16, 1, 16, 16) + 0.5)
    module.eval()
    checkpoint = families.checkpoint_from_module(
        module, id="r", family="resnet", dataset="digits", architecture=architecture
    )
    return module, checkpoint


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_residual_network_permuted_inside_its_blocks_computes_the_same(seed):
    from pipeline import families
    from pipeline.invariance import random_permutation, unit_groups

    module, checkpoint = _resnet_checkpoint(seed)
    groups = unit_groups(checkpoint)
    blocks = sum(
        op["op"] == "residual" for op in json.loads(checkpoint.hyperparameters["architecture"])["ops"]
    )
    assert (
        len(groups) == blocks
    )  # one group per block: the body's first conv, its batch norm, the second conv
    permuted = random_permutation(checkpoint, np.random.default_rng(seed))
    moved = {
        layer.name
        for layer, old in zip(permuted, checkpoint.layers, strict=True)
        if not np.array_equal(layer.weight, old.weight)
    }
    assert moved and all(".body." in name for name in moved)  # units tied to a skip stay in place
    x = torch.randn(8, 1, 16, 16)
    rebuilt = families.module_from_checkpoint(
        Checkpoint("r", "resnet", "digits", permuted, {}, checkpoint.hyperparameters)
    )
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), module(x), atol=1e-5, rtol=1e-5)


def test_a_network_with_batch_norms_and_no_architecture_has_no_permutation():
    from pipeline.invariance import random_permutation

    _, checkpoint = _resnet_checkpoint(0)
    del checkpoint.hyperparameters["architecture"]  # as read from a folder of bare state dicts
    assert random_permutation(checkpoint, np.random.default_rng(0)) is None
    checkpoint.properties = {"test_accuracy": 0.3}
    assert permute_record(chunk_checkpoint(checkpoint, 4), np.random.default_rng(0)) is None


def test_a_batch_with_an_unpermutable_network_trains_it_on_the_task_loss_alone():
    from pipeline.config import TrainConfig
    from pipeline.train import TargetScaler, build_encoder, train_step

    _, resnet = _resnet_checkpoint(1)
    del resnet.hyperparameters["architecture"]
    resnet.properties = {"test_accuracy": 0.3}
    torch.manual_seed(2)
    net, _ = _mlp()
    plain = Checkpoint("m", "mlp", "digits", _layers_of(net), {"test_accuracy": 0.6})
    records = [chunk_checkpoint(c, 4) for c in (resnet, plain)]
    config = TrainConfig(chunk_size=4, invariance_weight=1.0, hidden=16, heads=2)
    encoder = build_encoder(config, ("digits",))
    step = train_step(
        encoder,
        torch.optim.Adam(encoder.parameters()),
        records,
        config,
        TargetScaler(0.5, 0.2),
        np.random.default_rng(0),
    )
    assert step["without_permutation"] == 1.0
    assert np.isfinite(step["loss"]) and step["invariance_loss"] > 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_a_vision_transformer_permuted_across_and_inside_heads_computes_the_same(seed):
    from pipeline import families
    from pipeline.invariance import HeadGroup, random_permutation, unit_groups

    architecture = families.sample_architecture("vit", "digits", np.random.default_rng(seed), "gelu")
    torch.manual_seed(seed)
    module = families.build_module(architecture).eval()
    checkpoint = families.checkpoint_from_module(
        module, id="v", family="vit", dataset="digits", architecture=architecture
    )
    groups = unit_groups(checkpoint)
    blocks = sum(op["op"] == "residual" for op in architecture["ops"]) // 2
    assert sum(isinstance(g, HeadGroup) for g in groups) == blocks and len(groups) == 2 * blocks
    permuted = random_permutation(checkpoint, np.random.default_rng(seed))
    moved = {
        layer.name
        for layer, old in zip(permuted, checkpoint.layers, strict=True)
        if not np.array_equal(layer.weight, old.weight)
    }
    # q, k, v, out and the MLP's two layers move; the patch projection, positions and norms stay.
    assert {name.rsplit(".", 1)[-1] for name in moved if ".body.1." in name} >= {"q", "k", "v", "out"}
    assert not any(name.startswith(("features.0", "features.1")) for name in moved)
    x = torch.randn(4, 1, 16, 16)
    rebuilt = families.module_from_checkpoint(
        Checkpoint("v", "vit", "digits", permuted, {}, checkpoint.hyperparameters)
    )
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), module(x), atol=1e-5, rtol=1e-5)


def test_a_depthwise_separable_network_moves_each_filtered_channel_with_its_unit_and_grouped_convs_stay():
    from pipeline import families
    from pipeline.invariance import random_permutation, unit_groups

    ops = [
        {"op": "conv2d", "in": 1, "out": 8, "kernel": 3, "stride": 1, "padding": 1},
        {"op": "batchnorm2d", "channels": 8},
        {"op": "relu"},
        {"op": "conv2d", "in": 8, "out": 8, "kernel": 3, "stride": 1, "padding": 1, "groups": 8},  # depthwise
        {"op": "relu"},
        {"op": "conv2d", "in": 8, "out": 12, "kernel": 1, "stride": 1, "padding": 0},  # pointwise
        {"op": "relu"},
        {"op": "conv2d", "in": 12, "out": 12, "kernel": 3, "stride": 1, "padding": 1, "groups": 3},  # grouped
        {"op": "relu"},
        {"op": "gap"},
        {"op": "linear", "in": 12, "out": 10},
    ]
    architecture = {"family": "mobile", "input_shape": [1, 8, 8], "ops": ops}
    torch.manual_seed(0)
    module = families.build_module(architecture).train()
    with torch.no_grad():
        module(torch.randn(16, 1, 8, 8) + 0.3)  # running statistics away from (0, 1)
    module.eval()
    checkpoint = families.checkpoint_from_module(
        module, id="m", family="mobile", dataset="digits", architecture=architecture
    )
    kinds = [(layer.name, tuple(layer.weight.shape)) for layer in checkpoint.layers]
    assert kinds[3] == ("features.3", (8, 1, 3, 3))  # a depthwise conv reads as a conv2d layer
    # conv 0 → (its norm, the depthwise conv) → pointwise conv; nothing moves across the grouped conv.
    assert [(g.producer, g.followers, g.consumer) for g in unit_groups(checkpoint)] == [(0, (1, 2, 3), 4)]
    permuted = random_permutation(checkpoint, np.random.default_rng(1))
    assert not np.array_equal(permuted[3].weight, checkpoint.layers[3].weight)
    x = torch.randn(4, 1, 8, 8)
    rebuilt = families.module_from_checkpoint(
        Checkpoint("m", "mobile", "digits", permuted, {}, checkpoint.hyperparameters)
    )
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), module(x), atol=1e-5, rtol=1e-5)
