"""Layers, in PyTorch's layouts (NCHW activations, Dense weight (out, in))."""

from .activation import Activation, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, LayerContext
from .conv import Conv2D
from .dense import Dense
from .reshape import Flatten

__all__ = ["Activation", "Conv2D", "Dense", "Flatten", "Layer", "LayerContext", "ReLU", "Sigmoid", "Softmax", "Tanh"]
