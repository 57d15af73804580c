"""numpy arrays: an .npz archive (x, y or x_train, y_train, x_test, y_test), or a folder of .npy files.

Pickled Python objects are never loaded (npyfiles reads plain numeric arrays only): a .npy holding a
dict, or an object array, is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..files import readable_size
from ..npyfiles import read_npy, read_npz_file
from .dataset import Dataset, check_labels

NPZ_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
EXPECTED = "x and y, or x_train, y_train, x_test and y_test (the test pair optional)"


def _read_folder(path):
    names = sorted(p.stem for p in path.glob("*.npy") if p.is_file())
    wanted = {"x", "y", "x_train", "y_train", "x_test", "y_test"}
    return {stem: read_npy(path / f"{stem}.npy", DatasetError) for stem in names if stem in wanted}, \
        [f"{stem}.npy" for stem in names]


def _images(x, where):
    if x.dtype.kind not in "uif" or x.dtype == np.bool_:
        raise DatasetError(f"{where}: images must be uint8 or float numbers, got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise DatasetError(f"{where}: images must be (N, C, H, W) or (N, H, W), got shape {x.shape}")
    if not x.size:
        raise DatasetError(f"{where}: holds no images (shape {x.shape}): save at least one image of at least one pixel")
    if x.ndim == 4 and x.shape[1] > 4 and x.shape[3] in (1, 3):
        raise DatasetError(f"{where}: images of shape {x.shape} look channels-last (N, H, W, C); clnet wants "
                           "(N, C, H, W): save x.transpose(0, 3, 1, 2)")
    if x.dtype.kind in "iu" and x.dtype != np.uint8:  # e.g. int64 from np.array(list): fine if 0..255
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"{where}: integer images of dtype {x.dtype} with values {x.min()}..{x.max()}: "
                               "expected uint8 pixels 0..255 or float images")
        x = x.astype(np.uint8)
    return x


def _labels(y, count, where):
    if y.ndim == 2 and y.shape[1] == 1:  # (N, 1), as Keras' CIFAR loaders give
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{where}: labels must be 1-D (N,), got shape {y.shape}")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or y.dtype == np.bool_:
        raise DatasetError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if len(y) != count:
        raise DatasetError(f"{where}: {count} images but {len(y)} labels: the two arrays must have one length")
    if len(y) and y.min() < 0:
        raise DatasetError(f"{where}: negative label {y.min()}: labels must be 0, 1, 2, ...")
    check_labels(y, where)
    return y.astype(np.int64)


def load_arrays(path: str | os.PathLike, name: str | None = None) -> tuple[Dataset, Dataset | None]:
    """(train, test) Datasets from numpy arrays; test is None when the file holds one pair.

    `path`: an .npz with keys x and y, or x_train and y_train (plus x_test and y_test); or a folder
    holding x.npy and y.npy (or x_train.npy, y_train.npy, x_test.npy, y_test.npy).
    Images (N, C, H, W) or (N, H, W), uint8 or float; labels integers (N,).
    `name` (default: the file's name without its suffix) names the datasets, with "-train" and "-test"
    appended when there are two.

    Example:
        >>> np.savez("digits.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
        >>> train, test = load_arrays("digits.npz")
    """
    path = Path(path)
    base = name or path.stem or str(path)
    if path.is_dir():
        arrays, found = _read_folder(path)
        where = lambda key: path / f"{key}.npy"
        what = f"{path} holds .npy files {', '.join(found) or 'none'}"
        suffix = ".npy"
    else:
        if not path.exists():
            raise DatasetError(f"{path}: no such file or folder: check the path")
        readable_size(path, DatasetError)  # a FIFO or a device is refused before it is opened
        try:
            with open(path, "rb") as f:
                head = f.read(len(NPY_MAGIC))
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
        if head.startswith(NPY_MAGIC):
            array = read_npy(path, DatasetError)  # refuses pickles; a lone array has no labels
            raise DatasetError(f"{path} is a single .npy array of shape {array.shape}, without labels: give an "
                               ".npz with x and y (np.savez(path, x=images, y=labels)) or a folder holding "
                               "x.npy and y.npy")
        if not head.startswith(NPZ_MAGIC[:2]):
            raise DatasetError(f"{path} is not an .npz archive (it starts with {head[:4]!r}): give an .npz "
                               "written by np.savez or a folder holding x.npy and y.npy")
        arrays = read_npz_file(path, DatasetError)
        where = lambda key: f"{path}[{key!r}]"
        what = f"{path} has keys {', '.join(sorted(arrays)) or 'none'}"
        suffix = ""

    def have(*keys):
        return all(k in arrays for k in keys)

    if have("x_train", "y_train"):
        pairs = [("x_train", "y_train")]
        if have("x_test", "y_test"):
            pairs.append(("x_test", "y_test"))
        elif "x_test" in arrays or "y_test" in arrays:
            lone, missing = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
            raise DatasetError(f"{what}: {lone}{suffix} without {missing}{suffix}: expected {EXPECTED}")
    elif have("x", "y"):
        pairs = [("x", "y")]
    else:
        raise DatasetError(f"{what}: expected {EXPECTED}")

    out = []
    for (xkey, ykey), split in zip(pairs, ("train", "test")):
        x = _images(arrays[xkey], str(where(xkey)))
        y = _labels(arrays[ykey], len(x), f"{where(ykey)} (with {xkey})")
        out.append(Dataset(x, y, name=f"{base}-{split}" if len(pairs) > 1 else base))
    return out[0], out[1] if len(out) > 1 else None
