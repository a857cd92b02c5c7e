"""Generating a zoo: plan checkpoints from (preset, seed), train them as Ray tasks, write shards.

A *spec* is a plain dict that fixes one checkpoint completely (id, family, dataset, architecture,
hyperparameters, seed), so training it twice gives bit-identical weights. The plan groups specs
into shards; one Ray task trains one shard and writes it with ``native.write_shard``, whose
manifest part is the commit marker. A rerun skips committed shards, so an interrupted run resumes.
The plan's identity is kept in ``generator.json`` at the zoo's root, so a rerun with another preset
or seed into the same location is refused instead of mixing two zoos.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import datasets, families, storage
from pipeline.zoo.checkpoint import Checkpoint

FORMATS = ("native", "smallcnnzoo", "modelzoos")
# Small CNN Zoo checkpoint steps (86 = final): snapshots at these fractions of training.
SMALLCNNZOO_STEPS = (0, 1, 2, 3, 20, 40, 60, 80, 86)
PLAN_FILE = "generator.json"
# Sine-wave INRs follow the public DWS sine-wave data, on which the SNE paper measured its INR table:
# y = a·sin(b·x) on [−π, π), a and b ~ U(0, 10); full-batch Adam (lr 1e-3, weight decay 1e-4) for at most
# 1,500 steps, stopping once the fit's MSE is ≤ 1e-4. One deviation: 1,000 points instead of 2,000 (half the
# cost of a zoo; the fastest wave still gets 100 points per period).
SINE_POINTS = 1000
SINE_COEFFICIENT_MAX = 10.0
SIREN_MAX_STEPS = 1500
SIREN_STOP_LOSS = 1e-4
SIREN_LEARNING_RATE = 1e-3
SIREN_WEIGHT_DECAY = 1e-4
SINE_FREQUENCY_STEP = 0.005  # resolution of fitted_sine's search over b
EVAL_BATCH = 1000


class GenerationError(RuntimeError):
    """Some shards of a zoo failed to train; the committed ones stay and a rerun retries the rest."""


@dataclass(frozen=True)
class Preset:
    """How many checkpoints, of which families (relative weights), and how many per shard (Ray task)."""

    num_checkpoints: int
    family_weights: tuple[tuple[str, float], ...]
    shard_size: int


_CLASSIFIER_MIX = (("smallcnn", 0.25), ("cnn-s", 0.15), ("mlp", 0.25), ("cnn", 0.35))
# Plain CNNs and MLPs beside residual networks with batch norm and vision transformers, for the
# cross-architecture task.
_WILD_MIX = (("smallcnn", 0.1), ("cnn-s", 0.1), ("mlp", 0.15), ("cnn", 0.2), ("resnet", 0.25), ("vit", 0.2))
# Networks of 1 M to 25 M parameters (ResNet-18 widths) beside small ones: real big checkpoints for
# chunk-budget training and the encoding benchmarks.
_LARGE_MIX = (("resnet18", 0.5), ("smallcnn", 0.15), ("mlp", 0.15), ("cnn", 0.2))
PRESETS = {
    "tiny": Preset(48, _CLASSIFIER_MIX, 8),  # integration tests: about a minute on 2 cores
    "demo": Preset(300, _CLASSIFIER_MIX, 16),
    "small": Preset(2000, _CLASSIFIER_MIX, 32),
    "medium": Preset(10000, _CLASSIFIER_MIX, 32),
    "inr": Preset(3000, (("siren", 1.0),), 100),
    "wild": Preset(600, _WILD_MIX, 16),
    "large": Preset(48, _LARGE_MIX, 2),
}
# The public zoo formats hold one family each.
FORMAT_FAMILY = {"smallcnnzoo": "smallcnn", "modelzoos": "cnn-s"}


# --- planning --------------------------------------------------------------------------------------


# 'normal' with a small std often stalls at chance: keep it, but rarer than the standard schemes.
_INIT_WEIGHTS = (0.3, 0.2, 0.2, 0.2, 0.1)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample_hyperparameters(rng: np.random.Generator) -> dict[str, Any]:
    """Training hyperparameters of one classifier, wide enough that test accuracy spans chance to high."""
    optimizer = str(rng.choice(["sgd", "adam"]))
    learning_rate = _log_uniform(rng, *((5e-3, 0.3) if optimizer == "sgd" else (3e-4, 3e-2)))
    return {
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "init": str(rng.choice(families.INITIALIZATIONS, p=_INIT_WEIGHTS)),
        "init_std": _log_uniform(rng, 3e-3, 0.3),  # used by init 'normal' only
        "activation": str(rng.choice(families.ACTIVATIONS)),
        "dropout": 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.3)),
        "weight_decay": 0.0 if rng.random() < 0.3 else _log_uniform(rng, 1e-6, 1e-2),
        "train_fraction": float(rng.uniform(0.2, 1.0)),
        "epochs": int(rng.integers(2, 11)),
        "batch_size": int(rng.choice([32, 64, 128])),
    }


def _brief(hyper: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A big network's training: two to four epochs over a quarter to 60 % of the training images, enough to
    spread their accuracies while a 25 M-parameter member trains in under two minutes of one core; the
    published layers' ReLU and no dropout."""
    return {
        **hyper,
        "activation": "relu",
        "dropout": 0.0,
        "epochs": int(rng.integers(2, 5)),
        "train_fraction": float(rng.uniform(0.25, 0.6)),
    }


