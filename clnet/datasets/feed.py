"""Feeding the device: how raw images become the network's input, and datasets held on the device."""

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from ..tensor import DeviceTensor

CROP_PADDING = 4  # "crop" alone: random crops of the image padded by 4 pixels, as for CIFAR


@dataclass(frozen=True)
class InputSpec:
    """What the input stage of a plan does to each raw image, on the device: uint8 images are scaled
    by 1/255 and float images taken as they are; then, per channel, (v - mean) / std when a
    normalisation is given (in [0, 1] units); then, when training, a random crop (the image shifted
    by up to `crop` pixels with zero fill) and a random horizontal flip."""
    dtype: str = "float32"
    mean: tuple = ()
    std: tuple = ()
    crop: int = 0
    flip: bool = False

    @property
    def scale(self):
        return 1.0 / 255.0 if self.dtype == "uint8" else 1.0

    def norm(self, channels):
        """mean[c] then 1/std[c], the kernel's normalisation table."""
        mean = np.asarray(self.mean or (0.0,) * channels, np.float64)
        std = np.asarray(self.std or (1.0,) * channels, np.float64)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise InputError(f"normalisation has {len(mean)} means and {len(std)} standard deviations "
                             f"for images of {channels} channels")
        return np.concatenate([mean, 1.0 / std]).astype(np.float32)

    def without_augmentation(self):
        return replace(self, crop=0, flip=False)


def image_dims(sample_shape):
    """(C, H, W) of a sample: images as they are, (H, W) as one channel, features as channels."""
    shape = tuple(sample_shape)
    return shape if len(shape) == 3 else (1, *shape) if len(shape) == 2 else (shape[0], 1, 1)


class Augment(NamedTuple):
    """Training augmentation: `crop` (padding of the device's random crops), `flip` and
    `resized_crop` (a random-resized-crop, of streamed image folders only: their workers draw it)."""
    crop: int = 0
    flip: bool = False
    resized_crop: bool = False


def parse_augment(augment):
    """An Augment from None, "crop,flip", "crop=2,flip", "random-resized-crop,flip" or a
    dict(crop=..., flip=..., resized_crop=...)."""
    if not augment:
        return Augment()
    if isinstance(augment, dict):
        return Augment(int(augment.get("crop", 0)), bool(augment.get("flip", False)),
                       bool(augment.get("resized_crop", False)))
    crop, flip, resized_crop = 0, False, False
    for item in str(augment).split(","):
        name, _, value = item.strip().partition("=")
        if name == "crop" and (not value or value.strip().isdecimal()):
            crop = int(value) if value else CROP_PADDING
        elif name == "flip" and not value:
            flip = True
        elif name == "random-resized-crop" and not value:
            resized_crop = True
        else:
            raise InputError(f"unknown augmentation {item.strip()!r}: use crop, crop=N (N a whole number of "
                             "pixels), random-resized-crop (streamed image folders) and/or flip, separated by commas")
    if crop < 0:
        raise InputError(f"crop padding must not be negative, got {crop}")
    return Augment(crop, flip, resized_crop)


def channel_statistics(x, rows=None):
    """Per-channel mean and standard deviation of images (N, C, H, W), or of their `rows` (sorted
    indices), in [0, 1] units for uint8."""
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    n = len(x if rows is None else rows)
    mean = np.zeros(x.shape[1])
    square = np.zeros(x.shape[1])
    for start in range(0, n, 4096):  # in slices: no float copy of the whole dataset
        part = x[slice(start, start + 4096) if rows is None else rows[start:start + 4096]].astype(np.float64) * scale
        mean += part.sum(axis=(0, 2, 3))
        square += (part ** 2).sum(axis=(0, 2, 3))
    count = n * x.shape[2] * x.shape[3]
    mean /= count
    std = np.sqrt(np.maximum(square / count - mean ** 2, 0.0))
    return tuple(mean.tolist()), tuple(np.maximum(std, 1e-6).tolist())


class DeviceDataset:
    """Images (in their raw dtype) and targets held in device memory for a whole fit: each epoch
    uploads only the order of the samples, and every batch is gathered on the device by index."""

    def __init__(self, device, x, targets):
        self.images = DeviceTensor.from_numpy(device, x, x.dtype)
        self.targets = DeviceTensor.from_numpy(device, targets.reshape(len(targets), -1), targets.dtype)
        self.order = DeviceTensor.empty(device, (len(x),), np.int32, what="the sample order")

    @staticmethod
    def nbytes(x, targets):
        return x.nbytes + targets.nbytes + 4 * len(x)

    @classmethod
    def fits(cls, device, x, targets, in_use):
        """Whether the dataset fits beside `in_use` bytes, with room to spare, in single buffers."""
        info = device.info
        return (cls.nbytes(x, targets) + in_use < 0.8 * info.global_mem
                and max(x.nbytes, targets.nbytes) < info.max_alloc)

    def shuffle(self, order):
        """The samples of an epoch, in order: all of them, or fewer when some are held out."""
        order = np.asarray(order, np.int32)
        self.order.view(order.shape).upload(order)
