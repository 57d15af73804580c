"""Batch normalisation layers with PyTorch's semantics (torch.nn.BatchNorm1d / BatchNorm2d): BatchNorm1D
and BatchNorm2D (also importable by their former names BatchNorm1d and BatchNorm2d).

Training normalises with the statistics of the batch (its valid rows only, when the last batch is
padded) and updates the running statistics; evaluation uses the running statistics. Parameters
`weight` and `bias` (when affine) are trainable; `running_mean`, `running_var` and
`num_batches_tracked` are buffers, in torch's state_dict order.
"""

from __future__ import annotations

from math import prod

import numpy as np

from ..errors import InputError
from ..ops import norm as norm_ops
from .base import Layer


class _BatchNorm(Layer):
    """Shared by BatchNorm1D and BatchNorm2D: all but the input shapes they accept."""

    #: input shapes per sample that the layer accepts, as text for errors
    expected = ""
    fuses_activation = True
    folds_into_producer = True
    adds_residual = True
    counters = ("num_batches_tracked",)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 name: str | None = None):
        super().__init__(name)
        if int(num_features) < 1:
            raise ValueError(f"{type(self).__name__} needs a positive number of features, got {num_features}")
        if not eps > 0:
            raise ValueError(f"{type(self).__name__} eps must be positive, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__} momentum must lie in [0, 1] or be None, got {momentum}")
        self.num_features, self.eps = int(num_features), float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine}

    def _accepts(self, input_shape):
        raise NotImplementedError

    def param_shapes(self):
        c = self.num_features
        return {"weight": (c,), "bias": (c,)} if self.affine else {}

    def buffer_shapes(self):
        c = self.num_features
        return {"running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}

    def init_params(self, rng, followed_by=None):
        c = self.num_features
        values = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32),
                  "num_batches_tracked": np.zeros((), np.float32)}
        if self.affine:
            values.update(weight=np.ones(c, np.float32), bias=np.zeros(c, np.float32))
        return values

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if not self._accepts(tuple(input_shape)):
            raise self.shape_error(self.expected, input_shape)
        return tuple(input_shape)

    def flops(self, input_shape):
        return 2 * prod(input_shape)

    def forward(self, ctx, x, residual=None):
        """The normalised x, plus `residual` where the graph runs a residual Add in this stage."""
        plan, buffers = ctx.plan, ctx.buffers
        y = plan.value(x.shape, f"{self!r} output")
        weight, bias = ctx.params.get("weight"), ctx.params.get("bias")  # None without affine
        if not ctx.training:
            norm_ops.batchnorm_forward_eval(plan, x, y, weight, bias, buffers["running_mean"],
                                            buffers["running_var"], self.eps, act=ctx.act, residual=residual)
            return y
        per_channel = x.shape[0] * prod(x.shape[2:])
        if per_channel < 2:
            raise InputError(f"{self!r} needs more than one value per channel in training, got a batch of "
                             f"{x.shape[0]} of shape {tuple(x.shape[1:])}: use a batch size of 2 or more")
        c = self.num_features
        mean, invstd = plan.value((c,), f"{self!r} batch mean"), plan.value((c,), f"{self!r} batch 1/std")
        # statistics over the valid rows only: the runner sets the plan's n_valid for a padded last batch
        norm_ops.batchnorm_forward_train(plan, x, y, weight, bias, buffers["running_mean"], buffers["running_var"],
                                         buffers["num_batches_tracked"], mean, invstd, self.eps, self.momentum,
                                         act=ctx.act, residual=residual)
        ctx.saved["stats"] = (mean, invstd)
        return y

    def fold(self, plan, producer_params, params, buffers):
        """The weight and bias of the Dense or Conv2D layer before this one with this evaluation
        normalisation folded in, recorded into `plan` (so they follow the parameters as they train):
        {"weight": ..., "bias": ...} values for the producer's forward, which then does both."""
        weight = producer_params["weight"]
        folded = {"weight": plan.value(weight.shape, f"{self!r} folded weight"),
                  "bias": plan.value((weight.shape[0],), f"{self!r} folded bias")}
        norm_ops.batchnorm_fold(plan, weight, producer_params.get("bias"), params.get("weight"), params.get("bias"),
                                buffers["running_mean"], buffers["running_var"], self.eps, folded["weight"],
                                folded["bias"])
        return folded

    def folded_arrays(self, producer_arrays, arrays):
        """What `fold` computes, as float32 numpy arrays from the producer's and this layer's arrays
        (the ONNX export folds with it)."""
        weight = np.asarray(producer_arrays["weight"], np.float64)
        scale = 1.0 / np.sqrt(np.asarray(arrays["running_var"], np.float64) + self.eps)
        shift = np.zeros_like(scale)
        if self.affine:
            scale, shift = scale * arrays["weight"], np.asarray(arrays["bias"], np.float64)
        bias = np.asarray(producer_arrays.get("bias", 0.0), np.float64)
        folded_bias = (bias - arrays["running_mean"]) * scale + shift
        folded_weight = weight * scale.reshape(-1, *(1,) * (weight.ndim - 1))
        return {"weight": folded_weight.astype(np.float32), "bias": folded_bias.astype(np.float32)}

    def backward(self, ctx, x, y, dy, need_dx):
        if not ctx.training:
            raise NotImplementedError(f"{self!r} records its backward pass only in training plans")
        plan = ctx.plan
        mean, invstd = ctx.saved["stats"]
        dx = plan.value(x.shape, f"{self!r} input grad") if need_dx else None
        norm_ops.batchnorm_backward(plan, x, y, dy, dx, ctx.params.get("weight"), ctx.grads.get("weight"),
                                    ctx.grads.get("bias"), mean, invstd, act=ctx.act)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        c = self.num_features
        if self.affine:
            scale = builder.constant(f"{prefix}.weight", arrays["weight"])
            shift = builder.constant(f"{prefix}.bias", arrays["bias"])
        else:  # BatchNormalization requires a scale and a shift
            scale = builder.constant(f"{prefix}.scale", np.ones(c, np.float32))
            shift = builder.constant(f"{prefix}.shift", np.zeros(c, np.float32))
        statistics = [builder.constant(f"{prefix}.{key}", arrays[key]) for key in ("running_mean", "running_var")]
        builder.add("BatchNormalization", name, [scale, shift, *statistics], epsilon=self.eps)

    def reference_statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(mean, biased variance, values per channel) of a batch x (N, C, ...) in float64: what
        training normalises with."""
        x = np.asarray(x, np.float64)
        per_channel = x.reshape(len(x), x.shape[1], -1)
        return (per_channel.mean(axis=(0, 2)), per_channel.var(axis=(0, 2)),
                per_channel.shape[0] * per_channel.shape[2])

    def reference(self, params, x, training=False):
        """Training normalises with the batch's statistics, evaluation with the running ones."""
        x = np.asarray(x, np.float64)
        if training:
            mean, var, _ = self.reference_statistics(x)
        else:
            mean, var = params["running_mean"], params["running_var"]
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)

        def per_channel(v):
            return np.asarray(v, np.float64).reshape(shape)

        y = (x - per_channel(mean)) / np.sqrt(per_channel(var) + self.eps)
        return y * per_channel(params["weight"]) + per_channel(params["bias"]) if self.affine else y

    def __repr__(self):
        extra = "" if self.eps == 1e-5 else f", eps={self.eps:g}"
        extra += "" if self.momentum == 0.1 else f", momentum={self.momentum}"
        extra += "" if self.affine else ", affine=False"
        return f"{type(self).__name__}({self.num_features}{extra})"


