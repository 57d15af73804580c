"""Kernel arguments of the counter-based generator (Philox4x32-10 in kernels_cl/common.h)."""

import numpy as np


def step_arg(step):
    """The step counter as the kernels' uint argument (steps count from 1; wraps after 2^32)."""
    return np.uint32(int(step) % 2 ** 32)


def seed_key(seed):
    """The generator's 64-bit key (low word, high word) from an integer seed of any size or sign."""
    seed = int(seed) % 2 ** 64
    return np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
