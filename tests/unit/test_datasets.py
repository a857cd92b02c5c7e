"""The training datasets: one shared image format, balanced classes, deterministic, not trivial."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import datasets


@pytest.mark.parametrize("name", datasets.IMAGE_DATASETS)
def test_image_datasets_share_one_input_format(name):
    data = datasets.load(name)
    assert data.input_shape == (1, 16, 16)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape[1:] == (1, 16, 16) and len(x) == len(y)
        assert x.min() >= -1.0 and x.max() <= 1.0
        counts = np.bincount(y, minlength=datasets.NUM_CLASSES)
        assert len(counts) == datasets.NUM_CLASSES
        # Balanced-ish: every class holds between 5% and 15% of the split.
        assert counts.min() >= 0.05 * len(y) and counts.max() <= 0.15 * len(y)


def test_mnist1d_holds_length_40_signals_in_10_classes():
    data = datasets.load("mnist1d")
    assert data.input_shape == (1, 40)
    assert set(np.unique(data.y_train)) == set(range(10)) == set(np.unique(data.y_test))
    assert len(data.y_train) == 4000 and len(data.y_test) == 1000


@pytest.mark.parametrize("name", ["shapes", "textures", "digits"])
def test_datasets_are_deterministic(name):
    cached = datasets.load(name)
    fresh = datasets._load_cached.__wrapped__(name, None)  # rebuilt from scratch, bypassing the cache
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(cached, field), getattr(fresh, field))


def test_train_and_test_splits_are_disjoint():
    data = datasets.load("digits")
    train = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train for row in data.x_test)


def _nearest_centroid_accuracy(data: datasets.Dataset) -> float:
    x = data.x_train.reshape(len(data.x_train), -1)
    centroids = np.stack([x[data.y_train == k].mean(axis=0) for k in range(10)])
    test = data.x_test.reshape(len(data.x_test), -1)
    predicted = ((test[:, None] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
    return float((predicted == data.y_test).mean())


@pytest.mark.parametrize("name", ["shapes", "textures"])
def test_generated_datasets_are_learnable_but_not_trivial(name):
    # Zoo accuracies must spread: a template matcher beats chance (0.1) clearly but stays far from 1.
    accuracy = _nearest_centroid_accuracy(datasets.load(name))
    assert 0.2 < accuracy < 0.6


def test_resizing_for_families_that_need_28x28():
    data = datasets.load("shapes", 28)
    assert data.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(data.y_test, datasets.load("shapes").y_test)
    assert datasets.load("shapes", 16) is datasets.load("shapes")


def test_shared_arrays_are_read_only():
    with pytest.raises(ValueError):
        datasets.load("textures").x_train[0, 0, 0, 0] = 0.0


def test_bad_requests_get_clear_errors():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        datasets.load("cifar")
    with pytest.raises(ValueError, match="1-D signals"):
        datasets.load("mnist1d", 28)
