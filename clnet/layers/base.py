"""Layer: shape inference, parameters and the launches of its forward and backward passes."""

import numpy as np

from ..errors import ShapeError


class LayerContext:
    """What a layer's passes record with: the plan, the layer's parameter, gradient and buffer
    tensors, the activation fused into it, whether the plan trains, a seed for its randomness, and
    `saved`, where forward leaves values for backward (the same context serves both)."""

    def __init__(self, plan, params, grads, buffers, act="none", training=False, seed=0):
        self.plan, self.params, self.grads, self.buffers = plan, params, grads, buffers
        self.act, self.training, self.seed = act, training, seed
        self.saved = {}


class Layer:
    """Base of all layers. Shapes passed around exclude the batch dimension.

    Layers never allocate device memory or read results back: `forward` and `backward` record
    launches into `ctx.plan` over the values the graph hands them, and return the values they create.
    """

    #: True for layers whose GEMM epilogue can apply a following activation (Dense, Conv2D).
    fuses_activation = False

    def config(self):
        """The constructor arguments as a JSON-able dict (lists for pairs), so that
        `type(layer)(**layer.config())` rebuilds the layer; model files store it. Layers that take
        arguments override this."""
        return {}

    def param_shapes(self):
        """{name: shape} of the trainable parameters, in state_dict order."""
        return {}

    def buffer_shapes(self):
        """{name: shape} of non-trainable state (running statistics), after the parameters in state_dict."""
        return {}

    def init_params(self, rng, followed_by=None):
        """{name: float32 array} initial values of parameters and buffers; `followed_by` is the next
        layer (it chooses the initialisation)."""
        return {}

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, ctx, x):
        raise NotImplementedError

    def backward(self, ctx, x, y, dy, need_dx):
        """Record the gradients: write ctx.grads (same keys as ctx.params) and return dx (None if
        not need_dx). x and y are the forward pass's input and output values."""
        raise NotImplementedError

    def flops(self, input_shape):
        """Forward multiply-adds x 2 for one sample."""
        return 0

    def shape_error(self, expected, got, hint=""):
        """The graph prefixes the layer's position and name."""
        return ShapeError(f"expects input {expected} per sample, got {tuple(got)}" + (f": {hint}" if hint else ""))

    def __repr__(self):
        return f"{type(self).__name__}()"


def glorot_uniform(rng, shape, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def he_uniform(rng, shape, fan_in):
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)
