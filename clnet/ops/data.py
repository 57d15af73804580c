"""Launchers of the input stage (kernels_cl/data.cl): gather, convert, normalise and augment a batch."""

import numpy as np

from ..datasets.feed import image_dims
from .random import seed_key, step_arg

FILE = "data.cl"
LOCAL = 64


def gather_images(plan, order, src, norm, out, scale, crop=0, flip=False, seed=0):
    """out (rows, C, H, W) float from src (images, C, H, W) uint8 or float, images order[start + b]."""
    rows, (c, h, w) = out.shape[0], image_dims(out.shape[1:])
    lo, hi = seed_key(seed)
    k = plan.kernel(FILE, "gather_images", SRC_UINT8=np.dtype(src.dtype) == np.uint8)
    return plan.launch(k, (rows * c * h,), (LOCAL,), rows, rows, 0, c, h, w, np.float32(scale), int(crop),
                       int(bool(flip)), lo, hi, step_arg(0), np.uint32(0), order, src, norm, out)


def gather_targets(plan, order, src, out):
    """out (rows, ...) = src[order[start + b]] for each row b; int labels or float targets."""
    rows, width = out.shape[0], int(np.prod(out.shape[1:], dtype=int))
    k = plan.kernel(FILE, "gather_targets", TARGET_FLOAT=np.dtype(src.dtype) == np.float32)
    return plan.launch(k, (rows * width,), (LOCAL,), rows, rows, 0, width, order, src, out)
