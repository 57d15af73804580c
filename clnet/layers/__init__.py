"""Layers, in PyTorch's layouts (NCHW activations, Dense weight (out, in))."""

from .activation import Activation, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, LayerContext
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .norm import BatchNorm1d, BatchNorm2d
from .reshape import Flatten

__all__ = ["Activation", "BatchNorm1d", "BatchNorm2d", "Conv2D", "Dense", "Dropout", "Flatten", "Layer", "LayerContext", "ReLU", "Sigmoid", "Softmax", "Tanh"]
