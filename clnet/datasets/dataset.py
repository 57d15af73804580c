"""Dataset: images and integer labels in memory, as every reader returns them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DatasetError

MIN_CLASS_LIMIT = 1024    # labels below this are always taken as classes (ImageNet has 1000)
CLASSES_PER_SAMPLE = 16   # beyond MIN_CLASS_LIMIT, a dataset of N samples has fewer than 16 N classes


def check_labels(y: np.ndarray, where: str) -> None:
    """Refuse labels far beyond the data, before a model of that many outputs is built: every label
    must be below max(1024, 16 x the number of samples). A stray 5_000_000 among 200 labels is a
    damaged file, not a 5,000,001-class problem.

    Args:
        y: the integer labels, non-negative.
        where: names the file (and array) they come from.

    Example:
        >>> check_labels(np.array([3, 5_000_000]), "data.npz['y']")
        Traceback (most recent call last):
        DatasetError: data.npz['y']: label 5000000 (sample 1) is far beyond the data: ...
    """
    if not len(y):
        return
    limit = max(MIN_CLASS_LIMIT, CLASSES_PER_SAMPLE * len(y))
    worst = int(np.argmax(y))
    if y[worst] >= limit:
        raise DatasetError(f"{where}: label {int(y[worst])} (sample {worst}) is far beyond the data: {len(y)} samples "
                           f"have labels below {limit:,} (max(1024, 16 x samples)); labels are class numbers "
                           "0, 1, 2, ...: fix or remove that sample")


class Dataset:
    """`x`: images (N, C, H, W), uint8 (0-255, scaled to [0, 1] when training) or float32;
    `y`: int64 class labels (N,); `classes`: the class names when known; `name`: where it came from.

    Unpacks like a pair: `x, y = dataset`.

    Args:
        x: images (N, C, H, W), or (N, H, W) for one channel; uint8 is kept, other numbers become float32.
        y: non-negative integer labels (N,).
        classes: the class names, in label order.
        name: where the data came from, for messages.

    Example:
        >>> train = Dataset(np.zeros((10, 28, 28), np.uint8), np.arange(10) % 2, classes=["even", "odd"])
        >>> train.image_shape, train.num_classes, len(train)
        ((1, 28, 28), 2, 10)
    """

    def __init__(self, x: ArrayLike, y: ArrayLike, classes: Sequence[str] | None = None, name: str = "dataset"):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 3:  # (N, H, W): one channel
            x = x[:, None]
        if x.ndim != 4:
            raise DatasetError(f"{name}: images must be (N, C, H, W) or (N, H, W), got shape {x.shape}")
        if x.dtype != np.uint8:
            if x.dtype.kind not in "fiu":
                raise DatasetError(f"{name}: images must be numbers, got dtype {x.dtype}")
            x = x.astype(np.float32, copy=False)
        if y.ndim != 1 or len(y) != len(x):
            raise DatasetError(f"{name}: {len(x)} images but labels of shape {y.shape}")
        if y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
            raise DatasetError(f"{name}: labels must be non-negative integers")
        check_labels(y, name)
        self.x, self.y = x, y.astype(np.int64, copy=False)
        self.classes = list(classes) if classes is not None else None
        self.name = name

    @property
    def num_classes(self) -> int:
        """len(classes) when they are known, else the largest label + 1 (0 for no samples)."""
        return len(self.classes) if self.classes is not None else int(self.y.max()) + 1 if len(self.y) else 0

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one image, (C, H, W)."""
        return self.x.shape[1:]

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.x, self.y))

    def __repr__(self):
        return (f"Dataset({self.name!r}: {len(self)} images of {self.image_shape} {self.x.dtype}, "
                f"{self.num_classes} classes)")
