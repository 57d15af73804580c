"""Launchers of the input stage (kernels_cl/data.cl): gather, convert, normalise and augment a batch."""

import numpy as np

from ..datasets.feed import image_dims
from .random import seed_key, step_arg

FILE = "data.cl"
LOCAL = 64


def gather_batch(plan, order, src, norm, out, scale, crop=0, flip=False, seed=0, targets=None):
    """out (rows, C, H, W) float from src (images, C, H, W) uint8 or float, images order[start + b];
    with `targets` (target_src, target_out), in the same launch target_out (rows, ...) =
    target_src[order[start + b]]: int labels or float targets."""
    rows, (c, h, w) = out.shape[0], image_dims(out.shape[1:])
    lo, hi = seed_key(seed)
    target_args, target_items, defines = (), 0, {}
    if targets is not None:
        target_src, target_out = targets
        width = int(np.prod(target_out.shape[1:], dtype=int))
        target_args, target_items = (width, target_src, target_out), rows * width
        defines = {"TARGETS": 1, "TARGET_FLOAT": np.dtype(target_src.dtype) == np.float32}
    k = plan.kernel(FILE, "gather_batch", SRC_UINT8=np.dtype(src.dtype) == np.uint8, **defines)
    return plan.launch(k, (rows * c * h + target_items,), (LOCAL,), rows, rows, 0, c, h, w, np.float32(scale),
                       int(crop), int(bool(flip)), lo, hi, step_arg(0), np.uint32(0), order, src, norm, out,
                       *target_args)