def plan(
    preset: str = "demo",
    seed: int = 0,
    format: str = "native",
    datasets: tuple[str, ...] = (),
    count: int | None = None,
) -> list[dict[str, Any]]:
    """The specs of a zoo, deterministic in (preset, seed, format, datasets); the first ``count`` of them.

    Spec i depends only on (seed, i, family and dataset restriction), so a smaller preset or count is a
    prefix of a larger one. ``datasets`` keeps every network on those datasets (empty: each family's own
    datasets), as the public Small CNN Zoo holds one dataset per folder.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    config = PRESETS[preset]
    if count is not None and not 1 <= count <= config.num_checkpoints:
        raise ValueError(
            f"count must be between 1 and preset {preset!r}'s {config.num_checkpoints}, got {count}"
        )
    names = [name for name, _ in config.family_weights]
    weights = np.array([w for _, w in config.family_weights])
    if format in FORMAT_FAMILY:
        if preset == "inr":
            raise ValueError(f"preset 'inr' builds sirens, which format {format!r} cannot hold")
        names, weights = [FORMAT_FAMILY[format]], np.ones(1)
    for dataset in datasets:
        if not any(dataset in families.datasets_for(name) for name in names):
            raise ValueError(
                f"no family of preset {preset!r} (format {format!r}) trains on dataset {dataset!r}"
            )
    if datasets:  # only the families that train on one of them
        keep = [any(d in families.datasets_for(name) for d in datasets) for name in names]
        names, weights = [n for n, k in zip(names, keep, strict=True) if k], weights[np.array(keep)]
    specs = []
    for index in range(config.num_checkpoints if count is None else count):
        sequence = np.random.SeedSequence([seed, index])
        rng = np.random.default_rng(sequence)
        family = str(rng.choice(names, p=weights / weights.sum()))
        choices = [d for d in families.datasets_for(family) if not datasets or d in datasets]
        dataset = str(rng.choice(choices))
        train_seed = int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])
        if family == "siren":
            hyper: dict[str, Any] = {
                "frequency": float(rng.uniform(0.0, SINE_COEFFICIENT_MAX)),
                "amplitude": float(rng.uniform(0.0, SINE_COEFFICIENT_MAX)),
                "optimizer": "adam",
                "learning_rate": SIREN_LEARNING_RATE,
                "weight_decay": SIREN_WEIGHT_DECAY,
                "max_steps": SIREN_MAX_STEPS,
                "stop_loss": SIREN_STOP_LOSS,
                "init": "siren",
                "w0": families.SIREN_W0,
            }
            architecture = families.siren_architecture()
        else:
            hyper = sample_hyperparameters(rng)
            if family == "resnet18":
                hyper = _brief(hyper, rng)
            architecture = families.sample_architecture(
                family, dataset, rng, hyper["activation"], hyper["dropout"]
            )
        specs.append(
            {
                "id": f"{index:06d}-{family}-{dataset}",
                "family": family,
                "dataset": dataset,
                "seed": train_seed,
                "architecture": families.architecture_json(architecture),
                "hyperparameters": hyper,
                "snapshots": format == "smallcnnzoo",
            }
        )
    return specs


def shards_of(specs: list[dict[str, Any]], shard_size: int) -> list[dict[str, Any]]:
    """Consecutive groups of specs as ``{"name": "shard-00042", "specs": [...]}``."""
    return [
        {"name": f"shard-{i // shard_size:05d}", "specs": specs[i : i + shard_size]}
        for i in range(0, len(specs), shard_size)
    ]


# --- training one checkpoint -----------------------------------------------------------------------


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread: bit-identical results whatever the machine, and one core per Ray task."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _finite(module) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _evaluate(module, x, y) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a classifier on tensors x (N, ...) and labels y (N,).

    Runs in eval mode (no dropout) and puts the module back in the mode it was in.
    """
    import torch
    import torch.nn.functional as F

    was_training = module.training
    module.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(y), EVAL_BATCH):
            logits = module(x[start : start + EVAL_BATCH])
            target = y[start : start + EVAL_BATCH]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    module.train(was_training)
    return correct / len(y), loss / len(y)


