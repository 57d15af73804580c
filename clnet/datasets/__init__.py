"""Datasets: the bundled MNIST-5k, readers for the common formats, and the device input pipeline."""

from .bundled import load_mnist_5k
from .dataset import Dataset

__all__ = ["Dataset", "load_mnist_5k"]
