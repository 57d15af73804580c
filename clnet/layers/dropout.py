"""Dropout (torch.nn.Dropout): in training each element is zeroed with probability p and the rest
scaled by 1 / (1 - p); in evaluation the layer is the identity.

The mask is drawn in the kernel from a counter-based generator keyed by the layer's seed and
counting the element and the optimizer step: seeded, different at every step, and never stored, as
the backward pass draws the same mask again.
"""

from ..ops import dropout as dropout_ops
from .base import Layer


class Dropout(Layer):
    def __init__(self, p=0.5):
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must satisfy 0 <= p < 1, got {p}")
        self.p = p

    def _active(self, ctx):
        return ctx.training and self.p > 0.0

    def forward(self, ctx, x):
        if not self._active(ctx):
            return x.view(x.shape)
        y = ctx.plan.value(x.shape, f"{self!r} output")
        launch = dropout_ops.dropout(ctx.plan, x, y, self.p, ctx.seed)
        ctx.plan.bind_dynamic("step", launch, dropout_ops.STEP_ARG, dropout_ops.step_arg)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        if not self._active(ctx):
            return dy.view(dy.shape)
        dx = ctx.plan.value(dy.shape, f"{self!r} input grad")
        launch = dropout_ops.dropout(ctx.plan, dy, dx, self.p, ctx.seed)
        ctx.plan.bind_dynamic("step", launch, dropout_ops.STEP_ARG, dropout_ops.step_arg)
        return dx

    def flops(self, input_shape):
        return 0

    def __repr__(self):
        return f"Dropout(p={self.p:g})"
