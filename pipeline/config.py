"""Typed run configuration: one dataclass, named presets, checked overrides.

Configs cross Ray boundaries as plain dicts (``asdict``) and come back through :func:`from_dict`,
which rejects unknown keys and wrong types, so a typo in a Tune search space or on the command
line is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field

TASKS = ("random", "cross-dataset", "cross-architecture")
LOSSES = ("mse", "bce")
NORMALIZATIONS = ("fan_in", "none")
LR_SCHEDULES = ("cosine", "constant")


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class TrainConfig:
    # what to learn from
    zoo: str = field(default_factory=lambda: os.path.join(repo_root(), "data", "demo-zoo"))
    format: str = "auto"
    steps: str = "final"
    zoo_epoch: int | None = None
    property: str = "test_accuracy"
    task: str = "random"
    train_datasets: tuple[str, ...] = ()
    test_datasets: tuple[str, ...] = ()
    train_families: tuple[str, ...] = ()
    test_families: tuple[str, ...] = ()
    split_seed: int = 0
    # where things go: chunk-record cache and Ray Train checkpoints live under `storage`
    storage: str = field(default_factory=lambda: os.path.join(repo_root(), "runs"))
    run_name: str | None = None
    experiment: str = "sne"
    tracking_uri: str | None = None
    # data
    chunk_size: int = 16
    normalize: str = "fan_in"
    # encoder
    # Sized for a 2-core laptop: a step of 32 demo checkpoints costs ~5 s per core at hidden 32
    # (11 s at 64); raise them on a cluster.
    hidden: int = 32
    heads: int = 4
    inducing_points: int = 8
    chunk_micro_batch: int = 4096
    positional_encoding: bool = True
    embedding_norm: bool = True  # batch-standardised embedding before the head (see EncoderConfig)
    layer_statistics: bool = True  # per-layer summaries beside the chunk attention (see EncoderConfig)
    # optimisation
    loss: str = "mse"
    invariance_weight: float = 0.1
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4  # Adam at 1e-3 diverged in 5 of 8 overfit runs of this encoder; 3e-4 in none
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # linear warm-up over the first 5% of steps, then cosine decay; or "constant"
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0
    # resources
    num_workers: int = 2
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    max_failures: int = 2
    statnn: bool = True

    def validate(self) -> TrainConfig:
        """Raise ValueError for settings that cannot work together; return self."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.task == "cross-dataset" and not (self.train_datasets and self.test_datasets):
            raise ValueError("task cross-dataset needs --train-datasets and --test-datasets")
        if self.task == "cross-architecture" and not (self.train_families and self.test_families):
            raise ValueError("task cross-architecture needs --train-families and --test-families")
        if self.loss == "bce" and self.property not in ("test_accuracy", "train_accuracy"):
            raise ValueError(f"loss bce needs a property in [0, 1]; {self.property!r} is not one")
        for name in ("chunk_size", "hidden", "heads", "epochs", "batch_size", "chunk_micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.num_workers < 0 or self.cpus_per_worker <= 0:
            raise ValueError("num_workers must be >= 0 and cpus_per_worker > 0")
        if self.invariance_weight < 0:
            raise ValueError(f"invariance_weight must be >= 0, got {self.invariance_weight}")
        return self


# Named presets: functions, so each call returns a fresh config.
def demo() -> TrainConfig:
    """The embedded default: the demo zoo on a 2-core laptop."""
    return TrainConfig()


def debug() -> TrainConfig:
    """Tiny and fast: for tests and smoke runs."""
    return TrainConfig(hidden=16, heads=2, inducing_points=4, epochs=2, batch_size=8, num_workers=2)


PRESETS = {"demo": demo, "debug": debug}


def _coerce(name: str, hint, value):
    """Check/convert one value against a field's type hint; ValueError names the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(name, args[0], v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
        ):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(overrides: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A config from ``base`` (default: the demo preset) with checked overrides."""
    base = base or demo()
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(hints))}")
    values = {k: _coerce(k, hints[k], v) for k, v in overrides.items()}
    return dataclasses.replace(base, **values).validate()


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def add_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per config field (underscores become dashes); defaults stay in the dataclass."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper())
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="demo", help="starting point for the config"
    )


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The config a parsed command line asks for: preset, then every flag that was given."""
    hints = typing.get_type_hints(TrainConfig)
    given = {k: v for k, v in vars(args).items() if k in hints and v is not None}
    return from_dict(given, PRESETS[args.preset]())
