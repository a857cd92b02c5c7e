"""The Model Zoos trial layout: round trips, epoch choice, the dropout index trap, unsafe pickles."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from pipeline.zoo import Checkpoint, Layer, Rejection, ZooError, modelzoos, open_zoo, read_part

CNN_S = [
    ("conv2d", (8, 1, 5, 5)),
    ("conv2d", (6, 8, 5, 5)),
    ("conv2d", (4, 6, 2, 2)),
    ("linear", (20, 36)),
    ("linear", (10, 20)),
]
CNN_L = [
    ("conv2d", (16, 3, 3, 3)),
    ("conv2d", (32, 16, 3, 3)),
    ("conv2d", (15, 32, 3, 3)),
    ("linear", (20, 60)),
    ("linear", (10, 20)),
]
MLP = [("linear", (16, 4)), ("linear", (3, 16))]


def make_checkpoint(i: int, shapes=CNN_S, family="cnn-s", properties=None, epochs=3) -> Checkpoint:
    rng = np.random.default_rng(i)
    layers = [
        Layer(
            f"l{j}",
            kind,
            rng.normal(size=shape).astype(np.float32),
            rng.normal(size=shape[0]).astype(np.float32),
        )
        for j, (kind, shape) in enumerate(shapes)
    ]
    if properties is None:
        properties = {
            "test_accuracy": 0.5 + i / 100,
            "train_accuracy": 0.7,
            "test_loss": 1.1,
            "train_loss": 0.4,
        }
    hyper = {"lr": 0.003, "optimizer": "adam", "seed": i, "epochs": epochs, "dropout": 0.1}
    return Checkpoint(f"trial_{i:03d}", family, "digits", layers, properties, hyper)


def read_all(uri: str, **options):
    listing = open_zoo(uri, **options)
    items = [item for part in listing.parts for item in read_part(json.loads(json.dumps(part)))]
    accepted = [x for x in items if isinstance(x, Checkpoint)]
    rejected = [x for x in items if isinstance(x, Rejection)]
    assert len(accepted) + len(rejected) == listing.num_listed
    return accepted, rejected, listing


def add_epoch(trial_dir, epoch: int, state: dict, line: dict | None) -> None:
    """Another checkpoint_<N> and its result.json line, as Ray Tune appends them."""
    (trial_dir / f"checkpoint_{epoch:06d}").mkdir()
    torch.save(state, trial_dir / f"checkpoint_{epoch:06d}" / "checkpoints")
    if line is not None:
        with open(trial_dir / "result.json", "a") as f:
            f.write(json.dumps({"training_iteration": epoch, **line}) + "\n")


def test_round_trip_keeps_weights_family_properties_and_writes_the_public_layout(tmp_path):
    zoo = tmp_path / "zoo"
    written = [make_checkpoint(i) for i in range(3)] + [make_checkpoint(9, shapes=MLP, family="mlp")]
    modelzoos.write_zoo(str(zoo), written)

    trial = zoo / "trial_000"
    state = torch.load(trial / "checkpoint_000003" / "checkpoints", weights_only=True)
    assert list(state) == [f"module_list.{i}.{w}" for i in (0, 2, 4, 6, 8) for w in ("weight", "bias")]
    params = json.loads((trial / "params.json").read_text())
    assert (
        params["optim::lr"] == 0.003
        and params["optim::optimizer"] == "adam"
        and params["model::dropout"] == 0.1
    )
    assert params["training::epochs_train"] == 3 and params["seed"] == 0
    result = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert result == [
        {
            "training_iteration": 3,
            "epoch": 3,
            "test_acc": 0.5,
            "train_acc": 0.7,
            "test_loss": 1.1,
            "train_loss": 0.4,
        }
    ]

    accepted, rejected, listing = read_all(str(zoo))
    assert listing.format == "modelzoos" and not rejected
    assert [c.id for c in accepted] == [c.id for c in written]
    assert [c.family for c in accepted] == ["cnn-s"] * 3 + ["mlp"]
    for got, want in zip(accepted, written, strict=True):
        assert got.dataset == "digits" and got.num_params == want.num_params
        assert got.hyperparameters["epoch"] == 3
        for a, b in zip(got.layers, want.layers, strict=True):
            assert a.kind == b.kind and np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert got.properties == pytest.approx(
            {**want.properties, "generalization_gap": 0.7 - want.properties["test_accuracy"]}
        )
    assert accepted[0].num_params == 2464


def test_epoch_selection_last_by_default_or_as_asked(tmp_path):
    zoo = tmp_path / "zoo"
    written = [make_checkpoint(i, epochs=1) for i in range(2)]
    modelzoos.write_zoo(str(zoo), written)
    later = make_checkpoint(50)
    state = {
        f"module_list.{2 * j}.{w}": torch.from_numpy(getattr(layer, w))
        for j, layer in enumerate(later.layers)
        for w in ("weight", "bias")
    }
    add_epoch(zoo / "trial_000", 2, state, {"test_acc": 0.8, "train_acc": 0.9})

    last, rejected, listing = read_all(str(zoo))
    assert not rejected and listing.options == {"epoch": None}
    assert last[0].hyperparameters["epoch"] == 2 and last[0].properties["test_accuracy"] == 0.8
    assert np.array_equal(last[0].layers[0].weight, later.layers[0].weight)
    assert last[1].hyperparameters["epoch"] == 1

    first, rejected, _ = read_all(str(zoo), epoch=1)
    assert not rejected and first[0].properties["test_accuracy"] == 0.5
    assert np.array_equal(first[0].layers[0].weight, written[0].layers[0].weight)

    accepted, rejected, _ = read_all(str(zoo), epoch=2)
    assert [c.id for c in accepted] == ["trial_000"]
    assert [r.id for r in rejected] == ["trial_001"] and "no checkpoint for epoch 2" in rejected[0].reason
    assert open_zoo(str(zoo), epoch=2).fingerprint != open_zoo(str(zoo)).fingerprint


def test_dropout_shifted_module_indices_are_ordered_numerically(tmp_path):
    zoo = tmp_path / "zoo"
    modelzoos.write_zoo(str(zoo), [make_checkpoint(0, epochs=1)])
    c = make_checkpoint(7)
    # Dropout modules shift indices: 0, 4, 8, 11, 13. "11" < "4" as text: a string sort would scramble them.
    state = {}
    for index, layer in zip((0, 4, 8, 11, 13), c.layers, strict=True):
        state[f"module_list.{index}.bias"] = torch.from_numpy(layer.bias)  # bias first: pairing is by prefix
        state[f"module_list.{index}.weight"] = torch.from_numpy(layer.weight)
    add_epoch(zoo / "trial_000", 2, state, {"test_acc": 0.6, "train_acc": 0.6})
    (ckpt,), rejected, _ = read_all(str(zoo))
    assert not rejected and ckpt.family == "cnn-s"
    assert [layer.name for layer in ckpt.layers] == [f"module_list.{i}" for i in (0, 4, 8, 11, 13)]
    for a, b in zip(ckpt.layers, c.layers, strict=True):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the raw pickle
def test_a_pickle_that_runs_code_is_rejected_and_never_runs(tmp_path):
    zoo = tmp_path / "zoo"
    modelzoos.write_zoo(str(zoo), [make_checkpoint(i) for i in range(2)])
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pt"
    torch.save({"module_list.0.weight": _RunsCode(marker)}, payload)
    torch.load(payload, weights_only=False)  # proves the payload is live: a full unpickle runs it
    assert marker.exists()
    marker.unlink()
    (zoo / "trial_000" / "checkpoint_000003" / "checkpoints").write_bytes(payload.read_bytes())
    (zoo / "trial_001" / "checkpoint_000003" / "checkpoints").write_bytes(pickle.dumps(_RunsCode(marker)))

    accepted, rejected, _ = read_all(str(zoo))
    assert not accepted and len(rejected) == 2
    assert all("refused to unpickle" in r.reason for r in rejected), rejected
    assert not marker.exists()


def test_bad_trials_are_rejected_with_reasons(tmp_path):
    zoo = tmp_path / "zoo"
    nan = make_checkpoint(0)
    nan.layers[3].weight[0, 0] = np.nan
    wrong_count = make_checkpoint(1, shapes=MLP, family="cnn-s")  # declares CNN-s, has an MLP's weights
    no_accuracy = make_checkpoint(2, properties={"train_accuracy": 0.9})
    written = [nan, wrong_count, no_accuracy] + [make_checkpoint(i) for i in range(3, 8)]
    modelzoos.write_zoo(str(zoo), written)
    checkpoint = zoo / "trial_003" / "checkpoint_000003" / "checkpoints"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # truncated
    os.remove(zoo / "trial_004" / "result.json")
    os.remove(zoo / "trial_005" / "checkpoint_000003" / "checkpoints")
    (zoo / "trial_006" / "result.json").write_text('{"training_iteration": 1, "test_acc": 0.5}\n{"trunc')
    bn = {"module_list.0.weight": torch.ones(8), "module_list.0.bias": torch.zeros(8)}
    torch.save(bn, zoo / "trial_007" / "checkpoint_000003" / "checkpoints")

    accepted, rejected, listing = read_all(str(zoo))
    assert listing.num_listed == 8 and not accepted
    reasons = {r.id: r.reason for r in rejected}
    assert "non-finite" in reasons["trial_000"]
    assert "contradicts family 'cnn-s'" in reasons["trial_001"]
    assert "missing property 'test_accuracy'" in reasons["trial_002"]
    assert "corrupt or truncated" in reasons["trial_003"]
    assert "missing result.json" in reasons["trial_004"]
    assert "missing file checkpoint_000003/checkpoints" in reasons["trial_005"]
    assert "no line with training_iteration 3 (1 unreadable line(s))" in reasons["trial_006"]
    assert "not a linear or conv layer" in reasons["trial_007"]


def test_percent_accuracies_become_fractions_and_families_come_from_shapes(tmp_path):
    zoo = tmp_path / "zoo"
    modelzoos.write_zoo(
        str(zoo),
        [
            make_checkpoint(0, properties={"test_accuracy": 81.5, "train_accuracy": 90.0}),
            make_checkpoint(1, shapes=CNN_L, family="whatever"),
            make_checkpoint(2, shapes=MLP, family="mlp"),
        ],
    )
    params = zoo / "trial_002" / "params.json"
    params.write_text(
        json.dumps({k: v for k, v in json.loads(params.read_text()).items() if k != "model::type"})
    )
    accepted, rejected, _ = read_all(str(zoo))
    assert not rejected
    assert accepted[0].properties["test_accuracy"] == pytest.approx(0.815)
    assert accepted[0].properties["generalization_gap"] == pytest.approx(0.085)
    assert [c.family for c in accepted] == ["cnn-s", "cnn-l", "modelzoos-unknown"]
    assert accepted[1].num_params == 10853


def test_dataset_from_zoo_config_dump_and_folder_name(tmp_path):
    zoo = tmp_path / "tune_zoo_mnist"
    modelzoos.write_zoo(str(zoo), [make_checkpoint(0)])
    params = zoo / "trial_000" / "params.json"
    params.write_text(
        json.dumps({k: v for k, v in json.loads(params.read_text()).items() if k != "dataset::name"})
    )
    (zoo / "config.json").write_text(json.dumps({"dataset::dump": "/data/fashion_mnist/dataset.pt"}))
    assert read_all(str(zoo))[0][0].dataset == "fashion_mnist"
    (zoo / "config.json").unlink()
    assert read_all(str(zoo))[0][0].dataset == "tune_zoo_mnist"


def test_empty_or_unusable_zoos_raise(tmp_path):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "config.json").write_text("{}")
    (tmp_path / "zoo" / "other").mkdir()
    (tmp_path / "zoo" / "other" / "notes.txt").write_text("x")
    with pytest.raises(ZooError, match="no trial folders"):
        open_zoo(str(tmp_path / "zoo"), "modelzoos")
    with pytest.raises(ZooError, match="no checkpoints"):
        modelzoos.write_zoo(str(tmp_path / "new"), [])
    a, b = make_checkpoint(0), make_checkpoint(1)
    a.id, b.id = "run/1", "run 1"
    with pytest.raises(ZooError, match="same trial folder"):
        modelzoos.write_zoo(str(tmp_path / "new"), [a, b])


def test_parts_group_trials_and_fingerprint_follows_files(tmp_path, monkeypatch):
    monkeypatch.setattr(modelzoos, "TRIALS_PER_PART", 2)
    zoo = tmp_path / "zoo"
    modelzoos.write_zoo(str(zoo), [make_checkpoint(i, shapes=MLP, family="mlp") for i in range(5)])
    listing = open_zoo(str(zoo))
    assert [p["ids"] for p in listing.parts] == [
        ["trial_000", "trial_001"],
        ["trial_002", "trial_003"],
        ["trial_004"],
    ]
    assert open_zoo(str(zoo)).fingerprint == listing.fingerprint
    with open(zoo / "trial_004" / "result.json", "a") as f:
        f.write(json.dumps({"training_iteration": 4}) + "\n")
    assert open_zoo(str(zoo)).fingerprint != listing.fingerprint


def test_a_folder_or_a_link_out_of_the_zoo_where_a_file_belongs_is_rejected_unread(tmp_path):
    zoo = tmp_path / "zoo"
    modelzoos.write_zoo(str(zoo), [make_checkpoint(i) for i in range(4)])
    folder = zoo / "trial_000" / "checkpoint_000003" / "checkpoints"
    os.remove(folder)
    folder.mkdir()
    # A file outside the zoo, readable as a valid checkpoint: the reader must not open it.
    outside = tmp_path / "elsewhere" / "checkpoints"
    outside.parent.mkdir()
    linked = zoo / "trial_001" / "checkpoint_000003" / "checkpoints"
    os.replace(linked, outside)
    linked.symlink_to(outside)
    (zoo / "trial_002" / "params.json").rename(tmp_path / "params.json")
    (zoo / "trial_002" / "params.json").symlink_to(tmp_path / "params.json")
    # A link that stays inside the zoo is read as the file it points to.
    inside = zoo / "trial_003" / "checkpoint_000003" / "checkpoints"
    os.replace(inside, zoo / "trial_003" / "kept")
    inside.symlink_to(zoo / "trial_003" / "kept")

    accepted, rejected, _ = read_all(str(zoo))
    reasons = {r.id: r.reason for r in rejected}
    assert reasons["trial_000"] == "checkpoint_000003/checkpoints is a folder, not a checkpoint file"
    assert reasons["trial_001"] == (
        f"checkpoint_000003/checkpoints is a symbolic link to {outside}, outside the zoo: not read"
    )
    assert "params.json is a symbolic link" in reasons["trial_002"]
    assert [c.id for c in accepted] == ["trial_003"]
