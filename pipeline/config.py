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
BLOCKS = ("paper", "compact", "deepsets")  # encoder.BLOCKS
ELEMENT_PROJECTIONS = ("linear", "random_features")  # encoder.ELEMENT_PROJECTIONS


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class TrainConfig:
    preset: str = "demo"  # the named starting point (PRESETS); set by the preset, logged with the run
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
    test_fraction: float = 0.5  # random task only; 0.5 is the peers' protocol
    # where things go: chunk-record cache and Ray Train checkpoints live under `storage`
    storage: str = field(default_factory=lambda: os.path.join(repo_root(), "runs"))
    run_name: str | None = None
    experiment: str = "sne"
    tracking_uri: str | None = None
    register_as: str = "sne-encoder"  # the MLflow registered model each run's encoder becomes a version of
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
    hierarchy: bool = (
        True  # chunk → layer → network stages (see EncoderConfig); False is the paper's ablation
    )
    blocks: str = "compact"  # set-block arrangement (see EncoderConfig)
    element_projection: str = "random_features"  # how a chunk element becomes a vector (see EncoderConfig)
    embedding_norm: bool = True  # batch-standardised embedding before the head (see EncoderConfig)
    layer_statistics: bool = True  # per-layer summaries beside the chunk attention (see EncoderConfig)
    # the network inputs of pipeline.side_inputs.NETWORK_INPUTS (see EncoderConfig.network_inputs):
    probe_summary: bool = True  # what each network computes on data-free probes
    # each classifier's agreement on the probes with the training networks; off by default: where the test
    # networks have no consensus (an unseen dataset) it costs R² (docs/results.md)
    peer_agreement: bool = False
    # a learned vector per training dataset added to the embedding (see EncoderConfig.datasets): +0.042 tau on
    # small; on an unseen dataset it cost 0.017 tau and 0.14 R², so turn it off for such networks (docs/results.md)
    dataset_vectors: bool = True
    # share of training networks per step read as of an unknown dataset (no dataset vector, no peer
    # agreement), so the encoder also learns to predict networks of a dataset it never saw (docs/results.md)
    context_dropout: float = 0.2
    # optimisation
    loss: str = "mse"
    invariance_weight: float = 0.1
    epochs: int = 10
    # 16 per worker and Adam 2e-3: a laptop run takes few optimiser steps (800 small-zoo
    # networks on 2 workers at 32 made 13 per epoch), and the side inputs' readers were still learning when
    # it ended. Half the batch doubles the steps at the same epoch time. On small, 15 epochs: tau 0.770 (32,
    # 1e-3) -> 0.776 (16) -> 0.783 (16, 2e-3); 30 epochs 0.785 -> 0.793; the demo 0.635 -> 0.700 -> 0.740
    # (docs/results.md). 1e-3 had beaten 3e-4 in six of six paired runs before.
    batch_size: int = 16
    # Batches by weight chunks instead of by networks: a step holds networks until their chunks would pass
    # the budget (at most batch_size of them), so one step fits one 25 M-parameter network or many small
    # ones at a memory set by the budget; the workers also return freed memory to the system
    # (pipeline.runtime.bound_allocator_memory). 0: batch_size networks a step.
    chunk_budget: int = 0
    lr: float = 2e-3
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

    def reads_probes(self) -> bool:
        """Whether the encoder reads what the networks compute on the probes, so prepare must run them."""
        # Imported here: config loads before the modules that compute the inputs.
        from pipeline import side_inputs

        return side_inputs.reads_probes(side_inputs.network_inputs(self))

    def validate(self) -> TrainConfig:
        """Raise ValueError for settings that cannot work together; return self."""
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
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
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {self.test_fraction}")
        if self.task != "random" and self.test_fraction != 0.5:
            raise ValueError(
                f"test_fraction applies to the random task only; task {self.task} tests on its named groups"
            )
        if self.loss == "bce" and self.property not in ("test_accuracy", "train_accuracy"):
            raise ValueError(f"loss bce needs a property in [0, 1]; {self.property!r} is not one")
        for name in ("chunk_size", "hidden", "heads", "epochs", "batch_size", "chunk_micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.chunk_budget < 0:
            raise ValueError(
                f"chunk_budget must be >= 0 (0: batches of batch_size networks), got {self.chunk_budget}"
            )
        if self.num_workers < 0 or self.cpus_per_worker <= 0:
            raise ValueError("num_workers must be >= 0 and cpus_per_worker > 0")
        if self.blocks not in BLOCKS:
            raise ValueError(f"blocks must be one of {BLOCKS}, got {self.blocks!r}")
        if self.element_projection not in ELEMENT_PROJECTIONS:
            raise ValueError(
                f"element_projection must be one of {ELEMENT_PROJECTIONS}, got {self.element_projection!r}"
            )
        if not 0.0 <= self.context_dropout < 1.0:
            raise ValueError(f"context_dropout must be in [0, 1), got {self.context_dropout}")
        if self.invariance_weight < 0:
            raise ValueError(f"invariance_weight must be >= 0, got {self.invariance_weight}")
        read_beside_weights = [
            f"--{name.replace('_', '-')}"
            for name in ("layer_statistics", "probe_summary", "peer_agreement", "dataset_vectors")
            if getattr(self, name)
        ]
        if self.blocks == "deepsets" and read_beside_weights:
            raise ValueError(
                "blocks 'deepsets' reads the weights alone, but this config also reads "
                f"{', '.join(read_beside_weights)}: use --preset deepsets, or turn them off (--no-...)"
            )
        if not self.hierarchy and self.layer_statistics:
            raise ValueError(
                "--no-hierarchy has no layer vectors to add a layer summary to: add --no-layer-statistics"
            )
        return self


# One line of --help per field; a unit test keeps it complete. Defaults are appended from the preset.
FIELD_HELP = {
    "preset": "starting point for the config: demo (the extended model, laptop-sized), extended (weights, layer summaries, probes, dataset vectors), weights (weights and layer summaries), paper (the published SNE: weights only), deepsets (the DeepSets baseline on the paper's inputs), debug (tiny)",
    "zoo": "zoo to learn from: a local folder or s3:// URI in any of the zoo formats (docs/zoo-formats.md)",
    "format": "zoo format: auto (detect), native, smallcnnzoo, modelzoos, safetensors or wildpark",
    "steps": "smallcnnzoo and wildpark: 'final' (each network's last step) or 'all' (every stored step)",
    "zoo_epoch": "modelzoos only: which epoch's checkpoint to read (default: each trial's last)",
    "property": "target to predict, e.g. test_accuracy, generalization_gap, frequency (inr zoo)",
    "task": f"split protocol: {', '.join(TASKS)}",
    "train_datasets": "cross-dataset: comma-separated datasets to train on",
    "test_datasets": "cross-dataset: comma-separated datasets to test on",
    "train_families": "cross-architecture: comma-separated families to train on",
    "test_families": "cross-architecture: comma-separated (unseen) families to test on",
    "split_seed": "seed of the train/val/test assignment",
    "test_fraction": "random task: share of the zoo held out for test (0.5, the peers' protocol); the rest is 80/20 train/val",
    "storage": "local folder or s3:// URI for chunk records and Ray Train checkpoints",
    "run_name": "name of the run; rerunning with the same name resumes it (default: a fresh name)",
    "experiment": "MLflow experiment name",
    "register_as": "register the encoder as a new version of this MLflow model ('' registers nothing)",
    "tracking_uri": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite at runs/mlflow.db in the checkout)",
    "chunk_size": "values per chunk (C): each layer is padded and cut into chunks of this many values",
    "normalize": f"weight scaling before chunking: {', '.join(NORMALIZATIONS)} (fan_in multiplies by sqrt(fan_in))",
    "hidden": "width of every attention block (D); 64 costs about twice the time of 32",
    "heads": "attention heads (must divide --hidden)",
    "inducing_points": "inducing points of the layer encoder's induced set attention",
    "chunk_micro_batch": "chunks encoded at once: peak memory follows this, not the network's size",
    "blocks": "set-block arrangement: paper (two SABs per stage, SABs over a layer's chunks), compact (fewer blocks, induced attention over a layer's chunks: linear in its size) or deepsets (the DeepSets baseline: one set of all weights, no attention)",
    "element_projection": "how a chunk element becomes a vector: linear, or random_features (an MLP whose first layer starts as random features, so a weight's magnitude survives the first LayerNorm)",
    "positional_encoding": "sinusoidal layer-position and layer-type encodings (the paper's ablation turns them off)",
    "hierarchy": "encode chunks, then layers, then the network; off pools all of a network's chunks at once (the paper's ablation, with --no-positional-encoding and --no-layer-statistics)",
    "embedding_norm": "batch-standardise the network embedding before the head",
    "layer_statistics": "add a summary of each layer to its vector: quantiles of its values, magnitudes, row and column RMS and bias, and how its unit gains chain with the layers around it (an addition to the paper's SNE; --preset paper turns it off)",
    "probe_summary": "add what each network computes on fixed data-free noise inputs to its embedding (off: weights only)",
    "peer_agreement": "add how far each classifier agrees on those inputs with the training networks of its dataset",
    "dataset_vectors": "add a learned vector per training dataset to the embedding (others read as unknown)",
    "context_dropout": "share of training networks per step read as of an unknown dataset (no dataset vector, no peer agreement), so the encoder learns to do without",
    "loss": f"task loss: {', '.join(LOSSES)} (bce needs a property in [0, 1])",
    "invariance_weight": "lambda of the logit-invariance loss on permuted copies; 0 disables it",
    "epochs": "training epochs; the best-validation-tau epoch is kept",
    "batch_size": "networks per step on each worker (DDP averages the workers' gradients); with --chunk-budget, the most networks a step takes",
    "chunk_budget": "weight and bias chunks per step on each worker: networks join a step until their chunks would pass it, one larger network trains alone, and each step's memory stays bounded (at 1.5-2x its time); 0 batches by --batch-size",
    "lr": "Adam learning rate (the peak of the cosine schedule)",
    "weight_decay": "Adam weight decay",
    "lr_schedule": f"learning-rate schedule: {', '.join(LR_SCHEDULES)} (cosine: 5% warm-up, then cosine decay)",
    "grad_clip": "max global gradient norm; 0 disables clipping",
    "seed": "seed of the encoder's initialisation and of the batch order",
    "num_workers": "Ray Train workers (DDP processes)",
    "cpus_per_worker": "CPUs each worker reserves (fractions leave room for Ray Data on a laptop)",
    "use_gpu": "one GPU per worker",
    "max_failures": "worker failures a run survives, resuming from its last checkpoint",
    "statnn": "also train the STATNN baseline on the same split and report it",
}


