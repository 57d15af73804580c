"""The bundled dataset: 5000 real MNIST images (500 per class), split 4000 / 1000 stratified."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DatasetError

MNIST_5K = Path(__file__).with_name("mnist_5k.npz")
SHAPES = {"x_train": (4000, 1, 28, 28), "y_train": (4000,), "x_test": (1000, 1, 28, 28), "y_test": (1000,)}


def load_mnist_5k(path: str | os.PathLike = MNIST_5K) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)): float32 images in [0, 1] of shape (N, 1, 28, 28), int64 labels.

    Shape:
        x_train: (4000, 1, 28, 28), y_train: (4000,); x_test: (1000, 1, 28, 28), y_test: (1000,).

    Args:
        path: the .npz to read; the default is the copy inside the package.

    Example:
        >>> (x, y), (x_test, y_test) = clnet.datasets.load_mnist_5k()
        >>> model.fit(x, y, epochs=3)
    """
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in SHAPES}
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: reinstall clnet (the file ships inside the package)") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path} is corrupt ({exc}): reinstall clnet") from None
    for key, shape in SHAPES.items():
        if arrays[key].shape != shape:
            raise DatasetError(f"{path}: {key} has shape {arrays[key].shape}, expected {shape}: reinstall clnet")
    if arrays["y_train"].max() > 9 or arrays["y_test"].max() > 9:
        raise DatasetError(f"{path}: labels outside 0..9: reinstall clnet")
    scale = lambda x: x.astype(np.float32) / 255.0
    return ((scale(arrays["x_train"]), arrays["y_train"].astype(np.int64)),
            (scale(arrays["x_test"]), arrays["y_test"].astype(np.int64)))
