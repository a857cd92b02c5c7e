"""The classification datasets that zoo members are trained on, all offline and deterministic.

Image datasets share one input format so that cross-dataset tasks exist: float32 images of shape
(1, 16, 16) with values in [-1, 1] and 10 classes.
- ``digits``: the real 8×8 handwritten digits shipped with scikit-learn, upsampled to 16×16.
- ``shapes``: ten kinds of shapes rendered here with random position, scale, rotation, contrast
  and noise.
- ``textures``: ten kinds of procedural textures (gratings, checkerboards, dots, noise, …) with
  random parameters and noise.
``mnist1d`` holds length-40 signals of shape (1, 40) (the MNIST-1D benchmark, regenerated).

Train/test splits are fixed by a seed, so every process sees the same arrays. Datasets are cached
per process: a Ray worker that trains many checkpoints builds each dataset once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

IMAGE_DATASETS = ("digits", "shapes", "textures")
SIGNAL_DATASETS = ("mnist1d",)
DATASETS = IMAGE_DATASETS + SIGNAL_DATASETS
NUM_CLASSES = 10
IMAGE_SIZE = 16

_SPLIT_SEED = 20240
# Sizes of the generated datasets: small enough to train hundreds of checkpoints per core-minute.
_GENERATED_TRAIN = 2000
_GENERATED_TEST = 1000
_DIGITS_TEST = 600


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x_*`` of shape (N, C, *spatial) float32 and labels ``y_*`` of shape (N,) int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load(name: str, size: int | None = None) -> Dataset:
    """The dataset ``name``; image datasets resized to ``size``×``size`` when given.

    Returned arrays are shared by every caller in the process: treat them as read-only.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if size is not None and name not in IMAGE_DATASETS:
        raise ValueError(f"dataset {name!r} holds 1-D signals and cannot be resized to {size}×{size}")
    return _load_cached(name, size if size != IMAGE_SIZE else None)


@functools.cache
def _load_cached(name: str, size: int | None) -> Dataset:
    if size is not None:
        base = _load_cached(name, None)
        return Dataset(
            name, _resize(base.x_train, size), base.y_train, _resize(base.x_test, size), base.y_test
        )
    builders = {"digits": _digits, "shapes": _shapes, "textures": _textures, "mnist1d": _mnist1d}
    dataset = builders[name]()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        array.setflags(write=False)
    return dataset


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.tensor(images), size=(size, size), mode="bilinear", align_corners=False)
    return out.numpy().astype(np.float32)


def _split(name: str, x: np.ndarray, y: np.ndarray, num_test: int) -> Dataset:
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    test, train = order[:num_test], order[num_test:]
    return Dataset(
        name,
        np.ascontiguousarray(x[train], dtype=np.float32),
        y[train].astype(np.int64),
        np.ascontiguousarray(x[test], dtype=np.float32),
        y[test].astype(np.int64),
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None] / 16.0 * 2.0 - 1.0  # (N, 1, 8, 8) in [-1, 1]
    images = np.clip(_resize(images, IMAGE_SIZE), -1.0, 1.0)
    return _split("digits", images, bunch.target, _DIGITS_TEST)


def _mnist1d() -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset regenerates the benchmark from its templates; the package's loader downloads.
    data = make_dataset(get_dataset_args())
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([data["y"], data["y_test"]])
    num_test = len(data["y_test"])
    return Dataset("mnist1d", x[:-num_test], y[:-num_test].astype(np.int64), x[-num_test:], y[-num_test:])


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % NUM_CLASSES)


def _pixel_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], each of shape (1, n, n), for broadcasting over images."""
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    return yy[None], xx[None]


def _finish(rng: np.random.Generator, pattern: np.ndarray, noise: tuple[float, float]) -> np.ndarray:
    """Pattern in [0, 1] → image in [-1, 1] with random contrast, brightness and Gaussian noise."""
    n = len(pattern)
    contrast = rng.uniform(0.4, 1.0, size=(n, 1, 1))
    level = rng.uniform(-0.4, 0.4, size=(n, 1, 1)) * (1.0 - contrast)
    sigma = rng.uniform(*noise, size=(n, 1, 1))
    image = level + contrast * (2.0 * pattern - 1.0) + sigma * rng.standard_normal(pattern.shape)
    return np.clip(image, -1.0, 1.0).astype(np.float32)[:, None]


def _shape_masks(kind: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-tests for the ten shapes in the shape's own frame (unit size); kind has shape (N, 1, 1)."""
    r = np.sqrt(u**2 + v**2)
    box = np.maximum(np.abs(u), np.abs(v))
    # Equilateral triangle: three half-planes at distance 0.5 from the centre.
    tri = np.max([v * np.cos(a) + u * np.sin(a) for a in (0.0, 2.0944, 4.1888)], axis=0)
    masks = [
        r < 0.9,  # disk
        (r < 0.95) & (r > 0.55),  # ring
        box < 0.75,  # square
        (box < 0.85) & (box > 0.5),  # hollow square
        tri < 0.5,  # triangle
        (tri < 0.6) & (tri > 0.3),  # hollow triangle
        ((np.abs(u) < 0.25) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.25) & (np.abs(u) < 0.95)),  # plus
        (np.abs(u) < 0.95) & (np.abs(v) < 0.22),  # bar
        ((np.abs(u + 0.35) < 0.22) & (np.abs(v) < 0.9))  # L shape
        | ((np.abs(v - 0.68) < 0.22) & (np.abs(u) < 0.6)),
        ((u + 0.5) ** 2 + v**2 < 0.16) | ((u - 0.5) ** 2 + v**2 < 0.16),  # two dots
    ]
    out = np.zeros(np.broadcast(kind, u).shape, dtype=bool)
    for label, mask in enumerate(masks):
        out |= (kind == label) & mask
    return out


