"""Thin launchers that record kernels into a plan, shared by layers, losses and optimizers."""

from .elementwise import ACTIVATIONS, activation_backward, activation_forward, bias_act_backward, softmax_backward, softmax_forward
from .gemm import Matrix, gemm

__all__ = ["ACTIVATIONS", "activation_backward", "activation_forward", "bias_act_backward", "gemm", "Matrix",
           "softmax_backward", "softmax_forward"]
