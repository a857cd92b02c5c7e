import argparse
import dataclasses

import pytest

from pipeline import config as cfg


def test_overrides_are_type_checked_and_converted():
    c = cfg.from_dict(
        {"chunk_size": "32", "lr": "0.01", "positional_encoding": "false", "train_datasets": "a,b"}
    )
    assert c.chunk_size == 32 and c.lr == 0.01
    assert c.positional_encoding is False
    assert c.train_datasets == ("a", "b")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"chunk_sise": 8}, "unknown config key(s): chunk_sise"),
        ({"chunk_size": "eight"}, "chunk_size: expected an integer"),
        ({"chunk_size": 2.5}, "chunk_size: expected an integer"),
        ({"positional_encoding": "maybe"}, "positional_encoding: expected a boolean"),
        ({"lr": True}, "lr: expected a number"),
        ({"task": "sideways"}, "task must be one of"),
        ({"task": "cross-dataset", "train_datasets": "digits"}, "needs --train-datasets and --test-datasets"),
        ({"hidden": 30, "heads": 4}, "multiple of heads"),
        ({"loss": "bce", "property": "frequency"}, "loss bce needs a property in [0, 1]"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of"),
        ({"grad_clip": -1}, "grad_clip must be >= 0"),
        ({"test_fraction": 1.0}, "test_fraction must be between 0 and 1"),
        (
            {
                "task": "cross-architecture",
                "train_families": "mlp",
                "test_families": "cnn",
                "test_fraction": 0.2,
            },
            "test_fraction applies to the random task only",
        ),
    ],
)
def test_bad_overrides_are_rejected_with_the_field_named(overrides, message):
    with pytest.raises(ValueError) as e:
        cfg.from_dict(overrides)
    assert message in str(e.value)


def test_set_pairs_from_a_command_line_become_overrides():
    settings = cfg.parse_settings(["invariance-weight=0", " hidden = 8", "train_datasets=a,b=c"])
    assert settings == {"invariance_weight": "0", "hidden": "8", "train_datasets": "a,b=c"}
    assert cfg.from_dict(settings).invariance_weight == 0.0
    for bad in ("hidden", "=8"):
        with pytest.raises(ValueError, match="--set takes KEY=VALUE"):
            cfg.parse_settings([bad])


def test_presets_are_fresh_objects():
    a, b = cfg.demo(), cfg.demo()
    a.epochs = 1
    assert b.epochs != 1


def test_round_trip_through_a_plain_dict():
    c = cfg.from_dict({"task": "cross-architecture", "train_families": ("mlp",), "test_families": ("cnn",)})
    assert cfg.from_dict(cfg.to_dict(c)) == c


def test_command_line_flags_map_onto_the_config():
    p = argparse.ArgumentParser()
    cfg.add_arguments(p)
    args = p.parse_args(
        ["--preset", "debug", "--chunk-size", "8", "--no-positional-encoding", "--invariance-weight", "0"]
    )
    c = cfg.from_args(args)
    assert (c.chunk_size, c.positional_encoding, c.invariance_weight) == (8, False, 0.0)
    assert c.hidden == cfg.debug().hidden  # untouched fields keep the preset's value
    with pytest.raises(SystemExit):
        p.parse_args(["--no-such-flag", "1"])


def test_learning_rate_warms_up_then_decays_to_zero():
    from pipeline.train import lr_factor

    factors = [lr_factor(step, 100, "cosine") for step in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)  # 5 warm-up steps
    assert all(a >= b for a, b in zip(factors[4:-1], factors[5:], strict=True))  # then never rises
    assert factors[-1] < 0.01
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0)
    assert {lr_factor(s, 100, "constant") for s in (0, 50, 99)} == {1.0}


def test_every_flag_explains_itself_and_shows_its_default():
    assert set(cfg.FIELD_HELP) == {f.name for f in dataclasses.fields(cfg.TrainConfig)}
    p = argparse.ArgumentParser()
    cfg.add_arguments(p)
    text = " ".join(p.format_help().split())  # undo argparse's line wrapping
    assert "--chunk-size CHUNK_SIZE values per chunk" in text
    assert "(default: 16)" in text and "(default: 0.002)" in text
    assert "5% warm-up" in text  # a literal % survives argparse's formatting
    shown = dataclasses.replace(cfg.demo(), num_workers=1)
    p = argparse.ArgumentParser()
    cfg.add_arguments(p, shown=shown)
    text = " ".join(p.format_help().split())
    assert "Ray Train workers (DDP processes) (default: 1)" in text
    assert p.parse_args([]).num_workers is None  # showing a default does not set it
