"""Flatten: (C, H, W) -> (C*H*W,) in NCHW order, as torch.nn.Flatten. A view: no kernel runs."""

from __future__ import annotations

from math import prod

import numpy as np

from .base import Layer


class Flatten(Layer):
    """Flattens each sample in NCHW order, as torch.nn.Flatten.

    Shape:
        Any input shape (d1, d2, ...); output (d1 * d2 * ...,).

    Example:
        >>> clnet.Sequential([Conv2D(1, 4, 3), ReLU(), Flatten(), Dense(4 * 26 * 26, 10)])
    """

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int]:
        return (prod(input_shape),)

    def forward(self, ctx, x):
        return x.view((x.shape[0], prod(x.shape[1:])))

    def backward(self, ctx, x, y, dy, need_dx):
        return dy.view(x.shape) if need_dx else None

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add("Flatten", name, axis=1)

    def reference(self, params, x, training=False):
        x = np.asarray(x, np.float64)
        return x.reshape(len(x), -1)
