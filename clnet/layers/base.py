"""Layer: shape inference, parameters, the launches of its forward and backward passes, its ONNX
nodes and its float64 numpy reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from copy import copy
from typing import Union

import numpy as np

from ..errors import InputError, ShapeError
from .onnx_builder import OnnxBuilder
from .symbolic import SymbolicTensor

#: A size given for both image dimensions (an int) or per dimension (an (h, w) pair).
IntOrPair = Union[int, Sequence[int]]


class LayerContext:
    """What a layer's passes record with: the plan, the layer's parameter, gradient and buffer
    tensors, the activation fused into it (its kernel options, `ops.activation(...)`, or None),
    whether the plan trains, a seed for its randomness, and `saved`, where forward leaves values for
    backward (the same context serves both, or for backward its copy `past_activation()`)."""

    def __init__(self, plan, params, grads, buffers, act=None, training=False, seed=0):
        self.plan, self.params, self.grads, self.buffers = plan, params, grads, buffers
        self.act, self.training, self.seed = act, training, seed
        self.saved = {}

    def past_activation(self):
        """This context for a backward pass handed the gradient before the fused activation (the
        compiler applied its derivative): the same plan, tensors and saved values, `act` None. The
        y handed to backward is still the activation's output, so a backward without `act` must not
        read y as its own output (Dense's, Conv2D's and BatchNorm's do not read it)."""
        ctx = copy(self)
        ctx.act = None
        return ctx


class Layer:
    """Base of all layers. Shapes passed around exclude the batch dimension. Every layer takes
    `name=`, the name of its node in a network (the state_dict prefix of its parameters, such as
    "layer1.0.conv1"); by default a Sequential names its nodes "0", "1", ... and a functional graph
    by the class name in lower case.

    Layers never allocate device memory or read results back: `forward` and `backward` record
    launches into `ctx.plan` over the values the graph hands them, and return the values they create.
    """

    #: The node's name given at construction (a subclass that skips Layer.__init__ has none).
    name = None
    #: Buffers that count (BatchNorm's num_batches_tracked): float32 on the device, int64 in the
    #: state_dict, as torch keeps them, so that a torch module loads it strictly.
    counters = ()
    #: True for layers that can apply a following activation as they write their output: the GEMM
    #: epilogue of Dense and Conv2D, BatchNorm's normalisation, Add's sum.
    fuses_activation = False
    #: Whether backward applies the fused activation's derivative as it reads dy (Dense, Conv2D,
    #: BatchNorm); where not (Add), the compiler hands backward the gradient before the activation.
    applies_activation_grad = True
    #: True for layers whose output channels are the rows of their weight (Dense, Conv2D), so that
    #: a BatchNorm after them folds into their weight and bias for evaluation.
    takes_folded_norm = False
    #: True for layers that fold into such a layer before them for evaluation (BatchNorm: `fold`).
    folds_into_producer = False
    #: True for layers whose forward can add a residual Add's other input before the fused activation
    #: (BatchNorm: `forward(ctx, x, residual)`), so that the graph runs that Add in their stage.
    adds_residual = False
    #: How many values the layer reads: 1, or None for two or more (Add, Concatenate), whose
    #: output_shape, flops, forward and reference take one argument per input, and whose backward
    #: takes the tuple of inputs and a tuple of need_dx flags and returns a tuple of gradients.
    arity = 1

    def __init__(self, name: str | None = None):
        """`name` names the layer's node in a network: the state_dict prefix of its parameters."""
        self.name = node_name(name)

    def __call__(self, inputs, name: str | None = None) -> SymbolicTensor:
        """This layer applied to symbolic tensors (`clnet.Input(...)` or other layers' results):
        one, or a list for layers of several inputs; `name` names the node (its parameters'
        state_dict prefix); by default the layer's own name, else the class name in lower case,
        numbered when repeated."""
        inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
        if not all(isinstance(x, SymbolicTensor) for x in inputs):
            raise TypeError(f"{self!r} was called on {inputs!r}: call a layer on clnet.Input(...) or on "
                            "another layer's result")
        return SymbolicTensor(self, inputs, node_name(name) or self.name)

    def config(self) -> dict:
        """The constructor arguments as a JSON-able dict (lists for pairs), so that
        `type(layer)(**layer.config())` rebuilds the layer; model files store it. Layers that take
        arguments override this."""
        return {}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape} of the trainable parameters, in state_dict order."""
        return {}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape} of non-trainable state (running statistics), after the parameters in state_dict."""
        return {}

    def init_params(self, rng: np.random.Generator, followed_by: Layer | None = None) -> dict[str, np.ndarray]:
        """{name: float32 array} initial values of parameters and buffers; `followed_by` is the next
        layer (it chooses the initialisation)."""
        return {}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape per sample of an input shape per sample; a ShapeError if the layer
        cannot take it."""
        return tuple(input_shape)

    def forward(self, ctx, x):
        raise NotImplementedError

    def backward(self, ctx, x, y, dy, need_dx):
        """Record the gradients: write ctx.grads (same keys as ctx.params) and return dx (None if
        not need_dx). x and y are the forward pass's input and output values."""
        raise NotImplementedError

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Forward multiply-adds x 2 for one sample."""
        return 0

    def arrays_in(self, state: Mapping[str, np.ndarray], prefix: str | int) -> dict[str, np.ndarray]:
        """The layer's parameters and buffers, by name ("weight", ...), out of a state_dict whose
        keys for this layer start with `prefix` ("0.weight" for prefix 0)."""
        return {name: state[f"{prefix}.{name}"] for name in (*self.param_shapes(), *self.buffer_shapes())}

    def to_onnx(self, builder: OnnxBuilder, name: str, prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Add the layer's ONNX nodes to `builder` (clnet/export.py): they read its current value and
        leave the layer's output as the current value. `name` names the nodes, `prefix` the
        initializers (f"{prefix}.weight", the state_dict keys); `arrays` are the layer's parameters
        and buffers by name (`arrays_in`)."""
        raise InputError(f"layer {name} ({self!r}) has no ONNX export")

    def reference(self, params: Mapping[str, np.ndarray], x: np.ndarray, training: bool = False) -> np.ndarray:
        """The float64 numpy forward pass of a batch x (N, *input_shape), with PyTorch's semantics:
        the twin the tests check the device against. `params` are the layer's parameters and
        buffers by name (`arrays_in`); `training` selects training behaviour (batch statistics)."""
        raise NotImplementedError(f"{self!r} has no float64 reference")

    def shape_error(self, expected, got, hint=""):
        """The graph prefixes the layer's position and name."""
        return ShapeError(f"expects input {expected} per sample, got {tuple(got)}" + (f": {hint}" if hint else ""))

    def __repr__(self):
        return f"{type(self).__name__}()"


