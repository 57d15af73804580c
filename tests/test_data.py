"""The bundled MNIST-5k: shapes, stratified split, scaling, and clear errors for a broken file."""

import numpy as np
import pytest

import clnet
from clnet.datasets.bundled import load_mnist_5k


def test_bundled_split_is_stratified_and_scaled():
    (x, y), (x_test, y_test) = load_mnist_5k()
    assert x.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() == 1.0
    assert np.bincount(y).tolist() == [400] * 10 and np.bincount(y_test).tolist() == [100] * 10
    assert len(np.unique(y[:50])) > 5  # shuffled, not sorted by label as the source is
    train_images = {img.tobytes() for img in x}
    assert not any(img.tobytes() in train_images for img in x_test)  # no image in both


def test_missing_or_corrupt_file_says_what_to_do(tmp_path):
    with pytest.raises(clnet.DatasetError, match="missing: reinstall clnet"):
        load_mnist_5k(tmp_path / "absent.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(clnet.DatasetError, match="corrupt"):
        load_mnist_5k(broken)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x_train=np.zeros((3, 28, 28), np.uint8), y_train=np.zeros(3, np.uint8),
             x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.zeros(1, np.uint8))
    with pytest.raises(clnet.DatasetError, match="x_train has shape"):
        load_mnist_5k(wrong)
