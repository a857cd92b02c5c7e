"""Which checkpoints train, validate and test, for each task.

- random: the peers' protocol: half of the zoo is test (``test_fraction``; less leaves more networks to
  learn from, for learning curves); the rest is split 80/20 train/val.
- cross-dataset: train/val from ``train_datasets`` (80/20), test on ``test_datasets``.
- cross-architecture: train/val from ``train_families`` (80/20), test on ``test_families``.
Checkpoints of one training run (``runs``: the steps of one run, in the Small CNN Zoo or Wild Park
layouts) always land on the same side: a model must not be tested on a later step of a run it trained on.
Assignments depend only on the ids, runs and seed, so every worker and every rerun agrees.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("train", "val", "test")


def _shuffled(ids: list[str], seed: int) -> list[str]:
    # Sort first: the order ids arrive in (file listing, Ray block order) must not matter.
    ordered = sorted(ids)
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _grouped_prefix(
    ids: list[str], runs: dict[str, str], seed: int, size: int
) -> tuple[list[str], list[str]]:
    """Shuffle the runs of ``ids``; whole runs go to the first part until it holds ``size`` checkpoints.
    Where every checkpoint is its own run this is a prefix of ``_shuffled(ids, seed)``."""
    members: dict[str, list[str]] = {}
    for i in sorted(ids):
        members.setdefault(runs[i], []).append(i)
    first: list[str] = []
    rest: list[str] = []
    for run in _shuffled(list(members), seed):
        (first if len(first) < size else rest).extend(members[run])
    return first, rest


def _train_val(ids: list[str], runs: dict[str, str], seed: int, val_fraction: float = 0.2) -> dict[str, str]:
    val, train = _grouped_prefix(ids, runs, seed, int(round(len(ids) * val_fraction)))
    return {**{i: "val" for i in val}, **{i: "train" for i in train}}


def assign_splits(
    ids: list[str],
    families: list[str],
    datasets: list[str],
    task: str = "random",
    *,
    train_datasets: tuple[str, ...] = (),
    test_datasets: tuple[str, ...] = (),
    train_families: tuple[str, ...] = (),
    test_families: tuple[str, ...] = (),
    seed: int = 0,
    test_fraction: float = 0.5,
    runs: list[str] | None = None,
) -> dict[str, str]:
    """``{id: "train"|"val"|"test"}``; checkpoints outside a cross task's groups are left out.

    ``runs``: each checkpoint's training run (default: its own id); a run's checkpoints share a side.

    The random task's test set is a prefix of one shuffle, so a smaller ``test_fraction`` tests on a
    subset of a larger one's test networks and trains on more. Raises ValueError when a split would be
    empty, a named dataset/family does not exist, or test_fraction is outside (0, 1).
    """
    if len(set(ids)) != len(ids):
        raise ValueError("checkpoint ids must be unique")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    run_of = dict(zip(ids, ids if runs is None else [str(r) for r in runs], strict=True))
    if task == "random":
        test, rest = _grouped_prefix(ids, run_of, seed, int(len(ids) * test_fraction))
        out = {i: "test" for i in test}
        out.update(_train_val(rest, run_of, seed + 1))
    elif task in ("cross-dataset", "cross-architecture"):
        keys, train_keys, test_keys, what = (
            (datasets, train_datasets, test_datasets, "dataset")
            if task == "cross-dataset"
            else (families, train_families, test_families, "family")
        )
        present = set(keys)
        missing = sorted((set(train_keys) | set(test_keys)) - present)
        if missing:
            raise ValueError(
                f"no checkpoints of {what} {', '.join(missing)}; the zoo has {', '.join(sorted(present))}"
            )
        overlap = sorted(set(train_keys) & set(test_keys))
        if overlap:
            raise ValueError(f"{what} {', '.join(overlap)} is in both the train and the test side")
        out = _train_val([i for i, k in zip(ids, keys, strict=True) if k in train_keys], run_of, seed)
        out.update({i: "test" for i, k in zip(ids, keys, strict=True) if k in test_keys})
    else:
        raise ValueError(f"unknown task {task!r}")
    counts = {s: sum(1 for v in out.values() if v == s) for s in SPLITS}
    empty = [s for s in SPLITS if counts[s] == 0]
    if empty:
        raise ValueError(
            f"split(s) {', '.join(empty)} would be empty ({counts}); the zoo is too small for this task"
        )
    return out


def split_fingerprint(assignment: dict[str, str]) -> str:
    """Short hash of an assignment: logged so two runs can be checked to share a split."""
    h = hashlib.sha256()
    for i in sorted(assignment):
        h.update(f"{i}={assignment[i]};".encode())
    return h.hexdigest()[:12]
