"""Launchers for batch normalisation (kernels_cl/norm.cl) over tensors seen as (N, C, S).

The GPU family reduces each channel in slices of BN_SLICE values, a work-group each, and applies the
result in work-groups over a block of channels and a chunk of its values, which combine the
channels' slices themselves: two launches a pass (a third counts the batch where momentum is None).
The CPU family walks whole (row, channel) planes of S contiguous values, S a compile-time constant:
a slice is a work-item's block of rows of one channel, and the element-wise kernels take a block of
rows and channels each, combining those channels' slices themselves (the kernel file says why): two
launches a pass too.

Pointer arguments that a kernel variant does not use (weight and bias, and their gradients, without
AFFINE) are given another tensor of the call as a placeholder, since every argument must be set.
"""

from math import prod

from .elementwise import activation

FILE = "norm.cl"
BN_LOCAL = 256   # work-items of a reducing work-group (a power of two); on an H100, 256 took resnet20's
                 # reductions at batch 128 from 0.41 to 0.35 ms a step (128 before)
BN_SLICE = 4096  # values of a channel per reducing work-group (a multiple of BN_LOCAL)
LOCAL = 64       # work-group of the element-wise kernels (evaluation, bn_fold)
# The GPU family's training element-wise kernels (bn_normalize, bn_input_gradient): work-groups of
# APPLY_LOCAL work-items, each over a block of channels (about APPLY_LOCAL values a row) and a chunk
# of its values: enough chunks for APPLY_GROUPS work-groups per compute unit, each work-item taking
# at most APPLY_VALUES values, so that a work-group combines its channels' slices for many values;
# but at least as many values as a channel has slices, since one work-item combines them in
# sequence: a channel of m values then has at most m / (APPLY_LOCAL * slices) chunks, and its
# combining work grows as m rather than m^2 (a 224 x 224 plane at batch 64: 784 slices).
APPLY_LOCAL = 256
APPLY_GROUPS = 8
APPLY_VALUES = 16
STAGE = 1024     # slice pairs such a work-group stages in local memory at a time; at least APPLY_LOCAL
# The CPU family: about BLOCK values per work-item, in whole rows. A slice has at most BLOCK / LANES
# rows, so that each of the LANES lanes of its sums adds at most max(BLOCK, S) / LANES values in
# sequence (a plane's last S % LANES values take a lane each, one per row).
BLOCK = 4096
LANES = 16       # lanes.h's LANES


def _dims(x, channels):
    n, c, s = x.shape[0], x.shape[1], prod(x.shape[2:])
    if c != channels:
        raise ValueError(f"batch norm over {channels} channels given a tensor of shape {x.shape}")
    return n, c, s


def _cpu(plan):
    return plan.device.family != "tiled"


