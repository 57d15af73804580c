"""Layers, in PyTorch's layouts (NCHW activations, Dense weight (out, in))."""

from .activation import Activation, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, LayerContext
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .norm import BatchNorm1d, BatchNorm2d
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .reshape import Flatten

__all__ = ["Activation", "AvgPool2D", "BatchNorm1d", "BatchNorm2d", "Conv2D", "Dense", "Dropout", "Flatten",
           "GlobalAvgPool2D", "Layer", "LayerContext", "MaxPool2D", "ReLU", "Sigmoid", "Softmax", "Tanh"]