def _classifier_data(spec: dict[str, Any]):
    """(x_train, y_train, x_test, y_test) tensors: the family's input size, a seeded train subset."""
    import torch

    shape = tuple(json.loads(spec["architecture"])["input_shape"])
    size = shape[-1] if len(shape) == 3 else None
    data = datasets.load(spec["dataset"], size)
    if data.input_shape != shape:
        raise ValueError(
            f"{spec['id']}: dataset input shape {data.input_shape} != architecture input {shape}"
        )
    # The subset depends on the checkpoint's seed: members differ in the data they saw, reproducibly.
    rng = np.random.default_rng(spec["seed"])
    count = max(10, round(spec["hyperparameters"]["train_fraction"] * len(data.y_train)))
    subset = np.sort(rng.permutation(len(data.y_train))[:count])
    return (
        torch.tensor(data.x_train[subset]),
        torch.tensor(data.y_train[subset]),
        torch.tensor(data.x_test),
        torch.tensor(data.y_test),
    )


def _optimizer(module, hyper: dict[str, Any]):
    import torch

    if hyper["optimizer"] == "sgd":
        return torch.optim.SGD(
            module.parameters(), lr=hyper["learning_rate"], momentum=0.9, weight_decay=hyper["weight_decay"]
        )
    if hyper["optimizer"] == "adam":
        return torch.optim.Adam(
            module.parameters(), lr=hyper["learning_rate"], weight_decay=hyper["weight_decay"]
        )
    raise ValueError(f"unknown optimizer {hyper['optimizer']!r}")


def _train_classifier(spec: dict[str, Any]) -> list[Checkpoint]:
    import torch
    import torch.nn.functional as F

    hyper = spec["hyperparameters"]
    x_train, y_train, x_test, y_test = _classifier_data(spec)
    torch.manual_seed(spec["seed"])
    module = families.build_module(spec["architecture"])
    families.initialize(module, hyper["init"], hyper["init_std"])
    optimizer = _optimizer(module, hyper)
    shuffle = torch.Generator().manual_seed(spec["seed"])

    batch_size = hyper["batch_size"]
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total_steps = hyper["epochs"] * steps_per_epoch
    # Optimizer step after which each snapshot is taken (Small CNN Zoo steps as fractions of training).
    snapshot_at = (
        {step: math.ceil(step / SMALLCNNZOO_STEPS[-1] * total_steps) for step in SMALLCNNZOO_STEPS}
        if spec.get("snapshots")
        else {SMALLCNNZOO_STEPS[-1]: total_steps}
    )
    record = {"family": spec["family"], "dataset": spec["dataset"], "seed": spec["seed"], **hyper}
    num_params = sum(p.numel() for p in module.parameters())
    out: list[Checkpoint] = []

    def snapshot(done_steps: int | None, diverged_at: int | None = None) -> None:
        """Record the steps due after ``done_steps`` optimizer steps (None: every step not yet recorded)."""
        taken = {c.hyperparameters.get("step", SMALLCNNZOO_STEPS[-1]) for c in out}
        due = [
            s
            for s, at in snapshot_at.items()
            if (at == done_steps if done_steps is not None else s not in taken)
        ]
        if not due:
            return
        train_acc, train_loss = _evaluate(module, x_train, y_train)
        test_acc, test_loss = _evaluate(module, x_test, y_test)
        for step in due:
            extra: dict[str, Any] = {"diverged_at_step": diverged_at}
            if spec.get("snapshots"):
                extra |= {"step": step, "modeldir": spec["id"]}
            out.append(
                families.checkpoint_from_module(
                    module,
                    id=f"{spec['id']}-step{step}" if spec.get("snapshots") else spec["id"],
                    family=spec["family"],
                    dataset=spec["dataset"],
                    architecture=spec["architecture"],
                    properties={
                        "test_accuracy": test_acc,
                        "train_accuracy": train_acc,
                        "generalization_gap": train_acc - test_acc,
                        "test_loss": test_loss,
                        "train_loss": train_loss,
                    },
                    hyperparameters={**record, **extra, "num_params": num_params},
                    run=spec["id"] if spec.get("snapshots") else "",
                )
            )

    snapshot(0)
    done, diverged_at = 0, None
    last_good = {k: v.clone() for k, v in module.state_dict().items()}
    for _ in range(hyper["epochs"]):
        module.train()
        order = torch.randperm(len(y_train), generator=shuffle)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(module(x_train[index]), y_train[index])
            if not torch.isfinite(loss):
                diverged_at = done
                break
            loss.backward()
            optimizer.step()
            done += 1
            if done in snapshot_at.values():
                if not _finite(module):
                    diverged_at = done
                    break
                snapshot(done)
        if diverged_at is not None:
            break
        if _finite(module):
            last_good = {k: v.clone() for k, v in module.state_dict().items()}
    if diverged_at is not None:
        # Keep the last finite weights (end of an earlier epoch) for the steps not yet recorded, so
        # every spec yields real, evaluable networks; the record says where training diverged.
        module.load_state_dict(last_good)
        snapshot(None, diverged_at)
    return out


