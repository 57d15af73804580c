"""Layers, in PyTorch's layouts (NCHW activations, Dense weight (out, in)).

`LAYERS` maps the canonical class name of every concrete layer imported here to its class: the
names that model files store. A new layer is its file and one import line here. `ALIASES` maps
former names to the same classes, so that code importing them and model files naming them keep
working (BatchNorm1d and BatchNorm2d became BatchNorm1D and BatchNorm2D). `Input` and layers
called on symbolic tensors write networks that branch (clnet.Model).
"""

from .activation import Activation, Identity, LeakyReLU, ReLU, ReLU6, Sigmoid, SiLU, Softmax, Tanh
from .base import Layer, LayerContext
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .merge import Add, Concatenate
from .norm import BatchNorm1D, BatchNorm1d, BatchNorm2D, BatchNorm2d
from .pool import AdaptiveAvgPool2D, AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .reshape import Flatten
from .symbolic import Input, SymbolicTensor

# Every concrete layer imported above, by the name it has (an alias is imported under another name).
LAYERS: dict[str, type[Layer]] = {name: value for name, value in sorted(globals().items())
                                  if isinstance(value, type) and issubclass(value, Layer)
                                  and value not in (Layer, Activation) and value.__name__ == name}
ALIASES: dict[str, type[Layer]] = {"BatchNorm1d": BatchNorm1d, "BatchNorm2d": BatchNorm2d}

__all__ = sorted([*LAYERS, *ALIASES, "ALIASES", "Activation", "Input", "LAYERS", "Layer", "LayerContext",
                  "SymbolicTensor"])
