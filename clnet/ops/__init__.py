"""Thin launchers that record kernels into a plan, shared by layers, losses and optimizers."""

import operator

from .elementwise import (ACTIVATIONS, activation, activation_backward, activation_backward_from_input,
                          activation_forward, bias_act_backward, softmax_backward, softmax_forward)
from .gemm import Matrix, gemm

__all__ = ["ACTIVATIONS", "activation", "activation_backward", "activation_backward_from_input", "activation_forward",
           "bias_act_backward", "gemm", "int_pair", "Matrix", "softmax_backward", "softmax_forward"]


def int_pair(value, name="value"):
    """(h, w) from an int or a pair of ints (a tuple or list); a ValueError naming the argument
    otherwise. Bools and floats are refused rather than silently turned into sizes."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    try:
        if len(items) != 2 or any(isinstance(v, bool) for v in items):
            raise TypeError
        return tuple(operator.index(v) for v in items)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints (height, width), got {value!r}") from None
