"""The zoo generator without Ray: planning, training one checkpoint, shards, resumption."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline import families, generate
from pipeline.generate import FORMAT_FAMILY
from pipeline.zoo import native
from pipeline.zoo.checkpoint import validate
from pipeline.zoo.listing import read_zoo

GOOD = {
    "optimizer": "adam",
    "learning_rate": 3e-3,
    "init": "default",
    "init_std": 0.05,
    "activation": "relu",
    "dropout": 0.0,
    "weight_decay": 0.0,
    "train_fraction": 1.0,
    "epochs": 3,
    "batch_size": 64,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(family: str, dataset: str, seed: int = 1, snapshots: bool = False, **hyper) -> dict:
    hyperparameters = {**GOOD, **hyper}
    architecture = families.sample_architecture(
        family,
        dataset,
        np.random.default_rng(seed),
        hyperparameters["activation"],
        hyperparameters["dropout"],
    )
    return {
        "id": f"{family}-{dataset}-{seed}",
        "family": family,
        "dataset": dataset,
        "seed": seed,
        "architecture": families.architecture_json(architecture),
        "hyperparameters": hyperparameters,
        "snapshots": snapshots,
    }


def test_plan_is_deterministic_and_mixed():
    specs = generate.plan("demo", seed=0)
    assert specs == generate.plan("demo", seed=0)
    assert specs != generate.plan("demo", seed=1)
    assert len(specs) == 300 and len({s["id"] for s in specs}) == 300
    families_seen = Counter(s["family"] for s in specs)
    assert set(families_seen) == {"smallcnn", "cnn-s", "mlp", "cnn"} and min(families_seen.values()) >= 20
    assert set(s["dataset"] for s in specs) == {"digits", "shapes", "textures", "mnist1d"}
    # Hyperparameters vary enough for accuracies to spread.
    assert {s["hyperparameters"]["optimizer"] for s in specs} == {"sgd", "adam"}
    assert {s["hyperparameters"]["activation"] for s in specs} == {"relu", "tanh", "gelu"}
    assert len({s["hyperparameters"]["epochs"] for s in specs}) >= 5
    rates = [s["hyperparameters"]["learning_rate"] for s in specs]
    assert max(rates) / min(rates) > 100


def test_a_smaller_preset_is_a_prefix_of_a_larger_one():
    assert generate.plan("small", seed=3)[:300] == generate.plan("demo", seed=3)


def test_public_formats_restrict_the_family():
    assert {s["family"] for s in generate.plan("demo", format="smallcnnzoo")} == {"smallcnn"}
    assert all(s["snapshots"] for s in generate.plan("demo", format="smallcnnzoo"))
    assert {s["family"] for s in generate.plan("demo", format="modelzoos")} == {"cnn-s"}
    inr = generate.plan("inr")
    assert len(inr) == 3000 and {s["family"] for s in inr} == {"siren"}
    for coefficient in ("frequency", "amplitude"):  # the DWS sine-wave data's U(0, 10)
        values = [s["hyperparameters"][coefficient] for s in inr]
        assert min(values) >= 0.0 and max(values) <= 10.0 and max(values) > 9.9
    with pytest.raises(ValueError, match="cannot hold"):
        generate.plan("inr", format="smallcnnzoo")
    with pytest.raises(ValueError, match="unknown preset"):
        generate.plan("huge")
    with pytest.raises(ValueError, match="unknown format"):
        generate.plan("demo", format="tfrecords")


def test_a_zoo_of_one_dataset_and_a_given_count():
    """The public Small CNN Zoo holds one dataset per folder: --datasets keeps every network on it."""
    specs = generate.plan("small", seed=3, format="smallcnnzoo", datasets=("digits",), count=40)
    assert len(specs) == 40 and {(s["family"], s["dataset"]) for s in specs} == {("smallcnn", "digits")}
    # A smaller count is a prefix of a larger one.
    assert specs[:10] == generate.plan("small", seed=3, format="smallcnnzoo", datasets=("digits",), count=10)
    mixed = generate.plan("demo", datasets=("mnist1d",))
    assert {s["dataset"] for s in mixed} == {"mnist1d"} and {s["family"] for s in mixed} <= {"mlp", "cnn"}
    with pytest.raises(ValueError, match="trains on dataset 'mnist1d'"):
        generate.plan("demo", format="smallcnnzoo", datasets=("mnist1d",))
    with pytest.raises(ValueError, match="trains on dataset 'cifar'"):
        generate.plan("demo", datasets=("cifar",))
    with pytest.raises(ValueError, match="count must be between 1 and"):
        generate.plan("demo", count=301)


def test_large_preset_puts_networks_of_1_to_25_million_parameters_beside_small_ones():
    specs = generate.plan("large")
    big = [s for s in specs if s["family"] == "resnet18"]
    assert (
        len(specs) == 48
        and 16 <= len(big) <= 32
        and {"smallcnn", "mlp", "cnn"} <= {s["family"] for s in specs}
    )
    sizes = []
    for spec in big:
        module = families.build_module(spec["architecture"])
        sizes.append(sum(p.numel() for p in module.parameters()))
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
        # Trained briefly, with the published layers: a 25 M-parameter member costs minutes, not hours.
        hyper = spec["hyperparameters"]
        assert hyper["epochs"] <= 4 and hyper["train_fraction"] <= 0.6
        assert hyper["activation"] == "relu" and hyper["dropout"] == 0.0
    assert 1_000_000 < min(sizes) < 2_000_000 and 20_000_000 < max(sizes) < 26_000_000
    assert len(set(sizes)) >= 5


def test_a_big_network_trains_for_real():
    spec = _spec("resnet18", "textures", epochs=2, train_fraction=0.4, optimizer="sgd", learning_rate=0.01)
    [checkpoint] = generate.train_checkpoint(spec)
    assert checkpoint.num_params > 1_000_000 and validate(checkpoint) is None
    # Chance is 0.1 on ten balanced classes; these settings reach 0.45 in 9 s of one core.
    assert checkpoint.properties["train_accuracy"] > 0.25 and checkpoint.properties["test_accuracy"] > 0.2
    assert checkpoint.hyperparameters["num_params"] == checkpoint.num_params


def test_shards_group_consecutive_specs():
    shards = generate.shards_of(generate.plan("demo"), 16)
    assert [s["name"] for s in shards[:2]] == ["shard-00000", "shard-00001"]
    assert sum(len(s["specs"]) for s in shards) == 300 and len(shards) == 19


def test_same_spec_gives_bit_identical_weights():
    spec = _spec("cnn", "digits", epochs=1, train_fraction=0.3, dropout=0.2)
    first, second = generate.train_checkpoint(spec), generate.train_checkpoint(spec)
    for a, b in zip(first[0].layers, second[0].layers, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
    assert first[0].properties == second[0].properties
    other = generate.train_checkpoint({**spec, "seed": 2})
    assert not np.array_equal(other[0].layers[0].weight, first[0].layers[0].weight)


def test_trained_checkpoint_really_learns_and_carries_its_record():
    [checkpoint] = generate.train_checkpoint(_spec("smallcnn", "digits"))
    props = checkpoint.properties
    assert props["test_accuracy"] > 0.5  # chance is 0.1: the network learned digits
    assert props["generalization_gap"] == pytest.approx(props["train_accuracy"] - props["test_accuracy"])
    assert props["test_loss"] > 0 and props["train_loss"] > 0
    hyper = checkpoint.hyperparameters
    assert hyper["family"] == "smallcnn" and hyper["dataset"] == "digits" and hyper["seed"] == 1
    assert hyper["num_params"] == checkpoint.num_params == 4970
    assert hyper["learning_rate"] == GOOD["learning_rate"] and hyper["diverged_at_step"] is None
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in hyper.values())
    assert validate(checkpoint) is None
    # The stored architecture rebuilds the network and reproduces its test accuracy.
    from pipeline import datasets

    data = datasets.load("digits")
    module = families.module_from_checkpoint(checkpoint)
    with torch.no_grad():
        predicted = module(torch.tensor(data.x_test)).argmax(dim=1).numpy()
    assert (predicted == data.y_test).mean() == pytest.approx(props["test_accuracy"])


def test_smallcnnzoo_snapshots_follow_its_steps():
    checkpoints = generate.train_checkpoint(
        _spec("smallcnn", "shapes", epochs=1, train_fraction=0.5, snapshots=True)
    )
    assert [c.hyperparameters["step"] for c in checkpoints] == list(generate.SMALLCNNZOO_STEPS)
    assert {c.hyperparameters["modeldir"] for c in checkpoints} == {"smallcnn-shapes-1"}
    assert len({c.id for c in checkpoints}) == 9
    assert not np.array_equal(checkpoints[0].layers[0].weight, checkpoints[-1].layers[0].weight)


def test_a_diverging_run_still_yields_finite_weights():
    spec = _spec("mlp", "digits", optimizer="sgd", learning_rate=1e30, init="normal", init_std=0.3, epochs=2)
    [checkpoint] = generate.train_checkpoint(spec)
    assert checkpoint.hyperparameters["diverged_at_step"] is not None
    assert validate(checkpoint) is None


def test_siren_fits_its_sine_wave():
    spec = generate.plan("inr", seed=0)[0]
    [checkpoint] = generate.train_checkpoint(spec)
    hyper = spec["hyperparameters"]
    assert checkpoint.properties["frequency"] == hyper["frequency"]
    assert checkpoint.properties["amplitude"] == hyper["amplitude"]
    # Fitted: the error is a small fraction of the signal's power a²/2, and training stopped because
    # the fit reached the stopping loss, not because it ran out of steps.
    assert checkpoint.properties["fit_error"] < 0.01 * hyper["amplitude"] ** 2 / 2
    assert checkpoint.properties["fit_error"] <= hyper["stop_loss"]
    assert 0 < checkpoint.hyperparameters["steps"] < hyper["max_steps"]
    assert [tuple(layer.weight.shape) for layer in checkpoint.layers] == [(32, 1), (32, 32), (1, 32)]
    assert validate(checkpoint) is None
    # The network's own output gives its wave back, to within what an MSE of 1e-4 leaves unsaid
    # (what research/zoo_ceiling.py reads as a floor).
    frequency, amplitude = generate.fitted_sine(families.module_from_checkpoint(checkpoint))
    assert abs(frequency - hyper["frequency"]) < 0.01 * hyper["frequency"]
    assert abs(amplitude - hyper["amplitude"]) < 0.01 * hyper["amplitude"]


@pytest.mark.parametrize("frequency, amplitude", [(3.217, 2.5), (9.99, 0.7), (0.3, 5.0), (10.4, 0.05)])
def test_fitted_sine_recovers_an_exact_wave(frequency, amplitude):
    b, a = generate.fitted_sine(lambda x: amplitude * torch.sin(frequency * x))
    assert abs(b - frequency) <= generate.SINE_FREQUENCY_STEP / 2 + 1e-9
    assert abs(a - amplitude) < 1e-3 * amplitude


def test_train_shard_commits_a_readable_native_shard(tmp_path):
    zoo = str(tmp_path / "zoo")
    specs = [_spec("mlp", "mnist1d", seed=s, epochs=1) for s in (1, 2)]
    result = generate.train_shard(zoo, {"name": "shard-00000", "specs": specs})
    assert result["checkpoints"] == 2 and native.finished_shards(zoo) == {"shard-00000"}
    read = list(read_zoo(zoo, "native"))
    assert result["summary"] == [("mlp", ("test_accuracy", c.properties["test_accuracy"])) for c in read]
    assert [c.id for c in read] == [s["id"] for s in specs]
    assert json.loads(read[0].hyperparameters["architecture"]) == json.loads(specs[0]["architecture"])


@pytest.fixture
def cheap_training(monkeypatch):
    """Plans whose members train in a fraction of a second (one short epoch each)."""
    monkeypatch.setattr(
        generate, "sample_hyperparameters", lambda rng: {**GOOD, "epochs": 1, "train_fraction": 0.2}
    )


@pytest.fixture
def tiny_preset(monkeypatch, cheap_training):
    monkeypatch.setitem(generate.PRESETS, "tiny", generate.Preset(4, (("mlp", 1.0),), 2))
    monkeypatch.setitem(generate.PRESETS, "tiny-other", generate.Preset(4, (("smallcnn", 1.0),), 2))
    return "tiny"


def test_make_zoo_skips_finished_shards(tmp_path, tiny_preset):
    zoo = str(tmp_path / "zoo")
    generate._claim(zoo, generate._plan_record(tiny_preset, 0, "native", generate.plan(tiny_preset)))
    for shard in generate.shards_of(generate.plan(tiny_preset), 2):
        generate.train_shard(zoo, shard)
    # Everything is committed: the rerun trains nothing (and so never starts Ray).
    summary = generate.make_zoo(zoo, preset=tiny_preset)
    assert summary["checkpoints"] == 4 and summary["skipped"] == 4 and summary["trained"] == 0
    with pytest.raises(ValueError, match="choose another --out"):
        generate.make_zoo(zoo, preset="tiny-other")


@pytest.mark.parametrize("format", ["smallcnnzoo", "modelzoos"])
def test_public_formats_are_exported_from_a_staging_zoo(tmp_path, monkeypatch, cheap_training, format):
    monkeypatch.setitem(generate.PRESETS, "pair", generate.Preset(2, (("mlp", 1.0),), 2))
    out = str(tmp_path / "zoo")
    specs = generate.plan("pair", format=format)
    staging = generate.staging_uri(out)
    generate._claim(staging, generate._plan_record("pair", 0, format, specs))
    [shard] = generate.shards_of(specs, 2)
    generate.train_shard(staging, shard)

    summary = generate.make_zoo(out, preset="pair", format=format)  # all trained: export only, no Ray
    per_run = len(generate.SMALLCNNZOO_STEPS) if format == "smallcnnzoo" else 1
    assert summary["exported"] == 2 * per_run and summary["staging"] == staging
    options = {"steps": "all"} if format == "smallcnnzoo" else {}
    exported = list(read_zoo(out, format, **options))
    assert len(exported) == 2 * per_run
    assert all(validate(c) is None for c in exported)
    staged = {c.id: c.properties["test_accuracy"] for c in read_zoo(staging, "native")}
    if format == "smallcnnzoo":
        assert {c.id for c in exported} == {
            f"{c.dataset}/{c.hyperparameters['modeldir']}/step{c.hyperparameters['step']}" for c in exported
        }
        finals = {
            f"{c.hyperparameters['modeldir']}-step86": c for c in exported if c.hyperparameters["step"] == 86
        }
    else:
        finals = {c.id: c for c in exported}
    assert set(finals) == {s["id"] + ("-step86" if format == "smallcnnzoo" else "") for s in specs}
    for staged_id, c in finals.items():
        assert c.family == FORMAT_FAMILY[format]
        assert c.properties["test_accuracy"] == pytest.approx(staged[staged_id])


def test_a_job_that_cannot_reach_ray_writes_nothing(tmp_path, tiny_preset, monkeypatch):
    # RAY_ADDRESS naming the jobs API (as a shell set up for `ray job submit` may have it) is refused
    # before the plan is recorded, so a rerun elsewhere does not find a zoo folder holding only a plan.
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    zoo = tmp_path / "zoo"
    with pytest.raises(ValueError, match="jobs API"):
        generate.make_zoo(str(zoo), preset=tiny_preset)
    assert not zoo.exists()
