"""Dropout (torch.nn.Dropout): in training each element is zeroed with probability p and the rest
scaled by 1 / (1 - p); in evaluation the layer is the identity.

The mask is drawn in the kernel from a counter-based generator keyed by the layer's seed and
counting the element and the optimizer step: seeded, different at every step, and never stored, as
the backward pass draws the same mask again.
"""

from ..ops import dropout as dropout_ops
from ..ops.random import step_arg
from .base import Layer


class Dropout(Layer):
    def __init__(self, p=0.5):
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must satisfy 0 <= p < 1, got {p}")
        self.p = p

    def config(self):
        return {"p": self.p}

    def _apply(self, ctx, src, what):
        """src * keep / (1 - p) with the mask of the current step, or src itself (as a view) when the
        layer is inactive: in evaluation or with p = 0."""
        if not (ctx.training and self.p > 0.0):
            return src.view(src.shape)
        out = ctx.plan.value(src.shape, f"{self!r} {what}")
        launch = dropout_ops.dropout(ctx.plan, src, out, self.p, ctx.seed)
        ctx.plan.bind_dynamic("step", launch, "step", step_arg)
        return out

    def forward(self, ctx, x):
        return self._apply(ctx, x, "output")

    def backward(self, ctx, x, y, dy, need_dx):
        # The same seed and step draw the forward's mask again: dx = dy * keep / (1 - p).
        return self._apply(ctx, dy, "input grad") if need_dx else None

    def __repr__(self):
        return f"Dropout(p={self.p:g})"
