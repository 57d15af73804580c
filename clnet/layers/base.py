"""Layer: shape inference, parameters and the launches of its forward and backward passes."""

import numpy as np

from ..errors import ShapeError


class Layer:
    """Base of all layers. Shapes passed around exclude the batch dimension.

    Layers never allocate device memory or read results back: `forward` and `backward` record
    launches into a plan over the values the graph hands them, and return the values they create.
    """

    #: True for layers whose GEMM epilogue can apply a following activation (Dense).
    fuses_activation = False

    def param_shapes(self):
        """{name: shape} of the trainable parameters, in state_dict order."""
        return {}

    def init_params(self, rng, followed_by=None):
        """{name: float32 array} initial values; `followed_by` is the next layer (chooses the init)."""
        return {}

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, plan, x, params, act="none"):
        raise NotImplementedError

    def backward(self, plan, x, y, dy, params, grads, need_dx, act="none"):
        """Record the gradients: fill `grads` (same keys as params) and return dx (None if not need_dx)."""
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
