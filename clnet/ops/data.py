"""Launchers of the input stage (kernels_cl/data.cl, gather.h): gather, convert, normalise and augment
a batch, in a launch of its own or taken into the launch of the first layers that read it."""

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from ..datasets.feed import image_dims
from .random import seed_key, step_arg

FILE = "data.cl"
LOCAL = 64


@dataclass(frozen=True)
class Gather:
    """A batch's gather as gather.h's helpers take it: out (rows, C, H, W) float from src (images, C,
    H, W) uint8 or float, images order[start + b]; with targets, target_out (rows, ...) =
    target_src[order[start + b]]. `args` are GATHER_ARGS's (n_valid ... norm), `target_args`
    TARGET_ARGS's; `defines` the program's options."""
    out: Any
    defines: Dict[str, Any]
    args: Tuple
    target_args: Tuple


def gather(order, src, norm, out, scale, crop=0, flip=False, seed=0, targets=None):
    """The Gather of `out` from `src` (see Gather); `targets` is (target_src, target_out) or None."""
    rows, (c, h, w) = out.shape[0], image_dims(out.shape[1:])
    lo, hi = seed_key(seed)
    target_args, defines = (), {"SRC_UINT8": np.dtype(src.dtype) == np.uint8}
    if targets is not None:
        target_src, target_out = targets
        target_args = (int(np.prod(target_out.shape[1:], dtype=int)), target_src, target_out)
        defines.update(TARGETS=1, TARGET_FLOAT=np.dtype(target_src.dtype) == np.float32)
    args = (rows, 0, c, h, w, np.float32(scale), int(crop), int(bool(flip)), lo, hi, step_arg(0), np.uint32(0),
            order, src, norm)
    return Gather(out, defines, args, target_args)


def gather_batch(plan, batch):
    """Record the Gather `batch` as a launch of its own: a work-item an image row, then one a target
    value."""
    rows, (c, h, _) = batch.out.shape[0], image_dims(batch.out.shape[1:])
    targets = rows * batch.target_args[0] if batch.target_args else 0
    k = plan.kernel(FILE, "gather_batch", **batch.defines)
    return plan.launch(k, (rows * c * h + targets,), (LOCAL,), rows, *batch.args, batch.out, *batch.target_args)
