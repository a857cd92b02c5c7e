"""Networks in the public layouts are rebuilt from what their files say, so they can be probed and permuted.

The reference networks here are written the way the public generators lay them out (torchvision's
ResNet-18 names and module structure, Model Zoos' module list, the Small CNN Zoo's Keras rows), built
independently of pipeline.families, so a test passes only when the rebuilt network computes what the
stored one computed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference_nets import TorchvisionResNet18, write_trial
from torch import nn

from pipeline import families
from pipeline.invariance import random_permutation, unit_groups
from pipeline.probes import probe_summary
from pipeline.zoo import read_zoo
from pipeline.zoo.checkpoint import Checkpoint
from pipeline.zoo.smallcnnzoo import write_zoo as write_smallcnnzoo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_model_zoos_resnet18_trial_is_rebuilt_probed_and_permuted(tmp_path):
    torch.manual_seed(0)
    reference = TorchvisionResNet18().train()
    with torch.no_grad():  # running statistics away from (0, 1), as after training
        reference(torch.randn(4, 3, 32, 32) * 2.0 + 0.3)
    reference.eval()
    params = {"model::type": "Resnet18", "model::o_dim": 10, "model::channels_in": 3, "model::nlin": "relu"}
    write_trial(tmp_path, "trial_0", reference.state_dict(), params)

    (checkpoint,) = list(read_zoo(str(tmp_path)))
    assert isinstance(checkpoint, Checkpoint), checkpoint
    assert checkpoint.family == "resnet18"
    assert checkpoint.num_params == sum(p.numel() for p in reference.parameters()) == 11_173_962
    names = [layer.name for layer in checkpoint.layers]
    assert names[:4] == ["conv1", "bn1", "bn1.running", "layer1.0.conv1"]
    assert "layer2.0.downsample.0" in names and names[-1] == "fc"
    assert not any("num_batches_tracked" in n for n in names)
    assert {layer.kind for layer in checkpoint.layers} == {"conv2d", "norm", "norm_stats", "linear"}

    # The rebuilt network computes what the stored one computes.
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(
            families.module_from_checkpoint(checkpoint)(x), expected, atol=1e-4, rtol=1e-4
        )
        # Units inside each of the 8 blocks move; the permuted network computes the same.
        assert len(unit_groups(checkpoint)) == 8
        permuted = random_permutation(checkpoint, np.random.default_rng(0))
        assert not np.array_equal(permuted[3].weight, checkpoint.layers[3].weight)
        copy = Checkpoint("p", "resnet18", "cifar10", permuted, {}, checkpoint.hyperparameters)
        torch.testing.assert_close(families.module_from_checkpoint(copy)(x), expected, atol=1e-4, rtol=1e-4)


def test_a_model_zoos_cnn_trial_is_rebuilt_with_its_activation(tmp_path):
    torch.manual_seed(1)
    # Model Zoos' module list with dropout: indices 0, 4, 8, 11, 14 hold the weights.
    reference = nn.ModuleList(
        [
            nn.Conv2d(1, 8, 5),
            nn.MaxPool2d(2),
            nn.Tanh(),
            nn.Dropout(0.1),
            nn.Conv2d(8, 6, 5),
            nn.MaxPool2d(2),
            nn.Tanh(),
            nn.Dropout(0.1),
            nn.Conv2d(6, 4, 2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(36, 20),
            nn.Tanh(),
            nn.Dropout(0.1),
            nn.Linear(20, 10),
        ]
    ).eval()
    state = {f"module_list.{k}": v for k, v in reference.state_dict().items()}
    write_trial(
        tmp_path, "trial_0", state, {"model::type": "CNN", "model::nlin": "tanh", "model::dropout": 0.1}
    )
    write_trial(tmp_path, "trial_1", state, {"model::type": "CNN", "model::nlin": "softplus"})

    by_id = {item.id: item for item in read_zoo(str(tmp_path))}
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = x
        for module in reference:
            expected = module(expected)
        rebuilt = families.module_from_checkpoint(by_id["trial_0"])
        torch.testing.assert_close(rebuilt(x), expected)
    assert probe_summary(by_id["trial_0"]) is not None
    # An activation the project has no op for: read, not probed.
    assert "architecture" not in by_id["trial_1"].hyperparameters
    assert probe_summary(by_id["trial_1"]) is None


def test_a_small_cnn_zoo_run_is_rebuilt_from_its_activation(tmp_path):
    torch.manual_seed(2)
    architecture = families.smallcnn_architecture("tanh", 0.0, (1, 28, 28))
    module = families.build_module(architecture).eval()
    checkpoint = families.checkpoint_from_module(
        module,
        id="run0",
        family="smallcnn",
        dataset="mnist",
        architecture=architecture,
        properties={"test_accuracy": 0.8, "train_accuracy": 0.85},
        hyperparameters={"activation": "tanh"},
    )
    del checkpoint.hyperparameters["architecture"]  # the public layout holds none
    write_smallcnnzoo(str(tmp_path / "mnist"), [checkpoint])

    (read,) = list(read_zoo(str(tmp_path)))
    assert json.loads(read.hyperparameters["architecture"])["input_shape"] == [1, 28, 28]
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(families.module_from_checkpoint(read)(x), module(x))
    assert probe_summary(read) is not None
