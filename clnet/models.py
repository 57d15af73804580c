"""Preset networks: DESIGN.md's reference networks and LeNet-5, built for 28x28 grey or 32x32 RGB images."""

from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .model import Sequential


def mlp(device=None, seed=0, in_features=784, classes=10):
    """Flatten, Dense 784->256, ReLU, Dense 256->128, ReLU, Dense 128->10."""
    return Sequential([Flatten(), Dense(in_features, 256), ReLU(), Dense(256, 128), ReLU(),
                       Dense(128, classes)], device=device, seed=seed)


def mnist_cnn(device=None, seed=0, classes=10):
    """PyTorch's MNIST example without dropout, for (1, 28, 28) images: Conv2D 1->32 k3, ReLU,
    Conv2D 32->64 k3, ReLU, MaxPool 2, Flatten, Dense 9216->128, ReLU, Dense 128->10."""
    return Sequential([Conv2D(1, 32, 3), ReLU(), Conv2D(32, 64, 3), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(9216, 128), ReLU(), Dense(128, classes)], device=device, seed=seed)


def cifar_cnn(device=None, seed=0, classes=10):
    """For (3, 32, 32) images: two blocks of two 3x3 convolutions (32, then 64 channels, padding 1)
    with ReLU and a 2x2 max-pool, then Dense 4096->512, ReLU, Dense 512->10."""
    return Sequential([Conv2D(3, 32, 3, padding=1), ReLU(), Conv2D(32, 32, 3, padding=1), ReLU(), MaxPool2D(2),
                       Conv2D(32, 64, 3, padding=1), ReLU(), Conv2D(64, 64, 3, padding=1), ReLU(), MaxPool2D(2),
                       Flatten(), Dense(4096, 512), ReLU(), Dense(512, classes)], device=device, seed=seed)


def lenet5(device=None, seed=0, classes=10):
    """LeNet-5 for (1, 28, 28) images with ReLU and max-pooling: Conv2D 1->6 k5 p2, pool, Conv2D
    6->16 k5, pool, Dense 400->120->84->10."""
    return Sequential([Conv2D(1, 6, 5, padding=2), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5), ReLU(), MaxPool2D(2),
                       Flatten(), Dense(400, 120), ReLU(), Dense(120, 84), ReLU(), Dense(84, classes)],
                      device=device, seed=seed)


PRESETS = {"mlp": mlp, "mnist-cnn": mnist_cnn, "cifar-cnn": cifar_cnn, "lenet5": lenet5}
INPUT_SHAPES = {"mlp": (1, 28, 28), "mnist-cnn": (1, 28, 28), "cifar-cnn": (3, 32, 32), "lenet5": (1, 28, 28)}
