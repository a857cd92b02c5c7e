"""The replicate fixture: a zoo of any size from perturbed copies of real networks, labelled as a fixture."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.generate import plan, train_checkpoint
from pipeline.replicate import FIXTURE_TAG, replicas, replicate_zoo
from pipeline.zoo import Rejection, native, read_zoo


@pytest.fixture(scope="module")
def source_zoo(tmp_path_factory) -> str:
    """Three really trained networks of three families (about 4 s)."""
    uri = str(tmp_path_factory.mktemp("source") / "zoo")
    native.write_zoo(uri, [c for spec in plan("tiny", 0, count=3) for c in train_checkpoint(spec)])
    return uri


def _read(uri: str):
    read = list(read_zoo(uri))
    assert not [r for r in read if isinstance(r, Rejection)]
    return read


def test_copies_cycle_through_the_source_perturbed_and_say_they_are_a_fixture(source_zoo, tmp_path):
    sources = _read(source_zoo)
    summary = replicate_zoo(source_zoo, str(tmp_path / "replica"), count=7, seed=3, noise=0.01, shard_size=2)
    copies = _read(str(tmp_path / "replica"))
    assert summary["checkpoints"] == len(copies) == 7
    assert len({c.id for c in copies}) == 7 and len({c.run_id for c in copies}) == 7
    for k, copy in enumerate(copies):
        source = sources[k % len(sources)]
        assert (copy.family, copy.dataset, copy.properties) == (
            source.family,
            source.dataset,
            source.properties,
        )
        assert copy.hyperparameters["fixture"] == FIXTURE_TAG and copy.hyperparameters["copy_of"] == source.id
        ratio = np.concatenate(
            [(c.weight / s.weight).ravel() for c, s in zip(copy.layers, source.layers, strict=True)]
        )
        ratio = ratio[np.isfinite(ratio)]
        assert 0.005 < np.std(ratio - 1.0) < 0.02  # each weight moved by about 1%, none left alone
    first, second = copies[0].layers[0].weight, copies[3].layers[0].weight  # two copies of one network
    assert not np.array_equal(first, second)


def test_the_same_seed_writes_the_same_zoo_and_bad_requests_say_why(source_zoo, tmp_path):
    def weights(seed: int) -> list[np.ndarray]:
        return [x.weight for c in replicas(source_zoo, 4, seed=seed) for x in c.layers]

    same, again, other = weights(0), weights(0), weights(1)
    assert all(np.array_equal(a, b) for a, b in zip(same, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(same, other, strict=True))
    with pytest.raises(ValueError, match="count must be at least 1"):
        next(replicas(source_zoo, 0))
    with pytest.raises(ValueError, match="noise"):
        next(replicas(source_zoo, 3, noise=-0.1))

    job = [sys.executable, "jobs/make_zoo.py", "--out", str(tmp_path / "x"), "--preset", "replicate"]
    missing = subprocess.run(job + ["--count", "5"], capture_output=True, text=True)
    assert missing.returncode == 2 and "needs --from URI" in missing.stderr
    stray = subprocess.run(job[:-2] + ["--from", source_zoo], capture_output=True, text=True)
    assert stray.returncode == 2 and "--from is read only with --preset replicate" in stray.stderr
