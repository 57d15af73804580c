"""Pooling layers over NCHW images, as torch.nn.MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1)
(GlobalAvgPool2D) and AdaptiveAvgPool2d(output_size) (AdaptiveAvgPool2D).

Output size per dimension: floor((size + 2 padding - kernel) / stride) + 1 (ceil_mode=False).
Padding is -inf for max pooling and zeros, counted in the divisor, for average pooling
(count_include_pad=True). Adaptive pooling chooses its bins from the sizes instead (see
`bin_matrix`). Backward passes are deterministic gathers (kernels_cl/pool.cl).
"""

from __future__ import annotations

import numpy as np

from ..ops import int_pair
from ..ops.pool import (adaptive_avgpool_backward, adaptive_avgpool_forward, avgpool_backward, avgpool_forward,
                        global_avgpool_backward, global_avgpool_forward, maxpool_backward, maxpool_forward,
                        output_hw)
from .base import IntOrPair, Layer


def _pair(cls, name, value, minimum):
    """(h, w) from an int or a pair of ints, each >= minimum; a ValueError naming the argument otherwise."""
    items = int_pair(value, f"{cls} {name}")
    if min(items) < minimum:
        raise ValueError(f"{cls} {name} must be >= {minimum}, got {value!r}")
    return items


def _require_image(layer, input_shape):
    if len(input_shape) != 3:
        hint = ("pooling takes images; put it before Flatten" if len(input_shape) == 1
                else "pooling takes NCHW images")
        raise layer.shape_error("(channels, height, width)", input_shape, hint)


def window_index(h: int, w: int, kernel_size: IntOrPair, stride: IntOrPair, padding: IntOrPair) -> np.ndarray:
    """Index of every window element in a plane flattened to h*w values plus one padding value at
    index h*w: shape (OH, OW, KH*KW), window elements in row-major order (for the references)."""
    (kh, kw), (sh, sw), (ph, pw) = int_pair(kernel_size), int_pair(stride), int_pair(padding)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = (np.arange(oh) * sh - ph)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = (np.arange(ow) * sw - pw)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return np.where(inside, rows * w + cols, h * w).reshape(oh, ow, kh * kw)


def window_values(x: np.ndarray, index: np.ndarray, pad_value: float) -> np.ndarray:
    """The values of x (N, C, H, W) at `index` (from `window_index`), with pad_value on the padding:
    shape (N, C, OH, OW, KH*KW)."""
    n, c, h, w = x.shape
    planes = np.concatenate([x.reshape(n, c, h * w), np.full((n, c, 1), pad_value)], axis=2)
    return planes[:, :, index]


def _show(p):
    """An int when both sides agree, as PyTorch prints them."""
    return str(p[0]) if p[0] == p[1] else str(p)


