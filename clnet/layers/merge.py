"""Merge layers, which read two or more values of a graph: Add (their element-wise sum, as a
ResNet's shortcut) and Concatenate (along channels, as torch.cat(dim=1)).

Add's forward is a chain of `ops.elementwise.add` in input order (deterministic), the last applying
a fused activation; its backward hands every input the output's gradient itself (which the compiler
takes back through a fused activation first). Concatenate copies each input's block of every sample
into its range of the output, and back out of the output's gradient (`ops.elementwise.copy_rows`).
"""

from __future__ import annotations

from itertools import accumulate
from math import prod

import numpy as np

from ..errors import ShapeError
from ..ops.elementwise import add, copy_rows
from .base import Layer


class _Merge(Layer):
    """Shared by the merge layers: several inputs, and shape errors that show them all."""

    arity = None  # two or more inputs

    def shape_error(self, expected, got, hint=""):
        """As Layer's, with every input's shape; the graph prefixes the layer's position and name."""
        shapes = ", ".join(str(tuple(shape)) for shape in got)
        return ShapeError(f"expects {expected}, got inputs {shapes} per sample" + (f": {hint}" if hint else ""))

    def _require_several(self, input_shapes):
        if len(input_shapes) < 2:
            raise self.shape_error("two or more inputs", input_shapes, f"{type(self).__name__} merges several values")


class Add(_Merge):
    """The element-wise sum of two or more inputs of one shape, as `x + shortcut` in a ResNet.

    Takes no arguments. Its backward pass gives every input the gradient of the output as it is.
    An activation that alone reads the sum runs as the sum is written (one pass: act(a + b + ...)).

    Shape:
        Inputs of any one shape (d1, d2, ...), all equal; the output has that shape.

    Example:
        >>> Add().output_shape((64, 8, 8), (64, 8, 8))  # a residual block's output and its shortcut
        (64, 8, 8)
    """

    fuses_activation = True
    applies_activation_grad = False  # backward moves dy unchanged: the compiler applies act'(y)

    def output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        self._require_several(input_shapes)
        first = tuple(input_shapes[0])
        if any(tuple(shape) != first for shape in input_shapes[1:]):
            raise self.shape_error("inputs of one shape", input_shapes,
                                   "Add sums element by element (a 1x1 Conv2D can give a shortcut the channels "
                                   "and size of the other input)")
        return first

    def flops(self, *input_shapes):
        """Additions for one sample: one per element for every input after the first."""
        return (len(input_shapes) - 1) * prod(self.output_shape(*input_shapes))

    def forward(self, ctx, *xs):
        y = ctx.plan.value((xs[0].shape[0], *self.output_shape(*(x.shape[1:] for x in xs))), f"{self!r} output")
        for i, x in enumerate(xs[1:], 1):
            add(ctx.plan, xs[0] if i == 1 else y, x, y, act=ctx.act if i == len(xs) - 1 else None)
        return y

    def backward(self, ctx, xs, y, dy, need_dx):
        """dy, the gradient of the sum (before a fused activation), for every input that needs its
        gradient: no copy, as values are never written after they are made."""
        return tuple(dy if need else None for need in need_dx)

    def to_onnx(self, builder, name, prefix, arrays):
        builder.node("Sum", name, builder.inputs)

    def reference(self, params, *xs, training=False):
        return np.sum([np.asarray(x, np.float64) for x in xs], axis=0)


class Concatenate(_Merge):
    """Two or more inputs joined along the channels, in input order, as torch.cat(dim=1): images of
    one height and width and any channel counts, or feature vectors of any lengths.

    Takes no arguments.

    Shape:
        Inputs (C_i, H, W), equal in H and W; output (C_1 + C_2 + ..., H, W). Or inputs (F_i,);
        output (F_1 + F_2 + ...,).

    Example:
        >>> Concatenate().output_shape((3, 7, 5), (5, 7, 5))  # two branches of an Inception block
        (8, 7, 5)
    """

    def output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        self._require_several(input_shapes)
        first = tuple(input_shapes[0])
        if any(len(shape) != len(first) for shape in input_shapes) or len(first) not in (1, 3):
            raise self.shape_error("inputs (C_i, H, W) or (F_i,), all of one rank", input_shapes,
                                   "Concatenate joins images along their channels, or feature vectors")
        if any(tuple(shape[1:]) != first[1:] for shape in input_shapes):
            raise self.shape_error("inputs (C_i, H, W) of one height and width", input_shapes,
                                   "Concatenate joins channels: pool or pad the inputs to one size first")
        return (sum(shape[0] for shape in input_shapes), *first[1:])

    def flops(self, *input_shapes):
        """None: a copy, no arithmetic."""
        self.output_shape(*input_shapes)
        return 0

    def _blocks(self, xs):
        """(value, its first element within an output sample, its elements per sample) of each input."""
        widths = [x.size // x.shape[0] for x in xs]
        return zip(xs, accumulate(widths, initial=0), widths)

    def forward(self, ctx, *xs):
        n = xs[0].shape[0]
        y = ctx.plan.value((n, *self.output_shape(*(x.shape[1:] for x in xs))), f"{self!r} output")
        for x, first, width in self._blocks(xs):
            copy_rows(ctx.plan, x, y.view((y.size - first,), first), n, width, width, y.size // n)
        return y

    def backward(self, ctx, xs, y, dy, need_dx):
        """Each input's range of dy, copied out for those that need it."""
        n = dy.shape[0]
        grads = []
        for i, ((x, first, width), need) in enumerate(zip(self._blocks(xs), need_dx)):
            if not need:
                grads.append(None)
                continue
            dx = ctx.plan.value(x.shape, f"{self!r} input {i} grad")
            copy_rows(ctx.plan, dy.view((dy.size - first,), first), dx, n, width, dy.size // n, width)
            grads.append(dx)
        return tuple(grads)

    def to_onnx(self, builder, name, prefix, arrays):
        builder.node("Concat", name, builder.inputs, axis=1)

    def reference(self, params, *xs, training=False):
        return np.concatenate([np.asarray(x, np.float64) for x in xs], axis=1)
