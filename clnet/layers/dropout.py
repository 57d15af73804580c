"""Dropout (torch.nn.Dropout): in training each element is zeroed with probability p and the rest
scaled by 1 / (1 - p); in evaluation the layer is the identity.

The mask is drawn in the kernel from a counter-based generator keyed by the layer's seed and
counting the element and the optimizer step: seeded, different at every step, and never stored, as
the backward pass draws the same mask again.
"""

from __future__ import annotations

import numpy as np

from ..ops import dropout as dropout_ops
from ..ops.random import step_arg
from .base import Layer


class Dropout(Layer):
    """Zeroes each element with probability p in training and scales the rest by 1 / (1 - p); the
    identity in evaluation.

    Args:
        p: the probability of zeroing an element, 0 <= p < 1.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(784, 256), ReLU(), Dropout(0.3), Dense(256, 10)])
    """

    def __init__(self, p: float = 0.5, name: str | None = None):
        super().__init__(name)
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
        per_row = src.size // src.shape[0]  # a replica's shard starts at row first_row of the batch
        ctx.plan.bind_dynamic("first_row", launch, "offset", lambda row: np.uint32(row * per_row))
        return out

    def forward(self, ctx, x):
        return self._apply(ctx, x, "output")

    def backward(self, ctx, x, y, dy, need_dx):
        # The same seed and step draw the forward's mask again: dx = dy * keep / (1 - p).
        return self._apply(ctx, dy, "input grad") if need_dx else None

    def to_onnx(self, builder, name, prefix, arrays):
        """Nothing: exported models run in inference, where dropout is the identity."""

    def reference(self, params, x, training=False, keep=None):
        """`keep`: in training with p > 0, the boolean mask (x's shape) of the elements kept, as the
        device's generator draws them (the tests model it)."""
        x = np.asarray(x, np.float64)
        return x * keep / (1 - self.p) if training and self.p > 0 else x

    def __repr__(self):
        return f"Dropout(p={self.p:g})"