def sine_wave(frequency: float, amplitude: float):
    """(x, y) tensors of shape (SINE_POINTS, 1): y = a·sin(b·x) on an even grid of [−π, π)."""
    import torch

    x = torch.arange(SINE_POINTS, dtype=torch.float64) / SINE_POINTS * 2 * math.pi - math.pi
    y = amplitude * torch.sin(frequency * x)
    return x.float().unsqueeze(1), y.float().unsqueeze(1)


@functools.lru_cache(maxsize=1)
def _sine_basis():
    """(frequencies (F,), sin(b·x) on the sine grid (F, SINE_POINTS), their squared norms (F,)), float64."""
    import torch

    x = sine_wave(0.0, 0.0)[0].double().squeeze(1)
    top = 1.05 * SINE_COEFFICIENT_MAX  # a little beyond the sampled range, so an edge b is not clamped
    frequencies = torch.arange(0.0, top + SINE_FREQUENCY_STEP / 2, SINE_FREQUENCY_STEP, dtype=torch.float64)
    basis = torch.sin(frequencies[:, None] * x[None, :])
    return frequencies, basis, (basis * basis).sum(dim=1)


def fitted_sine(network) -> tuple[float, float]:
    """(b, a) of the wave a·sin(b·x) that best fits what ``network`` computes on the sine grid.

    Least squares: b on a grid of step SINE_FREQUENCY_STEP, a in closed form for each b. It reads the
    property from the network's function, not from its weights, so its error on a zoo is a floor for
    any weight-based predictor (a network fitted to an amplitude near 0 computes nearly the same
    function whatever its b). ``network`` is any callable from (SINE_POINTS, 1) inputs to outputs.
    """
    import torch

    frequencies, basis, energy = _sine_basis()
    with torch.no_grad():
        y = network(sine_wave(0.0, 0.0)[0]).double().reshape(-1)
    projection = basis @ y
    # The residual of the best a for each b; b = 0 has no energy and can never win.
    residual = y @ y - projection**2 / energy.clamp(min=1e-12)
    best = int(torch.argmin(residual))
    return float(frequencies[best]), float(projection[best] / energy[best].clamp(min=1e-12))


def _train_siren(spec: dict[str, Any]) -> list[Checkpoint]:
    import torch

    hyper = spec["hyperparameters"]
    x, y = sine_wave(hyper["frequency"], hyper["amplitude"])
    torch.manual_seed(spec["seed"])
    module = families.build_module(spec["architecture"])
    families.initialize(module, "siren")
    optimizer = torch.optim.Adam(
        module.parameters(), lr=hyper["learning_rate"], weight_decay=hyper["weight_decay"]
    )
    steps = 0
    while steps < hyper["max_steps"]:  # full batch
        optimizer.zero_grad()
        loss = torch.mean((module(x) - y) ** 2)
        if float(loss.detach()) <= hyper["stop_loss"]:
            break
        loss.backward()
        optimizer.step()
        steps += 1
    with torch.no_grad():
        fit_error = float(torch.mean((module(x) - y) ** 2))
    properties = {"frequency": hyper["frequency"], "amplitude": hyper["amplitude"], "fit_error": fit_error}
    record = {"family": "siren", "dataset": "sine", "seed": spec["seed"], "steps": steps, **hyper}
    record["num_params"] = sum(p.numel() for p in module.parameters())
    return [
        families.checkpoint_from_module(
            module,
            id=spec["id"],
            family="siren",
            dataset=spec["dataset"],
            architecture=spec["architecture"],
            properties=properties,
            hyperparameters=record,
        )
    ]


