"""CNN Wild Park checkpoints, written as its trainer writes them (an OmegaConf config and Ray's state in
a torch pickle), are read without unpickling anything but tensors and data, and rebuilt exactly."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
import torch
from reference_nets import WildParkReference, write_wild_park

from pipeline import families
from pipeline.invariance import random_permutation, unit_groups
from pipeline.probes import probe_summary
from pipeline.zoo import Checkpoint, Rejection, detect_format, open_zoo, read_zoo

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {
    "n_layers": 4,
    "n_classes": 10,
    "channels": [3, 8, 4, 16, 8],
    "kernel_size": [3, 5, 3, 7],
    "stride": [1, 1, 1, 1],
    "padding": [1, 2, 1, 3],
    "residual": [-1, -1, 0, -1],  # layer 0's activated output joins layer 2's first 4 channels
    "activation": ["relu", "tanh", "gelu", "leaky_relu"],
}


def test_wild_park_runs_are_read_rebuilt_probed_and_permuted(tmp_path):
    torch.manual_seed(0)
    nets = [WildParkReference(CONFIG).eval() for _ in range(2)]
    for run, net in enumerate(nets):
        for step in (9, 10):  # natural order: checkpoint_10 is the run's last
            write_wild_park(
                str(tmp_path), f"run{run}/checkpoint_{step}", net, CONFIG, step, 0.3 + 0.1 * run + step / 100
            )
    assert detect_format(str(tmp_path)) == "wildpark"
    assert open_zoo(str(tmp_path), steps="all").num_listed == 4
    assert sorted(c.run_id for c in read_zoo(str(tmp_path), steps="all")) == ["run0"] * 2 + ["run1"] * 2

    read = {c.id: c for c in read_zoo(str(tmp_path))}
    assert sorted(read) == ["run0/checkpoint_10", "run1/checkpoint_10"]
    checkpoint = read["run1/checkpoint_10"]
    assert isinstance(checkpoint, Checkpoint), checkpoint
    assert checkpoint.properties["test_accuracy"] == pytest.approx(0.5)
    assert checkpoint.hyperparameters["iteration"] == 10
    assert json.loads(checkpoint.hyperparameters["activation"]) == CONFIG["activation"]
    assert [layer.name for layer in checkpoint.layers] == [
        "layers.0",
        "layers.1",
        "layers.2",
        "layers.3",
        "fc",
    ]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = nets[1](x)
        torch.testing.assert_close(families.module_from_checkpoint(checkpoint)(x), expected)
        # Layers 0 and 2 share channels through the residual link and stay; 1 → 2 and 3 → fc move.
        assert len(unit_groups(checkpoint)) == 2
        permuted = Checkpoint(
            "p",
            "wildpark",
            "cifar10",
            random_permutation(checkpoint, np.random.default_rng(0)),
            {},
            checkpoint.hyperparameters,
        )
        assert not np.array_equal(permuted.layers[1].weight, checkpoint.layers[1].weight)
        torch.testing.assert_close(
            families.module_from_checkpoint(permuted)(x), expected, atol=1e-5, rtol=1e-5
        )
    assert probe_summary(checkpoint) is not None


def test_a_checkpoint_that_asks_for_other_objects_is_refused_unread(tmp_path):
    torch.manual_seed(1)
    net = WildParkReference(CONFIG).eval()
    write_wild_park(str(tmp_path), "good/checkpoint_1", net, CONFIG, 1, 0.4)
    write_wild_park(
        str(tmp_path), "odd/checkpoint_1", net, CONFIG, 1, 0.4, {"started": datetime.datetime(2024, 1, 1)}
    )
    write_wild_park(str(tmp_path), "blind/checkpoint_1", net, CONFIG, 1, float("nan"))
    items = {item.id: item for item in read_zoo(str(tmp_path))}
    assert isinstance(items["good/checkpoint_1"], Checkpoint)
    odd = items["odd/checkpoint_1"]
    assert isinstance(odd, Rejection) and "datetime" in odd.reason and "not unpickled" in odd.reason
    assert "missing property 'test_accuracy'" in items["blind/checkpoint_1"].reason
