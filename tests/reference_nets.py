"""Networks laid out as public generators lay them out, built without pipeline.families, for tests that
check the project rebuilds what a stored checkpoint computes."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import storage


class _Block(nn.Module):
    """torchvision's BasicBlock: conv1, bn1, relu, conv2, bn2, + downsample(x), relu."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet18(nn.Module):
    """The Model Zoos ResNet-18: torchvision's module names, a 3×3 stride-1 stem, no max pooling."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin = (64, 128, 256, 512), 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(_Block(cin, width, stride), _Block(width, width, 1)))
            cin = width
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def write_trial(root: str, name: str, state: dict, params: dict) -> None:
    """A Model Zoos trial folder (local path or s3:// URI): params.json, result.json, checkpoint_000003."""
    trial = storage.join(str(root), name)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes_atomic(storage.join(trial, "checkpoint_000003", "checkpoints"), buffer.getvalue())
    storage.write_bytes_atomic(storage.join(trial, "params.json"), json.dumps(params).encode())
    line = {"training_iteration": 3, "train_acc": 0.61, "test_acc": 0.55, "train_loss": 1.1, "test_loss": 1.3}
    storage.write_bytes_atomic(storage.join(trial, "result.json"), (json.dumps(line) + "\n").encode())


class WildParkReference(nn.Module):
    """The Wild Park CNN as its sampler defines it, written here independently of pipeline.families."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        c = cfg["channels"]
        self.cfg = cfg
        self.layers = nn.ModuleList(
            nn.Conv2d(c[i], c[i + 1], cfg["kernel_size"][i], cfg["stride"][i], cfg["padding"][i])
            for i in range(cfg["n_layers"])
        )
        self.fc = nn.Linear(c[-1], cfg["n_classes"])

    def forward(self, x):
        acts = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "leaky_relu": F.leaky_relu}
        saved = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            r = self.cfg["residual"][i]
            if r > -1:
                ch = min(self.cfg["channels"][r + 1], self.cfg["channels"][i + 1])
                x = x.clone()
                x[:, :ch] += saved[r][:, :ch]
            x = acts[self.cfg["activation"][i]](x)
            if i in self.cfg["residual"]:
                saved[i] = x
        return self.fc(x.mean(dim=(2, 3)))


def write_wild_park(
    root: str,
    name: str,
    net: nn.Module,
    config: dict,
    iteration: int,
    accuracy: float,
    extra: dict | None = None,
) -> None:
    """``<root>/<name>/checkpoint.pt`` as the Wild Park trainer saves it: the state dict, the optimizer, an
    OmegaConf config and Ray Tune's trainable state (numpy scalars in its last result)."""
    from omegaconf import OmegaConf

    optimizer = torch.optim.Adam(net.parameters())
    state = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": OmegaConf.create(config),
        "iteration": iteration,
        "timesteps_total": None,
        "time_total": 12.5,
        "episodes_total": None,
        "last_result": {"test/acc": np.float64(accuracy), "test/loss": np.float64(1.7)},
        "ray_version": "2.7.0",
        **(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes_atomic(storage.join(root, name, "checkpoint.pt"), buffer.getvalue())