# Named presets: functions, so each call returns a fresh config (docs/model.md says what each reads).
def demo() -> TrainConfig:
    """The embedded default: the extended model on the demo zoo, sized for a 2-core laptop."""
    return TrainConfig()


def extended() -> TrainConfig:
    """SNE plus what the project adds: per-layer summaries, probes of each network's function, dataset vectors."""
    return TrainConfig(preset="extended")


def weights() -> TrainConfig:
    """The extended model reading weights only: the per-layer summaries stay, probes and dataset vectors go."""
    return TrainConfig(preset="weights", probe_summary=False, dataset_vectors=False, context_dropout=0.0)


def debug() -> TrainConfig:
    """Tiny and fast: for tests and smoke runs."""
    return TrainConfig(
        preset="debug", hidden=16, heads=2, inducing_points=4, epochs=2, batch_size=8, num_workers=2
    )


def paper() -> TrainConfig:
    """The paper's SNE: weights only, nothing read beside them."""
    return TrainConfig(
        preset="paper",
        blocks="paper",
        probe_summary=False,
        layer_statistics=False,
        dataset_vectors=False,
        peer_agreement=False,
        context_dropout=0.0,
    )


def deepsets() -> TrainConfig:
    """The DeepSets baseline: the paper preset's inputs (weights only), one set of all a network's weights."""
    return dataclasses.replace(paper(), preset="deepsets", blocks="deepsets", invariance_weight=0.0)


