"""Activation layers. After a Dense or Conv2D layer the graph fuses them into its GEMM epilogue."""

from .. import ops
from .base import Layer


class Activation(Layer):
    kind = "none"

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


class ReLU(Activation):
    kind = "relu"


class Sigmoid(Activation):
    kind = "sigmoid"


class Tanh(Activation):
    kind = "tanh"


class Softmax(Layer):
    """Softmax over the features of each sample. As the last layer with a cross-entropy loss it is
    fused into the loss (computed from the logits, which is exact and stable)."""

    def output_shape(self, input_shape):
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