def train_checkpoint(spec: dict[str, Any]) -> list[Checkpoint]:
    """Train one spec; the final checkpoint, preceded by its snapshots when ``spec["snapshots"]``.

    Deterministic: the same spec gives bit-identical weights (torch runs single-threaded meanwhile).
    """
    with _single_thread():
        return _train_siren(spec) if spec["family"] == "siren" else _train_classifier(spec)


def _headline(checkpoint: Checkpoint) -> tuple[str, float]:
    name = "fit_error" if checkpoint.family == "siren" else "test_accuracy"
    return name, checkpoint.properties[name]


def train_shard(zoo_uri: str, shard: dict[str, Any]) -> dict[str, Any]:
    """Train every spec of a shard and commit it with ``native.write_shard``: the body of one Ray task.

    Returns ``{"shard", "checkpoints", "seconds", "cpu_seconds", "summary": [(family, (property, value))]}``
    with the final checkpoints' headline property (test accuracy; the fit error for INRs).
    """
    from pipeline.zoo import native

    start, cpu_start = time.perf_counter(), time.process_time()
    checkpoints = [c for spec in shard["specs"] for c in train_checkpoint(spec)]
    native.write_shard(zoo_uri, shard["name"], checkpoints)
    final = [
        c
        for c in checkpoints
        if c.hyperparameters.get("step", SMALLCNNZOO_STEPS[-1]) == SMALLCNNZOO_STEPS[-1]
    ]
    return {
        "shard": shard["name"],
        "checkpoints": len(checkpoints),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "summary": [(c.family, _headline(c)) for c in final],
    }


# --- the whole zoo ---------------------------------------------------------------------------------


def _plan_record(
    preset: str, seed: int, format: str, specs: list[dict[str, Any]], datasets: tuple[str, ...] = ()
) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()
    record = {"preset": preset, "seed": seed, "format": format, "specs": len(specs), "plan_sha256": digest}
    return record | ({"datasets": list(datasets)} if datasets else {})


def _check_plan(zoo_uri: str, record: dict[str, Any]) -> bool:
    """Whether the zoo already records this plan; refuse to mix two different plans in one location."""
    fs, path = storage.filesystem(storage.join(zoo_uri, PLAN_FILE))
    if not fs.exists(path):
        return False
    existing = json.loads(fs.cat_file(path))
    if existing.get("plan_sha256") != record["plan_sha256"]:
        raise ValueError(
            f"{zoo_uri} holds a zoo generated with preset={existing.get('preset')!r}, "
            f"seed={existing.get('seed')!r}, format={existing.get('format')!r}; "
            f"refusing to add preset={record['preset']!r}, seed={record['seed']!r}: choose another --out"
        )
    return True


def _claim(zoo_uri: str, record: dict[str, Any]) -> None:
    """Record the plan beside the zoo (see ``_check_plan``)."""
    if not _check_plan(zoo_uri, record):
        storage.write_bytes_atomic(storage.join(zoo_uri, PLAN_FILE), json.dumps(record, indent=2).encode())


def staging_uri(out_uri: str) -> str:
    """Where the public formats are trained before export: a sibling, never inside the exported zoo."""
    return out_uri.rstrip("/") + ".staging"


