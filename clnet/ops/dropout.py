"""Launcher for dropout (kernels_cl/dropout.cl): out = in * keep / (1 - p), keep from Philox4x32-10."""

import numpy as np

from .random import seed_key, step_arg

FILE = "dropout.cl"
LOCAL = 64


def threshold(p):
    """Draws below round(p * 2^32) drop their element: the keep probability is 1 - p within 2^-33."""
    return np.uint32(min(round(float(p) * 2 ** 32), 2 ** 32 - 1))


def dropout(plan, x, y, p, seed, step=0, offset=0):
    """Record y = x * keep / (1 - p) over every element of x (any shape); the same seed and step give
    the same mask, so the backward pass is this launch over (dy, dx). Elements are counted from
    `offset` (a replica's shard draws the whole batch's masks). Returns the launch, whose arguments
    "step" and "offset" are the step and the offset."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must satisfy 0 <= p < 1, got {p}")
    if x.size != y.size:
        raise ValueError(f"dropout of {x.shape} into {y.shape}")
    lo, hi = seed_key(seed)
    k = plan.kernel(FILE, "dropout_apply")
    return plan.launch(k, (-(-x.size // 4),), (LOCAL,), x.size, lo, hi, step_arg(step), np.uint32(offset), threshold(p),
                       np.float32(1.0 / (1.0 - p)), x, y)