def slice_rows(s):
    """Rows of planes of s values in a slice of the CPU family's reductions in lanes (lanes.h):
    about BLOCK values, and at most BLOCK / LANES rows (see BLOCK)."""
    return max(1, min(BLOCK // s, BLOCK // LANES))


def _reduce(plan, name, n, c, s, tensors, what, **defines):
    """Launch the reduction `name` (bn_slice_<name> on the GPU family, bn_rows_<name> on the CPU
    family) of each channel's values into partial results per slice, a new value (slices, c, 2).
    Returns the launch, that value, the slices and the values per slice (the combining kernels'
    BN_SLICE)."""
    if _cpu(plan):
        rows = slice_rows(s)
        slices = -(-n // rows)
        partial = plan.value((slices, c, 2), what)
        k = plan.kernel(FILE, f"bn_rows_{name}", BN_S=s, BN_ROWS=rows, **defines)
        return plan.launch(k, (slices, c), (1, 1), n, c, *tensors, partial), partial, slices, rows * s
    slices = -(-n * s // BN_SLICE)
    partial = plan.value((slices, c, 2), what)
    k = plan.kernel(FILE, f"bn_slice_{name}", BN_LOCAL=BN_LOCAL, BN_SLICE=BN_SLICE, BN_S=s, **defines)
    return plan.launch(k, (slices * BN_LOCAL, c), (BN_LOCAL, 1), n, c, *tensors, partial), partial, slices, \
        BN_SLICE


def _apply_grid(plan, n, c, s, slices):
    """The GPU family's training element-wise kernels: (block, chunk, grid): channels per block,
    values per chunk (a multiple of APPLY_LOCAL) and the grid of (chunks, blocks) work-groups, for
    channels reduced in `slices` slices."""
    block = min(c, max(1, APPLY_LOCAL // s))
    wanted = APPLY_GROUPS * plan.device.info.compute_units * APPLY_LOCAL
    chunk = APPLY_LOCAL * max(slices, min(APPLY_VALUES, max(1, -(-n * c * s // wanted))))
    return block, chunk, (-(-n * block * s // chunk) * APPLY_LOCAL, -(-c // block))


def _apply_defines(values, s, block):
    """The GPU family's applying kernels' -D options: the reductions' slice, the plane and the block."""
    return {"BN_SLICE": values, "BN_APPLY_LOCAL": APPLY_LOCAL, "BN_STAGE": STAGE, "BN_S": s, "BN_BLOCK": block}


def _blocks(n, c, s):
    """The CPU family's element-wise kernels: their -D options and grid, about BLOCK values per
    work-item in a block of rows and channels (one channel where a plane fills the lanes)."""
    channels = 1 if s >= LANES else min(c, max(1, BLOCK // s))
    rows = max(1, BLOCK // (channels * s))
    return {"BN_S": s, "BN_ROWS": rows, "BN_CHANNELS": channels}, (-(-n // rows), -(-c // channels))


def batchnorm_forward_train(plan, x, y, weight, bias, running_mean, running_var, num_batches_tracked,
                            save_mean, save_invstd, eps, momentum, act=None, residual=None):
    """y = batch-normalised x (statistics of its first n_valid rows: the plan's dynamic "n_valid",
    all rows until it is set), plus `residual` (a tensor of x's shape) where given, then the
    activation `act` (its kernel options, None for none);
    save_mean / save_invstd get the statistics for backward; the running statistics and the batch
    count are updated (momentum None: cumulative average). weight and bias may be None
    (affine=False). Each channel is reduced in slices (kernels_cl/norm.cl), combined in order by
    the normalising work-groups (GPU family) or work-items (CPU family)."""
    n, c, s = _dims(x, running_mean.shape[0])
    affine, cumulative = weight is not None, momentum is None
    reduce, partial, slices, values = _reduce(plan, "statistics", n, c, s, (x,), "batch norm slice statistics")
    w, b = (weight, bias) if affine else (x, x)
    eps, momentum = float(eps), 0.0 if cumulative else float(momentum)
    options = {"AFFINE": affine, "CUMULATIVE": cumulative, "RESIDUAL": residual is not None, **(act or activation())}
    r = residual if residual is not None else x
    if _cpu(plan):
        defines, grid = _blocks(n, c, s)
        k = plan.kernel(FILE, "bn_rows_normalize", **defines, BN_SLICE=values, **options)
        normalize = plan.launch(k, grid, (1, 1), n, n, c, slices, eps, momentum, x, y, r, w, b, partial, running_mean,
                                running_var, num_batches_tracked, save_mean, save_invstd)
    else:
        block, chunk, grid = _apply_grid(plan, n, c, s, slices)
        k = plan.kernel(FILE, "bn_normalize", **_apply_defines(values, s, block), **options)
        normalize = plan.launch(k, grid, (APPLY_LOCAL, 1), n, n, c, chunk, slices, eps, momentum, x, y, r,
                                w, b, partial, running_mean, running_var, num_batches_tracked, save_mean, save_invstd)
    for launch in (reduce, normalize):
        plan.bind_dynamic("n_valid", launch, "n_valid")
    if cumulative:  # after every channel has read the count
        plan.launch(plan.kernel(FILE, "bn_count_batch"), (1,), (1,), num_batches_tracked)


def batchnorm_forward_eval(plan, x, y, weight, bias, running_mean, running_var, eps, act=None, residual=None):
    """y = act((x - running_mean) / sqrt(running_var + eps) * weight + bias (+ residual)), per channel."""
    n, c, s = _dims(x, running_mean.shape[0])
    affine = weight is not None
    w, b = (weight, bias) if affine else (x, x)
    options = {"AFFINE": affine, "RESIDUAL": residual is not None, **(act or activation())}
    r = residual if residual is not None else x
    if _cpu(plan):
        defines, grid = _blocks(n, c, s)
        k = plan.kernel(FILE, "bn_rows_forward_eval", **defines, **options)
        return plan.launch(k, grid, (1, 1), n, c, float(eps), x, y, r, w, b, running_mean, running_var)
    k = plan.kernel(FILE, "bn_forward_eval", **options)
    return plan.launch(k, (x.size,), (LOCAL,), x.size, c, s, float(eps), x, y, r, w, b, running_mean, running_var)


def batchnorm_fold(plan, weight, bias, w, b, running_mean, running_var, eps, folded_weight, folded_bias):
    """folded_weight, folded_bias: those of a Dense or Conv2D layer (weight (out, ...), bias (out,)
    or None) with the evaluation BatchNorm after it (w, b: its weight and bias, or None) folded in."""
    rows, affine = weight.shape[0], w is not None
    k = plan.kernel(FILE, "bn_fold", AFFINE=affine, HAS_BIAS=bias is not None)
    return plan.launch(k, (weight.size,), (LOCAL,), rows, weight.size // rows, float(eps), weight,
                       bias if bias is not None else weight, w if affine else weight, b if affine else weight,
                       running_mean, running_var, folded_weight, folded_bias)


def batchnorm_backward(plan, x, y, dy, dx, weight, dweight, dbias, save_mean, save_invstd, act=None):
    """From the training forward's statistics and its output y: dweight, dbias (when weight is not
    None) and dx (when not None; zero on the rows from the plan's dynamic "n_valid" on), dy being
    the gradient of act's output when an activation `act` was fused (y is read only then, and not
    kept alive otherwise). Each channel's sums are reduced in slices, combined in order by the input
    gradient's work-groups or work-items where there is dx, else by a work-item a channel."""
    n, c, s = _dims(x, save_mean.shape[0])
    affine, need_dx = weight is not None, dx is not None
    if not (affine or need_dx):
        return
    y = y if act else dy
    act = act or activation()
    reduce, partial, slices, values = _reduce(plan, "gradient_sums", n, c, s, (x, y, dy, save_mean),
                                              "batch norm slice gradient sums", **act)
    w = weight if affine else x
    dw, db = (dweight, dbias) if affine else (dx, dx)
    if not need_dx:  # the parameters' gradients alone: a work-item a channel
        k = plan.kernel(FILE, "bn_combine_gradient_sums", BN_SLICE=values, AFFINE=affine)
        combine = plan.launch(k, (c,), None, n, c, s, slices, partial, save_invstd, dw, db)
    elif _cpu(plan):  # the slices combined by the input gradient's work-items (GPU: work-groups)
        defines, grid = _blocks(n, c, s)
        k = plan.kernel(FILE, "bn_rows_input_gradient", **defines, BN_SLICE=values, AFFINE=affine, **act)
        combine = plan.launch(k, grid, (1, 1), n, n, c, slices, x, y, dy, dx, w, save_mean, save_invstd, partial,
                              dw, db)
    else:
        block, chunk, grid = _apply_grid(plan, n, c, s, slices)
        k = plan.kernel(FILE, "bn_input_gradient", **_apply_defines(values, s, block), AFFINE=affine, **act)
        combine = plan.launch(k, grid, (APPLY_LOCAL, 1), n, n, c, chunk, slices, x, y, dy, dx, w,
                              save_mean, save_invstd, partial, dw, db)
    for launch in (reduce, combine):
        plan.bind_dynamic("n_valid", launch, "n_valid")