class BatchNorm2D(_BatchNorm):
    """Per-channel normalisation of images, as torch.nn.BatchNorm2d: statistics over (N, H, W).

    Args:
        num_features: the channels C.
        eps: added to the variance.
        momentum: the new batch's weight in the running statistics; None for a cumulative average.
        affine: learn a per-channel weight and bias (initially 1 and 0).

    Shape:
        Input (C, H, W); the output has the same shape.

    Example:
        >>> clnet.Sequential([Conv2D(3, 16, 3, padding=1), BatchNorm2D(16), ReLU()])
    """

    expected = "(num_features, H, W)"

    def _accepts(self, shape):
        return len(shape) == 3 and shape[0] == self.num_features


class BatchNorm1D(_BatchNorm):
    """Per-feature normalisation, as torch.nn.BatchNorm1d: statistics over N (and L for sequences).

    Args:
        num_features: the features F.
        eps: added to the variance.
        momentum: the new batch's weight in the running statistics; None for a cumulative average.
        affine: learn a per-feature weight and bias (initially 1 and 0).

    Shape:
        Input (F,) or (F, L); the output has the same shape.

    Example:
        >>> clnet.Sequential([Flatten(), Dense(784, 128), BatchNorm1D(128), ReLU(), Dense(128, 10)])
    """

    expected = "(num_features,) or (num_features, L)"

    def _accepts(self, shape):
        return len(shape) in (1, 2) and shape[0] == self.num_features


# The former names (before one casing for all layers): the same classes.
BatchNorm1d, BatchNorm2d = BatchNorm1D, BatchNorm2D
