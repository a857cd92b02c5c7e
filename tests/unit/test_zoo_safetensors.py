"""The safetensors folder format: any state dict in, layers out, nothing dropped without a reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline import families
from pipeline.zoo import Checkpoint, Rejection, ZooError, detect_format, open_zoo, read_zoo
from pipeline.zoo.tensorfolder import write_zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_like(architecture: dict, seed: int) -> tuple[nn.Module, Checkpoint]:
    torch.manual_seed(seed)
    module = families.build_module(architecture).train()
    with torch.no_grad():
        module(torch.randn(8, *architecture["input_shape"]) * 2.0)
    module.eval()
    checkpoint = families.checkpoint_from_module(
        module,
        id=f"net{seed}",
        family=architecture["family"],
        dataset="digits",
        architecture=architecture,
        properties={"test_accuracy": 0.4 + seed / 10, "train_accuracy": 0.5},
        hyperparameters={"learning_rate": 0.01, "optimizer": "adam"},
    )
    return module, checkpoint


def test_written_checkpoints_read_back_exactly_and_run(tmp_path):
    resnet = families.sample_architecture("resnet", "digits", np.random.default_rng(0), "relu")
    mlp = families.sample_architecture("mlp", "digits", np.random.default_rng(1), "tanh")
    (module, first), (_, second) = _trained_like(resnet, 1), _trained_like(mlp, 2)
    write_zoo(str(tmp_path), [first, second])
    assert detect_format(str(tmp_path)) == "safetensors"

    read = {c.id: c for c in read_zoo(str(tmp_path))}
    for original in (first, second):
        again = read[original.id]
        assert isinstance(again, Checkpoint), again
        assert [(x.name, x.kind) for x in again.layers] == [(x.name, x.kind) for x in original.layers]
        for a, b in zip(again.layers, original.layers, strict=True):
            np.testing.assert_array_equal(a.weight, b.weight)
            assert (a.bias is None) == (b.bias is None)
        assert again.properties["test_accuracy"] == original.properties["test_accuracy"]
        assert (again.family, again.dataset) == (original.family, original.dataset)
        assert again.hyperparameters["optimizer"] == "adam" and again.hyperparameters["learning_rate"] == 0.01
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():  # module order kept: the architecture runs on the read weights
        assert torch.equal(families.module_from_checkpoint(read["net1"])(x), module(x))


class _Mixed(nn.Module):
    """Layers a plain state dict holds beyond conv / linear: a table, attention with fused q/k/v, norms."""

    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(20, 8)
        self.attention = nn.MultiheadAttention(8, 2)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_a_plain_state_dict_is_read_as_named_layers(tmp_path):
    torch.manual_seed(0)
    net = _Mixed()
    save_file(net.state_dict(), str(tmp_path / "mixed.safetensors"))  # no module order in the file
    (tmp_path / "properties.csv").write_text(
        "file,test_accuracy,train_accuracy,dataset\nmixed.safetensors,0.7,0.8,text\n"
    )

    (checkpoint,) = list(read_zoo(str(tmp_path)))
    assert isinstance(checkpoint, Checkpoint), checkpoint
    kinds = {layer.name: layer.kind for layer in checkpoint.layers}
    assert kinds["token_embedding"] == "embedding"
    assert [kinds[f"attention.{p}"] for p in "qkv"] == ["linear"] * 3
    assert kinds["attention.out_proj"] == "linear" and kinds["norm"] == "norm"
    assert kinds["head.1"] == "norm" and kinds["head.1.running"] == "norm_stats"
    # Natural order of the names: head.0 before head.1 before head.3 (module order of a Sequential).
    names = [layer.name for layer in checkpoint.layers]
    assert names.index("head.0") < names.index("head.1") < names.index("head.3")
    q = next(layer for layer in checkpoint.layers if layer.name == "attention.q")
    np.testing.assert_array_equal(q.weight, net.attention.in_proj_weight.detach().numpy()[:8])
    assert checkpoint.num_params == sum(p.numel() for p in net.parameters())
    assert checkpoint.dataset == "text" and checkpoint.family == "unknown"


def test_every_unreadable_entry_is_rejected_with_its_reason(tmp_path):
    _, good = _trained_like(
        families.sample_architecture("mlp", "digits", np.random.default_rng(1), "tanh"), 1
    )
    write_zoo(str(tmp_path), [good])
    save_file({"w.weight": torch.zeros(2, 2, 2, 2, 2)}, str(tmp_path / "rank5.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_file({"a.weight": torch.zeros(3, 4)}, str(tmp_path / "unlisted.safetensors"))
    table = (tmp_path / "properties.csv").read_text().splitlines()
    header = table[0].split(",")
    extra = []
    for file, accuracy in (("rank5", "0.5"), ("broken", "0.5"), ("gone", "0.5"), ("net1", "high")):
        row = dict.fromkeys(header, "")
        row |= {
            "file": f"{file}.safetensors",
            "id": f"{file}-row",
            "test_accuracy": accuracy,
            "train_accuracy": "0.6",
        }
        extra.append(",".join(row[h] for h in header))
    (tmp_path / "properties.csv").write_text("\n".join([*table, *extra]) + "\n")

    listing = open_zoo(str(tmp_path))
    items = list(read_zoo(str(tmp_path)))
    assert len(items) == listing.num_listed == 6
    reasons = {item.id: item.reason for item in items if isinstance(item, Rejection)}
    assert "net1" not in reasons
    assert "rank-5 weight" in reasons["rank5-row"]
    assert "not a readable safetensors file" in reasons["broken-row"]
    assert "gone.safetensors is missing" in reasons["gone-row"]
    assert "'high' is not a number" in reasons["net1-row"]
    assert "no row in properties.csv" in reasons["unlisted"]


def test_a_folder_without_its_table_is_refused(tmp_path):
    save_file({"a.weight": torch.zeros(3, 4)}, str(tmp_path / "a.safetensors"))
    (tmp_path / "properties.csv").write_text("name,test_accuracy\na,0.5\n")
    with pytest.raises(ZooError, match="needs a 'file' column"):
        open_zoo(str(tmp_path))