def node_name(name):
    """`name` checked as a node's name: None, or a non-empty string."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"a layer's name must be a non-empty string, not {name!r}")
    return name


#: The initialisations of Dense and Conv2D (see `weight_and_bias`).
INITS = ("torch", "auto", "he", "glorot")


def weight_and_bias(rng, init, weight_shape, fan_in, fan_out, bias_size, before_relu):
    """The initial weight and bias (None for bias_size 0) of a Dense or Conv2D layer, drawn in that
    order from `rng`. "torch" is PyTorch's reset_parameters of Linear and Conv2d: the weight
    kaiming_uniform_ with a = sqrt(5), uniform within gain * sqrt(3 / fan_in) where
    gain = sqrt(2 / (1 + a^2)) = sqrt(1 / 3), that is within 1 / sqrt(fan_in), and the bias uniform
    within 1 / sqrt(fan_in) too. "he" (uniform within sqrt(6 / fan_in)) and "glorot" (within
    sqrt(6 / (fan_in + fan_out))) leave the bias zero; "auto" is He before a ReLU, Glorot otherwise."""
    if init == "torch":
        bound = 1.0 / np.sqrt(fan_in)
        weight = rng.uniform(-bound, bound, size=weight_shape).astype(np.float32)
        bias = rng.uniform(-bound, bound, size=bias_size).astype(np.float32) if bias_size else None
        return weight, bias
    he = init == "he" or (init == "auto" and before_relu)
    bound = np.sqrt(6.0 / fan_in) if he else np.sqrt(6.0 / (fan_in + fan_out))
    weight = rng.uniform(-bound, bound, size=weight_shape).astype(np.float32)
    return weight, np.zeros(bias_size, np.float32) if bias_size else None