PRESETS = {
    "demo": demo,
    "extended": extended,
    "weights": weights,
    "paper": paper,
    "deepsets": deepsets,
    "debug": debug,
}


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


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (a script's repeated ``--set``) → ``{key: value}``; dashes in keys become
    underscores. Values stay strings: ``from_dict`` checks and converts them against the fields."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        settings[key.strip().replace("-", "_")] = value.strip()
    return settings


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


def add_arguments(
    parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), shown: TrainConfig | None = None
) -> None:
    """One ``--flag`` per config field (underscores become dashes); defaults stay in the dataclass.

    The help shows ``shown``'s values (default: the demo preset's); argparse's own default stays None
    so that only flags given on the command line override the chosen preset.
    """
    hints = typing.get_type_hints(TrainConfig)
    shown = shown or demo()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.name == "preset":  # --preset is added below, as a choice
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(shown, f.name)
        text = FIELD_HELP[f.name]
        if isinstance(default, tuple):
            default = ",".join(default) or None
        if default is not None:  # a None default is described by the help itself
            text += f" (default: {default})"
        text = text.replace("%", "%%")  # argparse formats help strings with %
        if hints[f.name] is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=text)
    parser.add_argument("--preset", choices=list(PRESETS), default="demo", help=FIELD_HELP["preset"])


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The config a parsed command line asks for: preset, then every flag that was given."""
    hints = typing.get_type_hints(TrainConfig)
    given = {k: v for k, v in vars(args).items() if k in hints and k != "preset" and v is not None}
    return from_dict(given, PRESETS[args.preset]())
