"""A trained model's inputs read from files, in its input shape: image files (PNG, JPEG, BMP) and
the images of .npz/.npy array files, as clnet-predict classifies them."""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ClnetError
from ..files import readable_size
from ..npyfiles import read_npy, read_npz_file
from .images import PILLOW_HINT, _decode

ARRAY_EXTENSIONS = (".npz", ".npy")


def match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Images (N, C, H, W) converted between grey and RGB to `channels`; other channel counts are
    returned as they are, for the model to reject.

    Args:
        x: uint8 or float images (N, C, H, W).
        channels: the model's channels, 1 or 3.

    Example:
        >>> match_channels(np.zeros((2, 3, 28, 28), np.uint8), 1).shape
        (2, 1, 28, 28)
    """
    if x.shape[1] == 3 and channels == 1:  # grey as Pillow's ITU-R 601-2 luma
        if x.dtype == np.uint8:
            r, g, b = (x[:, i].astype(np.uint32) for i in range(3))
            return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]
        return (x[:, 0] * 0.299 + x[:, 1] * 0.587 + x[:, 2] * 0.114)[:, None].astype(x.dtype)
    if x.shape[1] == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    return x


def read_array_file(path: str) -> np.ndarray:
    """The images of an .npy file, or of an .npz file's array named x, x_test or images (or its
    only array). Pickled objects are refused.

    Args:
        path: the .npy or .npz file.

    Example:
        >>> read_array_file("digits.npz").shape  # np.savez("digits.npz", x=images)
        (10, 1, 28, 28)
    """
    if not str(path).lower().endswith(".npz"):
        return read_npy(path, ClnetError)
    arrays = read_npz_file(path, ClnetError)
    key = next((k for k in ("x", "x_test", "images") if k in arrays), next(iter(arrays)) if len(arrays) == 1 else None)
    if key is None:
        raise ClnetError(f"{path}: holds {', '.join(arrays) or 'no arrays'}; expected an array named x")
    return arrays[key]


def fit_array(path: str, x: np.ndarray, shape: Optional[Sequence[int]]) -> np.ndarray:
    """x as a batch of samples of the model's input shape, (N, *shape): one sample gains the batch
    axis, grey images (N, H, W) or (H, W) their channel axis.

    Args:
        path: where x was read, for messages.
        x: the array read.
        shape: the model's input shape without the batch axis, e.g. (1, 28, 28); None takes x as
            a batch (one sample if it is 1-D).

    Example:
        >>> fit_array("x.npy", np.zeros((5, 28, 28)), (1, 28, 28)).shape
        (5, 1, 28, 28)
    """
    if x.dtype.kind not in "fiub":
        raise ClnetError(f"{path}: holds {x.dtype} values, not numbers")
    if shape is None:
        return x if x.ndim >= 2 else x[None]
    shape = tuple(shape)
    if x.shape == shape:
        return x[None]
    if x.shape[1:] == shape:
        return x
    if shape[0] == 1 and (x.shape == shape[1:] or x.shape[1:] == shape[1:]):  # grey images without a channel axis
        return x.reshape(-1, *shape)
    raise ClnetError(f"{path}: arrays of shape {x.shape} do not fit the model's input {shape} "
                     f"(expected (N, {', '.join(map(str, shape))}))")


def read_image(path: str, shape: Optional[Sequence[int]]) -> np.ndarray:
    """An image file as uint8 (C, H, W) in the model's channels and size (needs Pillow).

    Args:
        path: an image file Pillow reads (PNG, JPEG, BMP, WebP, TIFF, GIF: the first frame).
        shape: the model's input shape (channels 1 or 3, height, width).

    Example:
        >>> read_image("digit.png", (1, 28, 28)).shape  # grey, resized to 28x28
        (1, 28, 28)
    """
    try:
        from PIL import Image
    except ImportError:
        raise ClnetError(PILLOW_HINT) from None
    if shape is None or len(shape) != 3 or shape[0] not in (1, 3):
        raise ClnetError(f"the model's input shape {shape} is not an image (channels 1 or 3, height, width)")
    channels, h, w = shape
    try:
        pixels = _decode(Image, path, channels == 1, (h, w))
    except Exception as exc:  # not an image, truncated, unsupported format, ...
        raise ClnetError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from None
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[None], channels, axis=0)
    else:
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels)


def read_inputs(path: str, shape: Optional[Sequence[int]]) -> Tuple[List[str], np.ndarray]:
    """(names, samples) of one file for a model of input shape `shape`: an array file's samples
    (named path[0], path[1], ...) or an image file as one sample (named path).

    Args:
        path: an .npz/.npy array file, or an image file.
        shape: the model's input shape without the batch axis.

    Example:
        >>> names, x = read_inputs("digits.npz", (1, 28, 28))  # x holds 10 images
        >>> names[:2], x.shape
        (['digits.npz[0]', 'digits.npz[1]'], (10, 1, 28, 28))
    """
    readable_size(path, ClnetError)  # a FIFO or a device is refused before it is opened
    if path.lower().endswith(ARRAY_EXTENSIONS):
        x = fit_array(path, read_array_file(path), shape)
        return [f"{path}[{i}]" for i in range(len(x))], x
    return [path], read_image(path, shape)[None]
