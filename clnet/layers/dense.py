"""Dense (fully connected) layer: y = x W^T + b, W of shape (out, in) as torch.nn.Linear."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ops import dense_chain as chain_ops
from .activation import ReLU
from .base import INITS, Layer, weight_and_bias


class Dense(Layer):
    """Fully connected layer, as torch.nn.Linear: y = x W^T + b. A following activation runs in the
    GEMM epilogue.

    Args:
        in_features, out_features: sizes of each input and output sample.
        bias: learn a bias.
        init: the initialisation: "torch" (the default: PyTorch's, weight and bias uniform within
            1 / sqrt(in_features)); "he" or "glorot" (uniform, with a zero bias); or "auto" (He
            before a ReLU, Glorot otherwise).

    Shape:
        Input (in_features,); output (out_features,). Images need a Flatten first.

    Example:
        >>> clnet.Sequential([Flatten(), Dense(784, 128), ReLU(), Dense(128, 10)])
    """

    fuses_activation = True
    takes_folded_norm = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "torch",
                 name: str | None = None):
        super().__init__(name)
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"Dense needs positive sizes, got ({in_features}, {out_features})")
        if init not in INITS:
            raise ValueError(f"Dense init must be one of {', '.join(map(repr, INITS))}, not {init!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bias, self.init = bool(bias), init

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias,
                "init": self.init}

    def param_shapes(self):
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng, followed_by=None):
        weight, bias = weight_and_bias(rng, self.init, (self.out_features, self.in_features), self.in_features,
                                       self.out_features, self.out_features if self.bias else 0,
                                       isinstance(followed_by, ReLU))
        return {"weight": weight, "bias": bias} if self.bias else {"weight": weight}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int]:
        if tuple(input_shape) != (self.in_features,):
            hint = "add a Flatten layer before it" if len(input_shape) > 1 else ""
            raise self.shape_error((self.in_features,), input_shape, hint)
        return (self.out_features,)

    def flops(self, input_shape):
        return 2 * self.in_features * self.out_features

    def forward(self, ctx, x):
        y = ctx.plan.value((x.shape[0], self.out_features), f"{self!r} output")
        ops.gemm(ctx.plan, x, ctx.params["weight"], y, trans_b=True, bias=ctx.params.get("bias"), act=ctx.act)
        return y

    @staticmethod
    def forward_chain(contexts, layers, x, gather=None):
        """Record `forward` of Dense `layers` that each read the one before (the first x) together,
        as `ops.dense_chain` launches, the first taking `gather` (of x) in where given; their
        outputs, as `forward` would return them one by one, and the first launch."""
        plan = contexts[0].plan
        outputs = [plan.value((x.shape[0], layer.out_features), f"{layer!r} output") for layer in layers]
        first = chain_ops.forward(plan, x, [(ctx.params["weight"], ctx.params.get("bias"), ctx.act, y)
                                            for ctx, y in zip(contexts, outputs)], gather)
        return outputs, first

    @staticmethod
    def backward_chain(contexts, x, outputs, dy, need_dx):
        """Record `backward` of layers that `forward_chain` recorded (their contexts, input and
        outputs), given the gradient of the last one's output, as `ops.dense_chain` launches: the
        gradient of x where `need_dx`, else None."""
        return chain_ops.backward(contexts[0].plan, x, [
            (ctx.params["weight"], ctx.params.get("bias"), ctx.act, y, ctx.grads["weight"], ctx.grads.get("bias"))
            for ctx, y in zip(contexts, outputs)], dy, need_dx)

    def backward(self, ctx, x, y, dy, need_dx):
        plan, act = ctx.plan, ctx.act
        # dpre: gradient before the fused activation; it is dy itself when there is none.
        dpre = dy if act is None else plan.value(dy.shape, f"{self!r} pre-activation grad")
        if act is not None or self.bias:
            ops.bias_act_backward(plan, act, dy, y, dpre, ctx.grads.get("bias"))
        ops.gemm(plan, dpre, x, ctx.grads["weight"], trans_a=True)
        if not need_dx:
            return None
        dx = plan.value(x.shape, f"{self!r} input grad")
        ops.gemm(plan, dpre, ctx.params["weight"], dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        inputs = [builder.constant(f"{prefix}.weight", arrays["weight"])]
        if "bias" in arrays:  # also without a bias of its own when a BatchNorm was folded in
            inputs.append(builder.constant(f"{prefix}.bias", arrays["bias"]))
        builder.add("Gemm", name, inputs, transB=1)  # the weight is (out, in)

    def reference(self, params, x, training=False):
        y = np.asarray(x, np.float64) @ np.asarray(params["weight"], np.float64).T
        return y + np.asarray(params["bias"], np.float64) if self.bias else y

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}{'' if self.bias else ', bias=False'})"
