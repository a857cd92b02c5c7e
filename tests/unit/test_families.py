"""Network families: exact architectures, Checkpoint ↔ module, and the permutation contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline import families
from pipeline.chunking import checkpoint_from_record, chunk_checkpoint
from pipeline.zoo.checkpoint import LAYER_KINDS, Checkpoint, validate

pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(architecture: dict, seed: int = 0) -> tuple[torch.nn.Module, Checkpoint]:
    torch.manual_seed(seed)
    module = families.build_module(architecture).eval()
    checkpoint = families.checkpoint_from_module(
        module,
        id="c0",
        family=architecture["family"],
        dataset="digits",
        architecture=architecture,
        properties={"test_accuracy": 0.5, "train_accuracy": 0.6},
    )
    return module, checkpoint


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_smallcnn_has_the_small_cnn_zoo_parameter_count():
    for shape in ((1, 16, 16), (1, 28, 28)):
        module, checkpoint = _checkpoint(families.smallcnn_architecture("relu", 0.2, shape))
        assert _num_params(module) == checkpoint.num_params == 4970
        assert [layer.kind for layer in checkpoint.layers] == ["conv2d"] * 3 + ["linear"]
        assert module(torch.zeros(2, *shape)).shape == (2, 10)
        assert validate(checkpoint) is None


def test_cnn_s_has_the_model_zoos_parameter_count():
    module, checkpoint = _checkpoint(families.cnn_s_architecture("tanh", 0.1))
    assert _num_params(module) == checkpoint.num_params == 2464
    shapes = [tuple(layer.weight.shape) for layer in checkpoint.layers]
    assert shapes == [(8, 1, 5, 5), (6, 8, 5, 5), (4, 6, 2, 2), (20, 36), (10, 20)]
    assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert validate(checkpoint) is None


def test_siren_is_the_papers_inr():
    module, checkpoint = _checkpoint(families.siren_architecture())
    assert [tuple(layer.weight.shape) for layer in checkpoint.layers] == [(32, 1), (32, 32), (1, 32)]
    assert module(torch.zeros(5, 1)).shape == (5, 1)


def test_siren_initialisation_starts_every_sine_layer_at_low_frequency():
    torch.manual_seed(0)
    module = families.build_module(families.siren_architecture())
    families.initialize(module, "siren")
    first, hidden, output = (layer for _, layer in families.weighted_layers(module))
    # The DWS sine-wave data's rule, first layer included: |w| ≤ sqrt(6 / fan_in) / w0, zero biases.
    assert first.weight.abs().max() <= math.sqrt(6.0) / families.SIREN_W0
    assert first.weight.abs().max() > 0.9 * math.sqrt(6.0) / families.SIREN_W0
    assert hidden.weight.abs().max() <= math.sqrt(6.0 / 32) / families.SIREN_W0
    assert not first.bias.any() and not hidden.bias.any()
    # The output layer keeps torch's default (uniform within ±1/sqrt(fan_in), bias too).
    assert output.bias.abs().item() > 0 and output.weight.abs().max() <= 1 / math.sqrt(32)


def test_layer_names_say_where_a_layer_sits():
    _, checkpoint = _checkpoint(families.cnn_s_architecture())
    names = [layer.name for layer in checkpoint.layers]
    assert names[:3] == ["features.0", "features.3", "features.6"]
    assert all(name.startswith("classifier.") for name in names[3:])


@pytest.mark.parametrize("dataset", ["shapes", "mnist1d"])
def test_varied_cnn_family_spans_the_promised_shapes(dataset):
    rng = np.random.default_rng(0)
    depths, channels, kernels, linears, heads = set(), set(), set(), set(), set()
    for _ in range(40):
        architecture = families.sample_architecture("cnn", dataset, rng, "gelu", 0.1)
        module, checkpoint = _checkpoint(architecture)
        convs = [layer for layer in checkpoint.layers if layer.kind.startswith("conv")]
        assert {layer.kind for layer in convs} == {"conv1d" if dataset == "mnist1d" else "conv2d"}
        depths.add(len(convs))
        channels |= {layer.weight.shape[0] for layer in convs}
        kernels |= {layer.weight.shape[-1] for layer in convs}
        linears.add(sum(layer.kind == "linear" for layer in checkpoint.layers))
        heads |= {op["op"] for op in architecture["ops"] if op["op"] in ("gap", "flatten")}
        shape = families.input_shape_for("cnn", dataset)
        assert module(torch.zeros(3, *shape)).shape == (3, 10)
    assert depths == {2, 3, 4, 5} and linears == {1, 2} and heads == {"gap", "flatten"}
    assert kernels == {1, 3, 5, 7} and min(channels) == 4 and max(channels) == 32


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_mlp_family_has_one_to_four_hidden_layers(dataset):
    rng = np.random.default_rng(1)
    hidden = set()
    for _ in range(30):
        module, checkpoint = _checkpoint(families.sample_architecture("mlp", dataset, rng))
        assert all(layer.kind == "linear" for layer in checkpoint.layers)
        hidden.add(len(checkpoint.layers) - 1)
        assert module(torch.zeros(2, *families.input_shape_for("mlp", dataset))).shape == (2, 10)
    assert hidden == {1, 2, 3, 4}


def _sample_architectures() -> list[dict]:
    rng = np.random.default_rng(7)
    out = [
        families.smallcnn_architecture("tanh"),
        families.cnn_s_architecture("gelu"),
        families.siren_architecture(),
        families.sample_architecture("mlp", "textures", rng, "relu"),
        families.sample_architecture("cnn", "mnist1d", rng, "tanh"),
    ]
    # Make sure conv → flatten → linear blocks are covered in 2-D and 1-D.
    for dataset in ("shapes", "mnist1d"):
        while True:
            architecture = families.sample_architecture("cnn", dataset, rng, "relu")
            if any(op["op"] == "flatten" for op in architecture["ops"]):
                out.append(architecture)
                break
    return out


@pytest.mark.parametrize("architecture", _sample_architectures(), ids=lambda a: a["family"])
def test_checkpoint_round_trip_reproduces_the_logits(architecture):
    module, checkpoint = _checkpoint(architecture, seed=3)
    rebuilt = families.module_from_checkpoint(checkpoint)
    x = torch.randn(4, *architecture["input_shape"])
    with torch.no_grad():
        assert torch.equal(module(x), rebuilt(x))
    assert json.loads(checkpoint.hyperparameters["architecture"]) == architecture
    assert all(layer.kind in LAYER_KINDS for layer in checkpoint.layers)


def _permute_hidden_units(checkpoint: Checkpoint, rng: np.random.Generator) -> Checkpoint:
    """The family contract: permute layer i's outputs and layer i+1's inputs (grouped per channel)."""
    layers = [
        type(layer)(
            layer.name, layer.kind, layer.weight.copy(), None if layer.bias is None else layer.bias.copy()
        )
        for layer in checkpoint.layers
    ]
    for current, following in zip(layers[:-1], layers[1:], strict=True):
        units = current.weight.shape[0]
        perm = rng.permutation(units)
        current.weight = current.weight[perm]
        current.bias = current.bias[perm]
        fan_in = following.weight.shape[1]
        # A linear layer after conv → flatten sees fan_in = units × spatial, grouped per channel.
        grouped = following.weight.reshape(following.weight.shape[0], units, fan_in // units, -1)
        following.weight = grouped[:, perm].reshape(following.weight.shape)
    return Checkpoint(
        checkpoint.id, checkpoint.family, checkpoint.dataset, layers, {}, checkpoint.hyperparameters
    )


@pytest.mark.parametrize("architecture", _sample_architectures(), ids=lambda a: a["family"])
def test_permuting_hidden_units_preserves_the_function(architecture):
    module, checkpoint = _checkpoint(architecture, seed=5)
    permuted = families.module_from_checkpoint(_permute_hidden_units(checkpoint, np.random.default_rng(0)))
    x = torch.randn(8, *architecture["input_shape"])
    with torch.no_grad():
        torch.testing.assert_close(module(x), permuted(x), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(families.layers_from_module(permuted)[0].weight, checkpoint.layers[0].weight)


def test_loading_a_mismatching_checkpoint_names_the_layer():
    _, checkpoint = _checkpoint(families.smallcnn_architecture())
    checkpoint.layers[1].weight = checkpoint.layers[1].weight[:8]
    with pytest.raises(ValueError, match=r"layer 'features.2'.*shape"):
        families.load_checkpoint_into(families.build_module(families.smallcnn_architecture()), checkpoint)
    _, other = _checkpoint(families.cnn_s_architecture())
    with pytest.raises(ValueError, match="has 5 layers.*the module 4"):
        families.load_checkpoint_into(families.build_module(families.smallcnn_architecture()), other)


def test_a_checkpoint_without_architecture_cannot_be_rebuilt():
    _, checkpoint = _checkpoint(families.smallcnn_architecture())
    del checkpoint.hyperparameters["architecture"]
    with pytest.raises(ValueError, match="no 'architecture'"):
        families.module_from_checkpoint(checkpoint)


def test_initialisation_schemes():
    torch.manual_seed(0)
    module = families.build_module(families.cnn_s_architecture())
    families.initialize(module, "normal", std=0.01)
    weights = torch.cat([layer.weight.detach().flatten() for _, layer in families.weighted_layers(module)])
    assert 0.008 < float(weights.std()) < 0.012
    assert all(float(layer.bias.detach().abs().max()) == 0.0 for _, layer in families.weighted_layers(module))
    with pytest.raises(ValueError, match="unknown initialisation"):
        families.initialize(module, "he_uniform")


def test_families_know_their_datasets():
    assert families.datasets_for("smallcnn") == ("digits", "shapes", "textures")
    assert "mnist1d" in families.datasets_for("mlp") and "mnist1d" in families.datasets_for("cnn")
    assert families.input_shape_for("cnn-s", "digits") == (1, 28, 28)
    with pytest.raises(ValueError, match="does not train on"):
        families.input_shape_for("smallcnn", "mnist1d")
    with pytest.raises(ValueError, match="unknown family"):
        families.datasets_for("transformer")


def _resnet(seed: int, shortcut: bool = True) -> dict:
    """A sampled ResNet (with a 1×1 shortcut conv in some block when ``shortcut``)."""
    rng = np.random.default_rng(seed)
    while True:
        architecture = families.sample_architecture("resnet", "digits", rng, "relu")
        blocks = [op for op in architecture["ops"] if op["op"] == "residual"]
        if any(block["shortcut"] for block in blocks) == shortcut:
            return architecture


def _with_running_statistics(module: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """Batch norms whose running statistics moved away from (0, 1), as after training."""
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(3.0 * torch.randn(16, *shape) + 1.0)
    return module.eval()


def test_resnet_family_holds_batch_norms_and_residual_blocks():
    architecture = _resnet(0)
    torch.manual_seed(0)
    module = _with_running_statistics(families.build_module(architecture), (1, 16, 16))
    checkpoint = families.checkpoint_from_module(
        module,
        id="r",
        family="resnet",
        dataset="digits",
        architecture=architecture,
        properties={"test_accuracy": 0.5, "train_accuracy": 0.6},
    )
    kinds = [layer.kind for layer in checkpoint.layers]
    assert kinds[:3] == ["conv2d", "norm", "norm_stats"] and kinds[-1] == "linear"
    # The 1×1 shortcut conv is a layer of its own, in module order after its block's body.
    assert any(
        layer.name.endswith("shortcut.0") and layer.weight.shape[2:] == (1, 1) for layer in checkpoint.layers
    )
    assert all(layer.bias is None for layer in checkpoint.layers if layer.kind == "conv2d")
    # Every parameter and the running statistics are in the checkpoint, nothing else.
    buffers = sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    assert sum(
        layer.weight.size + (0 if layer.bias is None else layer.bias.size) for layer in checkpoint.layers
    ) == (_num_params(module) + buffers)
    assert validate(checkpoint) is None
    rebuilt = families.module_from_checkpoint(checkpoint)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(module(x), rebuilt(x))  # running statistics included
    stats = next(layer for layer in checkpoint.layers if layer.kind == "norm_stats")
    assert stats.weight.shape[1] == 2 and not np.allclose(stats.weight[:, 1], 1.0)
    assert checkpoint.num_params == _num_params(module)  # running statistics are not parameters
    # Through a chunk record and back: the same network, bit for bit.
    record = chunk_checkpoint(checkpoint, 5)
    norm = record["layer_kind"].index("norm_stats")
    assert record["layer_element_size"][norm] == 2 and record["layer_fan_in"][norm] == 1
    with torch.no_grad():
        assert torch.equal(module(x), families.module_from_checkpoint(checkpoint_from_record(record))(x))


def test_resnet_family_spans_depths_and_widths_under_its_compute_cap():
    rng = np.random.default_rng(2)
    depths, widths = set(), set()
    for _ in range(40):
        architecture = families.sample_architecture("resnet", "shapes", rng, "gelu")
        depths.add(sum(op["op"] == "residual" for op in architecture["ops"]))
        widths.add(architecture["ops"][0]["out"])
    assert len(depths) >= 3 and len(widths) >= 3


def test_vit_family_reads_as_patches_positions_attention_and_norms():
    rng = np.random.default_rng(3)
    architecture = families.sample_architecture("vit", "textures", rng, "relu")
    module, checkpoint = _checkpoint(architecture, seed=4)
    kinds = [layer.kind for layer in checkpoint.layers]
    assert kinds[:2] == ["conv2d", "embedding"] and kinds[-2:] == ["norm", "linear"]
    assert checkpoint.layers[1].weight.shape == (16, architecture["ops"][0]["dim"])  # 16 patches of 4×4
    assert [layer.name.rsplit(".", 1)[-1] for layer in checkpoint.layers[3:7]] == ["q", "k", "v", "out"]
    assert checkpoint.num_params == _num_params(module) and validate(checkpoint) is None
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(families.module_from_checkpoint(checkpoint)(x), module(x))
