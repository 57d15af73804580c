"""Layers, in PyTorch's layouts (NCHW activations, Dense weight (out, in)).

`LAYERS` maps the canonical class name of every concrete layer to its class: the names that model
files store. `ALIASES` maps former names to the same classes, so that code importing them and model
files naming them keep working (BatchNorm1d and BatchNorm2d became BatchNorm1D and BatchNorm2D).
"""

from .activation import Activation, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, LayerContext
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .norm import BatchNorm1D, BatchNorm1d, BatchNorm2D, BatchNorm2d
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .reshape import Flatten

LAYERS: dict[str, type[Layer]] = {cls.__name__: cls for cls in (
    AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU,
    Sigmoid, Softmax, Tanh)}
ALIASES: dict[str, type[Layer]] = {"BatchNorm1d": BatchNorm1d, "BatchNorm2d": BatchNorm2d}

__all__ = ["ALIASES", "Activation", "AvgPool2D", "BatchNorm1D", "BatchNorm1d", "BatchNorm2D", "BatchNorm2d",
           "Conv2D", "Dense", "Dropout", "Flatten", "GlobalAvgPool2D", "LAYERS", "Layer", "LayerContext",
           "MaxPool2D", "ReLU", "Sigmoid", "Softmax", "Tanh"]
