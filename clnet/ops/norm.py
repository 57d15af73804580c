"""Launchers for batch normalisation (kernels_cl/norm.cl) over tensors seen as (N, C, S).

Pointer arguments that a kernel variant does not read (weight and bias without AFFINE, dx without
NEED_DX) are given another tensor of the call as a placeholder, since every argument must be set.
"""

from math import prod

from .elementwise import activation

FILE = "norm.cl"
BN_LOCAL = 128  # work-items per channel in the reducing kernels (a power of two)
LOCAL = 64      # work-group of the element-wise evaluation kernel


def _dims(x, channels):
    n, c, s = x.shape[0], x.shape[1], prod(x.shape[2:])
    if c != channels:
        raise ValueError(f"batch norm over {channels} channels given a tensor of shape {x.shape}")
    return n, c, s


def batchnorm_forward_train(plan, x, y, weight, bias, running_mean, running_var, num_batches_tracked,
                            save_mean, save_invstd, eps, momentum, n_valid=None, act=None):
    """y = batch-normalised x (statistics of its first n_valid rows, all of them by default), then
    the activation `act` (its kernel options, None for none);
    save_mean / save_invstd get the statistics for backward; the running statistics and the batch
    count are updated (momentum None: cumulative average). weight and bias may be None (affine=False).
    Returns the launch, whose argument "n_valid" is n_valid."""
    n, c, s = _dims(x, running_mean.shape[0])
    affine = weight is not None
    cumulative = momentum is None
    k = plan.kernel(FILE, "bn_forward_train", BN_LOCAL=BN_LOCAL, AFFINE=affine, CUMULATIVE=cumulative,
                    **(act or activation()))
    launch = plan.launch(k, (c * BN_LOCAL,), (BN_LOCAL,), n if n_valid is None else n_valid, n, c, s,
                         float(eps), 0.0 if cumulative else float(momentum), x, y,
                         weight if affine else x, bias if affine else x, running_mean, running_var,
                         num_batches_tracked, save_mean, save_invstd)
    if cumulative:
        plan.launch(plan.kernel(FILE, "bn_count_batch"), (1,), (1,), num_batches_tracked)
    return launch


def batchnorm_forward_eval(plan, x, y, weight, bias, running_mean, running_var, eps, act=None):
    """y = act((x - running_mean) / sqrt(running_var + eps) * weight + bias), per channel."""
    _, c, s = _dims(x, running_mean.shape[0])
    affine = weight is not None
    k = plan.kernel(FILE, "bn_forward_eval", AFFINE=affine, **(act or activation()))
    return plan.launch(k, (x.size,), (LOCAL,), x.size, c, s, float(eps), x, y,
                       weight if affine else x, bias if affine else x, running_mean, running_var)


def batchnorm_fold(plan, weight, bias, w, b, running_mean, running_var, eps, folded_weight, folded_bias):
    """folded_weight, folded_bias: those of a Dense or Conv2D layer (weight (out, ...), bias (out,)
    or None) with the evaluation BatchNorm after it (w, b: its weight and bias, or None) folded in."""
    rows, affine = weight.shape[0], w is not None
    k = plan.kernel(FILE, "bn_fold", AFFINE=affine, HAS_BIAS=bias is not None)
    return plan.launch(k, (weight.size,), (LOCAL,), rows, weight.size // rows, float(eps), weight,
                       bias if bias is not None else weight, w if affine else weight, b if affine else weight,
                       running_mean, running_var, folded_weight, folded_bias)


def batchnorm_backward(plan, x, y, dy, dx, weight, dweight, dbias, save_mean, save_invstd, n_valid=None, act=None):
    """From the training forward's statistics and its output y: dweight, dbias (when weight is not
    None) and dx (when not None; zero on rows >= n_valid), dy being the gradient of act's output
    when an activation `act` was fused (y is read only then, and not kept alive otherwise). Returns the launch, whose argument
    "n_valid" is n_valid."""
    n, c, s = _dims(x, save_mean.shape[0])
    affine, need_dx = weight is not None, dx is not None
    k = plan.kernel(FILE, "bn_backward", BN_LOCAL=BN_LOCAL, AFFINE=affine, NEED_DX=need_dx, **(act or activation()))
    return plan.launch(k, (c * BN_LOCAL,), (BN_LOCAL,), n if n_valid is None else n_valid, n, c, s,
                       x, y if act else dy, dy, dx if need_dx else dy, weight if affine else x,
                       dweight if affine else save_mean, dbias if affine else save_mean,
                       save_mean, save_invstd)
