"""Launchers for activations, the fused bias/activation backward, row-wise softmax, sums (an
activation fused, forward and backward) and strided row copies."""

import numpy as np

from ..errors import ShapeError

FILE = "elementwise.cl"
SUM_SLICES_FILE = "sum_slices.cl"  # split-K GEMMs' slices and the bias gradients' partial sums
LOCAL = 64
ROWS_PER_SLICE = 32  # rows of a bias gradient summed by one work-item at least: fewer would make
                     # the partial sums' total (slice_totals) longer than the slices themselves
# sum_slices on the GPU family: work-items a compute unit should have to keep its loads in flight,
# the most lanes an output's slices are shared among, and the work-group (SUM_LOCAL x SUM_LANES)
SUM_ITEMS_PER_UNIT = 1024
SUM_MAX_LANES = 32
SUM_GROUP = 256
# The CPU family's work-group for the element-wise kernels over tensors: PoCL runs a work-group as
# one vectorised loop at a cost per group; with groups of 64, adds of 2M and 512K elements took 15
# and 45 % longer than with 1024 (256 to 4096 measure alike).
CPU_LOCAL = 1024
CPU_COLUMNS = 16  # bias_act_backward's columns per work-item on CPUs (one float16 vector)
# The GPU family's element-wise kernels over tensors: elements a work-item loads together, and the
# work-group
GPU_ELEMENTS = 4
GPU_LOCAL = 256
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


def _over_elements(plan, name, n, *tensors, act):
    """Launch the element-wise kernel `name` over the n elements of `tensors` (activations, sums):
    on the GPU family GPU_ELEMENTS elements a work-item in work-groups of GPU_LOCAL, on the CPU
    family one a work-item (elementwise.cl says why)."""
    if plan.device.family == "tiled":
        k = plan.kernel(FILE, name, **act, ELEMENTS=GPU_ELEMENTS)
        local = min(GPU_LOCAL, plan.device.max_work_group_size)
        return plan.launch(k, (-(-n // GPU_ELEMENTS),), (local,), n, *tensors)
    k = plan.kernel(FILE, name, **act)
    return plan.launch(k, (n,), (min(CPU_LOCAL, plan.device.max_work_group_size),), n, *tensors)


def activation_forward(plan, act, x, y):
    return _over_elements(plan, "activation_forward", x.size, x, y, act=act)


def activation_backward(plan, act, y, dy, dx):
    """dx = dy * act'(x), the derivative written with the output y."""
    return _over_elements(plan, "activation_backward", y.size, y, dy, dx, act=act)


def activation_backward_from_input(plan, act, x, dy, dx):
    """dx = dy * act'(x), for the activations whose derivative the output does not determine (SiLU)."""
    return _over_elements(plan, "activation_backward_from_input", x.size, x, dy, dx, act=act)


def bias_act_backward(plan, act, dy, y, dpre, db):
    """dpre = dy * act'(y) (not written without an activation, act None), db = column sums of dpre
    (skipped when db is None). On the GPU family the rows are cut into slices, as many as give
    every compute unit about four work-groups, each at least ROWS_PER_SLICE rows, whose sums
    slice_totals adds; on the CPU family a work-item sums CPU_COLUMNS columns over all the rows."""
    rows, cols = dy.shape
    cpu = plan.device.family != "tiled"
    k = plan.kernel(FILE, "bias_act_backward", **(act or activation()), HAS_BIAS=db is not None,
                    COLUMNS=CPU_COLUMNS if cpu else None)
    if cpu:  # a work-item per CPU_COLUMNS columns, all the rows
        return plan.launch(k, (-(-cols // CPU_COLUMNS),), None, rows, cols, dy, y, dpre,
                           db if db is not None else dpre)
    slices = slice_count(plan, -(-cols // LOCAL), rows, ROWS_PER_SLICE)
    sums = db if db is None or slices == 1 else plan.value((slices, cols), "bias gradient slices")
    launch = plan.launch(k, (cols, slices), (LOCAL, 1), rows, cols, dy, y, dpre,
                         sums if sums is not None else dpre)
    return launch if sums is db else slice_totals(plan, sums, slices, cols, db)


def slice_count(plan, groups, length, shortest, per_unit=4):
    """Slices to cut a reduction of `length` values (or rows) into, beside `groups` work-groups: as
    many as give every compute unit `per_unit` work-groups, each slice at least `shortest` long, one
    at least; slice_totals adds their partial sums."""
    return max(1, min(-(-per_unit * plan.device.info.compute_units // groups), length // shortest))


def slice_totals(plan, sums, slices, n, out):
    """out[i] = the sum over s of sums[s * n + i] for i < n, in a fixed order (sum_slices)."""
    return sum_slices(plan, sums, slices, 1, n, out, n)


def sum_slices(plan, sums, slices, rows, cols, out, ldc, bias=None, epilogue=None):
    """out[r, c] = act(the sum over s of sums[s, r, c] + bias) for the (rows, cols) outputs of a
    (slices, rows, cols) value, stored with a GEMM's epilogue (its -D options: HAS_BIAS, ACT,
    C_IMAGE_COLS; row-major with leading dimension ldc without them): the split-K products' slices
    and the bias gradients' (sum_slices.cl). On the GPU family, outputs too few to give each compute
    unit SUM_ITEMS_PER_UNIT work-items share their slices among lanes (SUM_LANES, a power of two),
    and outputs four times as many as that are taken four a work-item; the CPU family adds an
    output's slices in one work-item."""
    count, lanes, vector, local = rows * cols, 1, 1, LOCAL
    if plan.device.family == "tiled":
        wanted = SUM_ITEMS_PER_UNIT * plan.device.info.compute_units
        vector = 4 if cols % 4 == 0 and count >= 4 * wanted else 1
        group = min(SUM_GROUP, plan.device.max_work_group_size)
        lanes = 1 << (min(SUM_MAX_LANES, group, slices, max(1, wanted // count)).bit_length() - 1)
        local = group // lanes
    k = plan.kernel(SUM_SLICES_FILE, "sum_slices", **(epilogue or {}), SUM_LANES=lanes, SUM_LOCAL=local,
                    SUM_VECTOR=vector)
    return plan.launch(k, (-(-count // vector), lanes), (local, lanes), rows, cols, slices, sums, out, ldc,
                       bias if bias is not None else out)


def softmax_forward(plan, x, y):
    rows, cols = x.shape
    return plan.launch(plan.kernel(FILE, "softmax_forward"), (rows,), (LOCAL,), rows, cols, x, y)


def softmax_backward(plan, y, dy, dx):
    rows, cols = y.shape
    return plan.launch(plan.kernel(FILE, "softmax_backward"), (rows,), (LOCAL,), rows, cols, y, dy, dx)


def add(plan, a, b, out, act=None):
    """out = act(a + b) over every element (tensors of one size, any shapes); `act` the
    activation's options (`activation(...)`), None for none."""
    _check_sizes("add", a, b, out)
    return _over_elements(plan, "add_tensors", out.size, a, b, out, act=act or activation())


def add_act_backward(plan, act, a, b, y, out):
    """out = (a + b) * act'(x), the derivative written with the activation's output y: two
    gradients of y added and taken back through the activation in one pass."""
    _check_sizes("add_act_backward", a, b, out, y)
    return _over_elements(plan, "add_act_backward", out.size, a, b, y, out, act=act)


def _check_sizes(what, *tensors):
    if len({t.size for t in tensors}) != 1:
        raise ValueError(f"{what} of {', '.join(str(tuple(t.shape)) for t in tensors)}: sizes differ")


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
