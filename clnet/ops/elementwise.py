"""Launchers for activations, the fused bias/activation backward, row-wise softmax, sums and strided
row copies."""

import numpy as np

from ..errors import ShapeError

FILE = "elementwise.cl"
LOCAL = 64
CPU_COLUMNS = 16  # bias_act_backward's columns per work-item on CPUs (one float16 vector)
# codes of kernels_cl/common.h
ACTIVATIONS = {"none": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "relu6": 4, "leaky_relu": 5, "silu": 6}


def activation(kind="none", negative_slope=None):
    """The -D options that select an activation in every kernel (common.h): ACT, and for
    "leaky_relu" ACT_SLOPE, the slope as a float32 literal (exactly the float32 of `negative_slope`).
    The launchers below, `gemm` and the convolutions take them as `act`; None means no activation."""
    options = {"ACT": ACTIVATIONS[kind]}
    if kind == "leaky_relu":
        options["ACT_SLOPE"] = f"{np.float32(negative_slope)!s}f"  # the shortest exact spelling
    return options


def activation_forward(plan, act, x, y):
    k = plan.kernel(FILE, "activation_forward", **act)
    return plan.launch(k, (x.size,), (LOCAL,), x.size, x, y)


def activation_backward(plan, act, y, dy, dx):
    """dx = dy * act'(x), the derivative written with the output y."""
    k = plan.kernel(FILE, "activation_backward", **act)
    return plan.launch(k, (y.size,), (LOCAL,), y.size, y, dy, dx)


def activation_backward_from_input(plan, act, x, dy, dx):
    """dx = dy * act'(x), for the activations whose derivative the output does not determine (SiLU)."""
    k = plan.kernel(FILE, "activation_backward_from_input", **act)
    return plan.launch(k, (x.size,), (LOCAL,), x.size, x, dy, dx)


def bias_act_backward(plan, act, dy, y, dpre, db):
    """dpre = dy * act'(y) (not written without an activation, act None), db = column sums of dpre
    (skipped when db is None)."""
    rows, cols = dy.shape
    cpu = plan.device.family != "tiled"
    k = plan.kernel(FILE, "bias_act_backward", **(act or activation()), HAS_BIAS=db is not None,
                    COLUMNS=CPU_COLUMNS if cpu else None)
    grid = -(-cols // CPU_COLUMNS) if cpu else cols
    return plan.launch(k, (grid,), None if cpu else (LOCAL,), rows, cols, dy, y, dpre, db if db is not None else dpre)


def softmax_forward(plan, x, y):
    rows, cols = x.shape
    return plan.launch(plan.kernel(FILE, "softmax_forward"), (rows,), (LOCAL,), rows, cols, x, y)


def softmax_backward(plan, y, dy, dx):
    rows, cols = y.shape
    return plan.launch(plan.kernel(FILE, "softmax_backward"), (rows,), (LOCAL,), rows, cols, y, dy, dx)


def add(plan, a, b, out):
    """out = a + b over every element (tensors of one size, any shapes)."""
    if not a.size == b.size == out.size:
        raise ValueError(f"add of {a.shape} and {b.shape} into {out.shape}")
    return plan.launch(plan.kernel(FILE, "add_tensors"), (out.size,), (LOCAL,), out.size, a, b, out)


def copy_rows(plan, src, dst, rows, cols, src_stride, dst_stride):
    """dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < cols: a block of rows
    copied between strided layouts. `src` and `dst` start at the block's first element (a view at
    an offset selects a block inside a larger tensor)."""
    if min(rows, cols) < 1 or cols > min(src_stride, dst_stride):
        raise ValueError(f"copy_rows of {rows} rows of {cols} with strides {src_stride} and {dst_stride}")
    for what, tensor, stride in (("src", src, src_stride), ("dst", dst, dst_stride)):
        if (rows - 1) * stride + cols > tensor.size:
            raise ValueError(f"copy_rows: {rows} rows of {cols} at stride {stride} do not fit in {what} "
                             f"{tuple(tensor.shape)}")
    if (rows - 1) * max(src_stride, dst_stride) + cols >= 2**31:
        raise ShapeError(f"copy_rows: {rows} rows at strides {src_stride}, {dst_stride} exceed int32 indices: use a "
                         "smaller batch or smaller images")
    return plan.launch(plan.kernel(FILE, "copy_rows"), (cols, rows), (LOCAL, 1), rows, cols, src_stride, dst_stride,
                       src, dst)
