"""Activation layers. After a Dense or Conv2D layer the graph fuses them into its GEMM epilogue."""

from __future__ import annotations

import numpy as np

from .. import ops
from .base import Layer


class Activation(Layer):
    """Base of the element-wise activations: `kind` names the kernel's activation, `onnx_op` the
    ONNX operator."""

    kind = "none"
    onnx_op = ""

    def forward(self, ctx, x):
        y = ctx.plan.value(x.shape, f"{self!r} output")
        ops.activation_forward(ctx.plan, self.kind, x, y)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        ops.activation_backward(ctx.plan, self.kind, y, dy, dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add(self.onnx_op, name)


class ReLU(Activation):
    """max(x, 0), element-wise.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(784, 128), ReLU(), Dense(128, 10)])
    """

    kind, onnx_op = "relu", "Relu"

    def reference(self, params, x, training=False):
        return np.maximum(np.asarray(x, np.float64), 0)


class Sigmoid(Activation):
    """1 / (1 + exp(-x)), element-wise.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(20, 1), Sigmoid()])
    """

    kind, onnx_op = "sigmoid", "Sigmoid"

    def reference(self, params, x, training=False):
        return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


class Tanh(Activation):
    """tanh(x), element-wise.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(4, 6), Tanh(), Dense(6, 3)])
    """

    kind, onnx_op = "tanh", "Tanh"

    def reference(self, params, x, training=False):
        return np.tanh(np.asarray(x, np.float64))


class Softmax(Layer):
    """Softmax over the features of each sample. As the last layer with a cross-entropy loss it is
    fused into the loss (computed from the logits, which is exact and stable).

    Shape:
        Input (features,); the output has the same shape and sums to 1.

    Example:
        >>> clnet.Sequential([Flatten(), Dense(784, 10), Softmax()])
    """

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 1:
            raise self.shape_error("(features,)", input_shape, "add a Flatten layer before it")
        return tuple(input_shape)

    def forward(self, ctx, x):
        y = ctx.plan.value(x.shape, f"{self!r} output")
        ops.softmax_forward(ctx.plan, x, y)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        ops.softmax_backward(ctx.plan, y, dy, dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add("Softmax", name, axis=1)

    def reference(self, params, x, training=False):
        z = np.asarray(x, np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
