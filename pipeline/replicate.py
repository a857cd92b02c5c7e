"""A throughput fixture: a zoo of any size written by perturbing the real networks of an existing one.

Copy ``k`` of a source network multiplies each of its weights by ``1 + noise * N(0, 1)`` (a generator
seeded by the zoo seed, the copy and the network's position), and keeps its family, dataset and
properties. The copies are not trained networks and their properties are not theirs: the fixture
measures how prepare and training scale (records per second, memory per stage), never quality. Every
copy says so in its hyperparameters (``"fixture": "replicate"``), beside the id of the network it copies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from pipeline.zoo import Checkpoint, Rejection, read_zoo
from pipeline.zoo.checkpoint import Layer

FIXTURE_TAG = "replicate"


def _copy(checkpoint: Checkpoint, copy: int, rng: np.random.Generator, noise: float) -> Checkpoint:
    def perturbed(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        scale = 1.0 + noise * rng.standard_normal(values.shape, dtype=np.float32)
        return (values.astype(np.float32) * scale).astype(np.float32)

    return Checkpoint(
        id=f"r{copy:05d}/{checkpoint.id}",
        family=checkpoint.family,
        dataset=checkpoint.dataset,
        layers=[Layer(x.name, x.kind, perturbed(x.weight), perturbed(x.bias)) for x in checkpoint.layers],
        properties=dict(checkpoint.properties),
        hyperparameters={**checkpoint.hyperparameters, "fixture": FIXTURE_TAG, "copy_of": checkpoint.id},
        run=f"r{copy:05d}/{checkpoint.run_id}",
    )


def replicas(source_uri: str, count: int, seed: int = 0, noise: float = 0.01) -> Iterator[Checkpoint]:
    """``count`` perturbed copies of the source zoo's networks, cycling through them in the source's order
    (each pass streams the source again, so memory follows one checkpoint, not the zoo). ValueError for a
    count below 1, a negative noise, or a source without a readable checkpoint."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    written, copy = 0, 0
    while written < count:
        position = -1
        for position, checkpoint in enumerate(
            c for c in read_zoo(source_uri) if not isinstance(c, Rejection)
        ):
            if written == count:
                return
            rng = np.random.default_rng([seed, copy, position])
            yield _copy(checkpoint, copy, rng, noise)
            written += 1
        if position < 0:
            raise ValueError(f"{source_uri} holds no readable checkpoint to replicate")
        copy += 1


def replicate_zoo(
    source_uri: str, out_uri: str, count: int, seed: int = 0, noise: float = 0.01, shard_size: int = 256
) -> dict:
    """Write ``count`` copies (``replicas``) of the source zoo to ``out_uri`` as a native zoo; a summary."""
    from tqdm import tqdm

    from pipeline.zoo import native

    started = time.perf_counter()
    with tqdm(total=count, unit="ckpt", desc="replicate") as bar:

        def counted() -> Iterator[Checkpoint]:
            for checkpoint in replicas(source_uri, count, seed, noise):
                yield checkpoint
                bar.update(1)

        native.write_zoo(out_uri, counted(), shard_size=shard_size)
    return {
        "out": out_uri,
        "source": source_uri,
        "checkpoints": count,
        "noise": noise,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