class _Pool2D(Layer):
    """Shared by MaxPool2D and AvgPool2D: the window, shape inference, flops and repr."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0,
                 name: str | None = None):
        super().__init__(name)
        cls = type(self).__name__
        self.kernel_size = _pair(cls, "kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair(cls, "stride", stride, 1)
        self.padding = _pair(cls, "padding", padding, 0)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if 2 * ph > kh or 2 * pw > kw:
            raise ValueError(f"{cls} padding {_show(self.padding)} is more than half the kernel size "
                             f"{_show(self.kernel_size)}: padding must be at most kernel_size // 2 "
                             "(as in PyTorch), so that every window overlaps the image")

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        _require_image(self, input_shape)
        c, h, w = input_shape
        oh, ow = output_hw(h, w, self.kernel_size, self.stride, self.padding)
        if oh < 1 or ow < 1:
            (kh, kw), (ph, pw) = self.kernel_size, self.padding
            raise self.shape_error(
                f"(channels, height >= {kh - 2 * ph}, width >= {kw - 2 * pw})", input_shape,
                f"the {kh}x{kw} window is larger than the {h}x{w} image padded to {h + 2 * ph}x{w + 2 * pw}")
        return (c, oh, ow)

    def flops(self, input_shape):
        """Comparisons or additions for one sample: output elements x window size."""
        c, oh, ow = self.output_shape(input_shape)
        return c * oh * ow * self.kernel_size[0] * self.kernel_size[1]

    def _onnx_window(self):
        """The ONNX attributes of the window: pads are [top, left, bottom, right]."""
        return dict(kernel_shape=list(self.kernel_size), strides=list(self.stride), pads=list(self.padding) * 2)

    def _window_index(self, x):
        return window_index(*x.shape[2:], self.kernel_size, self.stride, self.padding)

    def _output(self, ctx, x):
        n, c, h, w = x.shape
        return ctx.plan.value((n, *self.output_shape((c, h, w))), f"{self!r} output")

    def __repr__(self):
        text = _show(self.kernel_size)
        if self.stride != self.kernel_size:
            text += f", stride={_show(self.stride)}"
        if self.padding != (0, 0):
            text += f", padding={_show(self.padding)}"
        return f"{type(self).__name__}({text})"


class MaxPool2D(_Pool2D):
    """Max over each window, as torch.nn.MaxPool2d; padding is -inf. Training plans keep the argmax
    of every window (int32, in the plan's arena) for the backward pass, so the input need not stay
    alive until then; ties go to the first maximum in row-major window order, as PyTorch.

    Args:
        kernel_size: the window, an int or an (h, w) pair.
        stride: the window's step, an int or a pair; by default the kernel size.
        padding: added on each side, at most half the kernel size, an int or a pair.

    Shape:
        Input (C, H, W); output (C, OH, OW), OH = (H + 2 padding - kernel) // stride + 1 (likewise OW).

    Example:
        >>> clnet.Sequential([Conv2D(1, 8, 3, padding=1), ReLU(), MaxPool2D(2)])  # (1, 28, 28) -> (8, 14, 14)
    """

    def forward(self, ctx, x):
        y = self._output(ctx, x)
        argmax = ctx.plan.value(y.shape, f"{self!r} argmax", np.int32) if ctx.training else None
        maxpool_forward(ctx.plan, x, y, self.kernel_size, self.stride, self.padding, argmax)
        ctx.saved["argmax"] = argmax  # for backward, which gets the same context
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        argmax = ctx.saved.get("argmax")
        if argmax is None:
            raise RuntimeError(f"{self!r}.backward needs the argmax that a training forward pass "
                               "(ctx.training) keeps in the same context")
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        maxpool_backward(ctx.plan, argmax, dy, dx, self.kernel_size, self.stride, self.padding)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add("MaxPool", name, **self._onnx_window())

    def reference_with_argmax(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y, argmax) in float64 as torch.nn.functional.max_pool2d(..., return_indices=True): the
        first maximum of a window in row-major order; argmax is its flat index h*W+w in the plane."""
        x = np.asarray(x, np.float64)
        index = self._window_index(x)
        values = window_values(x, index, -np.inf)
        choice = np.argmax(values, axis=-1)[..., None]
        y = np.take_along_axis(values, choice, -1)[..., 0]
        argmax = np.take_along_axis(np.broadcast_to(index, values.shape), choice, -1)[..., 0]
        return y, argmax

    def reference(self, params, x, training=False):
        return self.reference_with_argmax(x)[0]


class AvgPool2D(_Pool2D):
    """Mean of each window, as torch.nn.AvgPool2d: zero padding counts in the divisor
    (count_include_pad=True).

    Args:
        kernel_size: the window, an int or an (h, w) pair.
        stride: the window's step, an int or a pair; by default the kernel size.
        padding: zeros added on each side, at most half the kernel size, an int or a pair.

    Shape:
        Input (C, H, W); output (C, OH, OW), OH = (H + 2 padding - kernel) // stride + 1 (likewise OW).

    Example:
        >>> clnet.Sequential([Conv2D(3, 8, 3), Tanh(), AvgPool2D(3, stride=2, padding=1)])
    """

    def forward(self, ctx, x):
        y = self._output(ctx, x)
        avgpool_forward(ctx.plan, x, y, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        avgpool_backward(ctx.plan, dy, dx, self.kernel_size, self.stride, self.padding)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add("AveragePool", name, count_include_pad=1, **self._onnx_window())

    def reference(self, params, x, training=False):
        x = np.asarray(x, np.float64)
        return window_values(x, self._window_index(x), 0.0).mean(axis=-1)


class GlobalAvgPool2D(Layer):
    """Mean of each channel's image, as torch.nn.AdaptiveAvgPool2d(1).

    Shape:
        Input (C, H, W); output (C, 1, 1): a Flatten after it gives (C,).

    Example:
        >>> clnet.Sequential([Conv2D(3, 16, 3), ReLU(), GlobalAvgPool2D(), Flatten(), Dense(16, 10)])
    """

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        _require_image(self, input_shape)
        return (input_shape[0], 1, 1)

    def flops(self, input_shape):
        """Additions for one sample: every input element once."""
        self.output_shape(input_shape)
        c, h, w = input_shape
        return c * h * w

    def forward(self, ctx, x):
        y = ctx.plan.value((x.shape[0], x.shape[1], 1, 1), f"{self!r} output")
        global_avgpool_forward(ctx.plan, x, y)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        global_avgpool_backward(ctx.plan, dy, dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add("GlobalAveragePool", name)

    def reference(self, params, x, training=False):
        return np.asarray(x, np.float64).mean(axis=(2, 3), keepdims=True)


def bin_matrix(size: int, out: int) -> np.ndarray:
    """The (out, size) float64 matrix that averages adaptive pooling's bins along one dimension: row o
    holds 1 / (bin size) over input positions floor(o size / out) .. ceil((o + 1) size / out) - 1,
    PyTorch's rule. Bins overlap where out does not divide size, and repeat where out > size."""
    matrix = np.zeros((out, size))
    for o in range(out):
        start, end = o * size // out, -(-(o + 1) * size // out)
        matrix[o, start:end] = 1.0 / (end - start)
    return matrix


class AdaptiveAvgPool2D(Layer):
    """Mean over bins that divide the image into an `output_size` grid, whatever its size, as
    torch.nn.AdaptiveAvgPool2d: output row o averages input rows floor(o H / OH) to
    ceil((o + 1) H / OH) - 1 (likewise columns). Where OH divides H this is AvgPool2D(H // OH); bins
    overlap where it does not; where OH > H rows repeat (a 1x1 image becomes OH x OW copies), so a
    classifier sized for a 7x7 grid takes images of any size, as torchvision's VGG does.

    Args:
        output_size: the output's (OH, OW), an int or a pair, each >= 1.

    Shape:
        Input (C, H, W); output (C, OH, OW).

    Example:
        >>> clnet.Sequential([Conv2D(3, 8, 3), ReLU(), AdaptiveAvgPool2D(7), Flatten(), Dense(8 * 7 * 7, 10)])
    """

    def __init__(self, output_size: IntOrPair, name: str | None = None):
        super().__init__(name)
        self.output_size = _pair(type(self).__name__, "output_size", output_size, 1)

    def config(self):
        return {"output_size": list(self.output_size)}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        _require_image(self, input_shape)
        return (input_shape[0], *self.output_size)

    def _bins(self, h, w):
        """The averaging matrices of rows (OH, H) and columns (OW, W)."""
        return bin_matrix(h, self.output_size[0]), bin_matrix(w, self.output_size[1])

    def flops(self, input_shape):
        """Additions for one sample: the size of every bin."""
        c, h, w = input_shape
        self.output_shape(input_shape)
        rows, cols = self._bins(h, w)
        return c * np.count_nonzero(rows) * np.count_nonzero(cols)

    def forward(self, ctx, x):
        y = ctx.plan.value((x.shape[0], x.shape[1], *self.output_size), f"{self!r} output")
        adaptive_avgpool_forward(ctx.plan, x, y)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        adaptive_avgpool_backward(ctx.plan, dy, dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        """GlobalAveragePool for a 1x1 output, AveragePool where the output divides the image, and
        otherwise (overlapping or repeated bins) the product rows @ x @ columns^T: two MatMuls with
        the averaging matrices, which ONNX broadcasts over batch and channels."""
        (h, w), (oh, ow) = builder.input_shapes[0][1:], self.output_size
        if (oh, ow) == (1, 1):
            builder.add("GlobalAveragePool", name)
        elif h % oh == 0 and w % ow == 0:
            window = [h // oh, w // ow]
            builder.add("AveragePool", name, kernel_shape=window, strides=window)
        else:
            rows, cols = (m.astype(np.float32) for m in self._bins(h, w))
            builder.add("MatMul", f"{name}.columns", [builder.constant(f"{prefix}.columns", cols.T)])
            builder.node("MatMul", name, [builder.constant(f"{prefix}.rows", rows), builder.value])

    def reference(self, params, x, training=False):
        x = np.asarray(x, np.float64)
        rows, cols = self._bins(*x.shape[2:])
        return rows @ x @ cols.T

    def __repr__(self):
        return f"AdaptiveAvgPool2D({_show(self.output_size)})"