def make_zoo(
    out_uri: str,
    preset: str = "demo",
    format: str = "native",
    seed: int = 0,
    num_cpus: int | None = None,
    datasets: tuple[str, ...] = (),
    count: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train the zoo of (preset, seed) into ``out_uri`` with Ray tasks; resumes a partial zoo.

    ``format`` 'smallcnnzoo' / 'modelzoos' trains only that format's family into ``staging_uri(out)``
    (native, kept for cheap reruns) and then exports it to ``out_uri``. ``num_cpus`` and ``verbose``
    apply only when this call starts Ray (``pipeline.runtime.start_ray``); ``datasets`` and ``count``
    restrict the plan (see ``plan``). Returns a summary (counts, seconds, URIs, accuracy spread).
    """
    from tqdm import tqdm

    from pipeline.runtime import start_ray
    from pipeline.zoo import native

    started = time.perf_counter()
    specs = plan(preset, seed, format, datasets, count)
    shards = shards_of(specs, PRESETS[preset].shard_size)
    train_uri = out_uri if format == "native" else staging_uri(out_uri)
    record = _plan_record(preset, seed, format, specs, datasets)
    _check_plan(train_uri, record)
    done = native.finished_shards(train_uri)
    todo = [shard for shard in shards if shard["name"] not in done]
    skipped = sum(len(s["specs"]) for s in shards if s["name"] in done)

    results: list[dict[str, Any]] = []
    failed: list[str] = []
    # Ray first: a job that cannot run (no cluster at RAY_ADDRESS) leaves nothing behind.
    ray = start_ray(num_cpus, verbose=verbose) if todo else None
    _claim(train_uri, record)
    if todo:
        task = ray.remote(num_cpus=1)(train_shard)
        pending = {task.remote(train_uri, shard): shard for shard in todo}
        with tqdm(total=len(specs), initial=skipped, unit="ckpt", desc=f"make_zoo {preset}") as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    shard = pending.pop(ref)
                    try:
                        results.append(ray.get(ref))
                    except ray.exceptions.RayError as e:
                        # Let the other shards finish (each commits on its own), then report.
                        failed.append(f"{shard['name']}: {storage.unreachable(e) or e}")
                    bar.update(len(shard["specs"]))
        if failed:
            raise GenerationError(
                f"{len(failed)} of {len(todo)} shard(s) failed (the others are committed; rerun to retry "
                f"only the failed ones):\n" + "\n".join(failed)
            )

    summary: dict[str, Any] = {
        "out": out_uri,
        "preset": preset,
        "format": format,
        "seed": seed,
        "checkpoints": len(specs),
        "trained": sum(len(s["specs"]) for s in todo),
        "skipped": skipped,
        "shards": len(shards),
        "train_seconds": round(time.perf_counter() - started, 1),
        # Work done by the tasks, whatever else shared the machine: wall time on an idle N-core
        # machine is about task_cpu_seconds / N plus Ray's start-up.
        "task_cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 1),
    }
    if format != "native":
        summary["staging"] = train_uri
        summary["exported"] = _export(train_uri, out_uri, format, sorted({s["dataset"] for s in specs}))
    summary["trained_spread"] = _spread(results)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _spread(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per family: min / median / max of the headline property over the checkpoints trained in this call."""
    by_family: dict[str, tuple[str, list[float]]] = {}
    for result in results:
        for family, (name, value) in result["summary"]:
            by_family.setdefault(family, (name, []))[1].append(value)
    return {
        family: {
            "property": name,
            "n": len(values),
            "min": round(float(np.min(values)), 4),
            "median": round(float(np.median(values)), 4),
            "max": round(float(np.max(values)), 4),
        }
        for family, (name, values) in sorted(by_family.items())
    }


def _export(train_uri: str, out_uri: str, format: str, dataset_names: list[str]) -> int:
    """Write every checkpoint of the staging zoo to ``out_uri`` in a public format; returns the count.

    smallcnnzoo: one folder per dataset (``<out>/<dataset>``), as the public zoo is laid out, written
    one dataset at a time to bound memory. modelzoos: one zoo folder of trial folders.
    """
    from pipeline.zoo import modelzoos, smallcnnzoo
    from pipeline.zoo.listing import read_zoo

    def staged(dataset: str | None = None) -> Iterator[Checkpoint]:
        for item in read_zoo(train_uri, "native"):
            if not isinstance(item, Checkpoint):
                raise ValueError(
                    f"staging zoo {train_uri}: checkpoint {item.id} is unreadable: {item.reason}"
                )
            if dataset is None or item.dataset == dataset:
                yield item

    if format == "modelzoos":
        checkpoints = list(staged())
        modelzoos.write_zoo(out_uri, checkpoints)
        return len(checkpoints)
    count = 0
    for dataset in dataset_names:
        checkpoints = list(staged(dataset))
        smallcnnzoo.write_zoo(storage.join(out_uri, dataset), checkpoints)
        count += len(checkpoints)
    return count