def _render_shapes(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    supersample = 4
    yy, xx = _pixel_grid(IMAGE_SIZE * supersample)
    scale = rng.uniform(0.5, 0.9, size=(n, 1, 1))
    cy, cx = (rng.uniform(-1.0, 1.0, size=(2, n, 1, 1)) * (0.95 - scale)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1, 1))
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (cos * dx + sin * dy) / scale
    v = (-sin * dx + cos * dy) / scale
    inside = _shape_masks(labels[:, None, None], u, v).astype(np.float32)
    # Average the supersampled mask into anti-aliased 16×16 pixels.
    pattern = inside.reshape(n, IMAGE_SIZE, supersample, IMAGE_SIZE, supersample).mean(axis=(2, 4))
    return _finish(rng, pattern, noise=(0.05, 0.25))


def _shapes() -> Dataset:
    rng = np.random.default_rng(_SPLIT_SEED + 1)
    labels = _balanced_labels(rng, _GENERATED_TRAIN + _GENERATED_TEST)
    images = np.concatenate([_render_shapes(rng, chunk) for chunk in np.array_split(labels, 10)])
    return _split("shapes", images, labels, _GENERATED_TEST)


def _render_textures(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    yy, xx = _pixel_grid(IMAGE_SIZE)
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        freq = rng.uniform(2.0, 6.0)  # cycles across the image (Nyquist is 8)
        jitter = rng.normal(0.0, 0.2)  # radians of orientation jitter
        if label < 4:  # oriented gratings at 0°, 45°, 90°, 135°
            angle = label * np.pi / 4 + jitter
            t = xx * np.cos(angle) + yy * np.sin(angle)
            pattern = 0.5 + 0.5 * np.sin(np.pi * freq * t + phase)
        elif label == 4:  # checkerboard
            angle = rng.uniform(0, np.pi / 2)
            a, b = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
            pattern = 0.5 + 0.5 * np.sign(np.sin(np.pi * freq * a + phase) * np.sin(np.pi * freq * b))
        elif label == 5:  # concentric rings around a random centre
            cy, cx = rng.uniform(-0.8, 0.8, size=2)
            pattern = 0.5 + 0.5 * np.sin(np.pi * freq * np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) + phase)
        elif label == 6:  # plaid: two orthogonal gratings
            angle = rng.uniform(0, np.pi / 2)
            a, b = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
            pattern = 0.5 + 0.25 * (np.sin(np.pi * freq * a + phase) + np.sin(np.pi * freq * b))
        elif label == 7:  # random dots
            count = rng.integers(4, 12)
            centres = rng.uniform(-1, 1, size=(count, 2, 1, 1))
            radius = rng.uniform(0.1, 0.25)
            dist = np.sqrt((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2).min(axis=0)
            pattern = (dist < radius).astype(np.float32)
        elif label == 8:  # smooth (low-frequency) noise: a random coarse grid, upsampled
            coarse = rng.uniform(0, 1, size=(4, 4))
            pattern = np.kron(coarse, np.ones((4, 4)))
            pattern = (
                pattern + np.roll(pattern, 2, 0) + np.roll(pattern, 2, 1) + np.roll(pattern, 2, (0, 1))
            ) / 4
        else:  # white noise
            pattern = rng.uniform(0, 1, size=(IMAGE_SIZE, IMAGE_SIZE))
        out[i] = pattern
    return _finish(rng, out, noise=(0.05, 0.35))


def _textures() -> Dataset:
    rng = np.random.default_rng(_SPLIT_SEED + 2)
    labels = _balanced_labels(rng, _GENERATED_TRAIN + _GENERATED_TEST)
    return _split("textures", _render_textures(rng, labels), labels, _GENERATED_TEST)
