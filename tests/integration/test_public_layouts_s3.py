"""Modern architectures in the public layouts, through the S3 server: read, prepared with probes, predicted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from reference_nets import TorchvisionResNet18, WildParkReference, write_trial, write_wild_park

from pipeline import families
from pipeline.config import debug, from_dict
from pipeline.data import load_chunk_dataset, prepare_chunk_records
from pipeline.driver import run_training
from pipeline.predict import predict_zoo
from pipeline.zoo import Checkpoint, read_zoo
from pipeline.zoo.tensorfolder import write_zoo

pytestmark = pytest.mark.integration


def _resnets(count: int) -> list[Checkpoint]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(count):
        architecture = families.sample_architecture("resnet", "shapes", rng, "relu")
        torch.manual_seed(i)
        module = families.build_module(architecture).train()
        with torch.no_grad():  # running statistics away from (0, 1), as after training
            module(torch.randn(8, 1, 16, 16) * 2.0)
        out.append(
            families.checkpoint_from_module(
                module.eval(),
                id=f"resnet{i}",
                family="resnet",
                dataset="shapes",
                architecture=architecture,
                properties={"test_accuracy": 0.2 + 0.1 * i, "train_accuracy": 0.3 + 0.1 * i},
            )
        )
    return out


WILD_PARK_CONFIG = {
    "n_layers": 3,
    "n_classes": 10,
    "channels": [3, 8, 16, 8],
    "kernel_size": [3, 5, 3],
    "stride": [1, 1, 1],
    "padding": [1, 2, 1],
    "residual": [-1, -1, 0],
    "activation": ["relu", "gelu", "sigmoid"],
}


def test_residual_networks_in_a_safetensors_folder_a_resnet18_trial_and_wild_park_runs(tiny_zoo, tmp_path):
    # A folder of safetensors files with batch norms and skips, a Model Zoos ResNet-18 trial (11 M
    # parameters, torchvision names, batch-norm buffers) and CNN Wild Park runs (an OmegaConf config and
    # Ray's state in each pickle), all on the S3 server.
    folder = f"{tiny_zoo}/public/safetensors"
    write_zoo(folder, _resnets(4))
    trials = f"{tiny_zoo}/public/resnet18"
    torch.manual_seed(0)
    reference = TorchvisionResNet18().train()
    with torch.no_grad():
        reference(torch.randn(4, 3, 32, 32))
    params = {"model::type": "Resnet18", "model::o_dim": 10, "model::channels_in": 3, "model::nlin": "relu"}
    write_trial(trials, "resnet18_trial_0", reference.eval().state_dict(), params)

    park = f"{tiny_zoo}/public/wildpark"
    for run in range(3):
        torch.manual_seed(run)
        write_wild_park(
            park,
            f"run{run}/checkpoint_000005",
            WildParkReference(WILD_PARK_CONFIG),
            WILD_PARK_CONFIG,
            5,
            0.3 + run / 10,
        )

    kinds_of = {
        folder: {"conv2d", "norm", "norm_stats", "linear"},
        trials: {"conv2d", "norm", "norm_stats", "linear"},
        park: {"conv2d", "linear"},
    }
    zoos = ((folder, 4), (trials, 1), (park, 3))
    for uri, count in zoos:
        summary = prepare_chunk_records(uri, 16, cache_root=f"{tiny_zoo}/public/cache")
        # Every network read, none rejected, every one probed: its architecture is known from the layout.
        assert (summary.records, summary.rejected, summary.probed) == (count, 0, count), uri
        kinds = {k for row in load_chunk_dataset(summary.output).take_all() for k in row["layer_kind"]}
        assert kinds == kinds_of[uri], uri

    (resnet18,) = list(read_zoo(trials))
    assert resnet18.num_params == 11_173_962 and resnet18.family == "resnet18"

    # An encoder trained on the tiny zoo's plain CNNs and MLPs predicts both.
    config = from_dict(
        {
            "zoo": f"{tiny_zoo}/zoo",
            "storage": f"{tiny_zoo}/runs",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "epochs": 1,
            "num_workers": 1,
            "statnn": False,
        },
        dataclasses.replace(debug(), invariance_weight=0.1),
    )
    final = run_training(config, log=lambda _: None)
    for uri, count in zoos:
        result = predict_zoo(final["run_id"], uri, tracking_uri=final["tracking_uri"])
        assert len(result["rows"]) == count and result["unprobed"] == 0 and not result["rejected"]
        assert all(np.isfinite(r["prediction"]) for r in result["rows"])
