"""Datasets. For now the bundled MNIST-5k; readers for IDX, CIFAR and image folders come later."""

from .bundled import load_mnist_5k

__all__ = ["load_mnist_5k"]
