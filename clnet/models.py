"""Preset networks: DESIGN.md's reference networks and LeNet-5.

Each takes the per-sample `input_shape` (C, H, W) and the number of classes; the defaults are the
reference ones (28x28 grey images for mlp, mnist-cnn and lenet5, 32x32 RGB for cifar-cnn, 10
classes). The first Dense layer is sized for the input, so any image size works. `device` and
`seed` are those of `clnet.Sequential`. `PRESETS` names them as clnet-train does.

Example:
    >>> model = clnet.models.lenet5(seed=1)
    >>> model.compile("cross_entropy", "adam").fit(x, y, epochs=5)
    >>> clnet.models.cifar_cnn(input_shape=(3, 64, 64), classes=100)   # Dense 16384->512 first
    >>> clnet.models.PRESETS["mnist-cnn"](device=clnet.device(device="cpu"))
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from .device import Device
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .model import Sequential


def _flat(features, input_shape):
    """The number of values the convolutional part turns one input into."""
    shape = tuple(input_shape)
    for layer in features:
        shape = layer.output_shape(shape)
    return prod(shape)


def _classifier(features, input_shape, hidden, classes, device, seed):
    head, width = [Flatten()], _flat(features, input_shape)
    for units in hidden:
        head += [Dense(width, units), ReLU()]
        width = units
    return Sequential(features + head + [Dense(width, classes)], device=device, seed=seed)


def mlp(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (1, 28, 28),
        classes: int = 10) -> Sequential:
    """Flatten, Dense 784->256, ReLU, Dense 256->128, ReLU, Dense 128->10."""
    return _classifier([], input_shape, (256, 128), classes, device, seed)


def mnist_cnn(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (1, 28, 28),
              classes: int = 10) -> Sequential:
    """PyTorch's MNIST example without dropout: Conv2D 1->32 k3, ReLU, Conv2D 32->64 k3, ReLU,
    MaxPool 2, Flatten, Dense 9216->128, ReLU, Dense 128->10."""
    c = input_shape[0]
    features = [Conv2D(c, 32, 3), ReLU(), Conv2D(32, 64, 3), ReLU(), MaxPool2D(2)]
    return _classifier(features, input_shape, (128,), classes, device, seed)


def cifar_cnn(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 32, 32),
              classes: int = 10) -> Sequential:
    """Two blocks of two 3x3 convolutions (32, then 64 channels, padding 1) with ReLU and a 2x2
    max-pool, then Dense 4096->512, ReLU, Dense 512->10."""
    c = input_shape[0]
    features = [Conv2D(c, 32, 3, padding=1), ReLU(), Conv2D(32, 32, 3, padding=1), ReLU(), MaxPool2D(2),
                Conv2D(32, 64, 3, padding=1), ReLU(), Conv2D(64, 64, 3, padding=1), ReLU(), MaxPool2D(2)]
    return _classifier(features, input_shape, (512,), classes, device, seed)


def lenet5(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (1, 28, 28),
           classes: int = 10) -> Sequential:
    """LeNet-5 with ReLU and max-pooling: Conv2D 1->6 k5 p2, pool, Conv2D 6->16 k5, pool, Dense
    400->120->84->10."""
    c = input_shape[0]
    features = [Conv2D(c, 6, 5, padding=2), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5), ReLU(), MaxPool2D(2)]
    return _classifier(features, input_shape, (120, 84), classes, device, seed)


PRESETS = {"mlp": mlp, "mnist-cnn": mnist_cnn, "cifar-cnn": cifar_cnn, "lenet5": lenet5}
INPUT_SHAPES = {"mlp": (1, 28, 28), "mnist-cnn": (1, 28, 28), "cifar-cnn": (3, 32, 32), "lenet5": (1, 28, 28)}
