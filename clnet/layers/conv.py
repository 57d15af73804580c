"""Conv2D: NCHW convolution, weight (out, in, kh, kw) as torch.nn.Conv2d; its passes are the
launchers of ops/conv.py, which choose the algorithm for the device."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ops import conv as conv_ops
from ..ops.conv import ConvGeometry
from .activation import ReLU
from .base import INITS, IntOrPair, Layer, weight_and_bias


class Conv2D(Layer):
    """2-D convolution of images, as torch.nn.Conv2d (cross-correlation, weight (out, in, kh, kw)).
    A following activation runs in the GEMM epilogue.

    Args:
        in_channels, out_channels: channels of the input and of the output.
        kernel_size, stride, dilation: ints or (h, w) pairs.
        padding: zeros added on each side, an int or an (h, w) pair; or "same" (stride 1 only),
            which keeps the size; an even kernel's extra row/column goes bottom/right, as PyTorch.
        groups: split the channels into this many groups, each output group reading its input
            group alone (as torch.nn.Conv2d): in_channels and out_channels must both be divisible
            by it, and the weight is (out_channels, in_channels / groups, kh, kw). groups ==
            in_channels is a depthwise convolution (out_channels a multiple of in_channels), which
            runs as a direct kernel of its own rather than a GEMM.
        bias: learn a per-channel bias.
        init: the initialisation: "torch" (the default: PyTorch's, weight and bias uniform within
            1 / sqrt(in_channels / groups * kernel height * kernel width)); "he" or "glorot"
            (uniform, with a zero bias); or "auto" (He before a ReLU, Glorot otherwise).

    Shape:
        Input (in_channels, H, W); output (out_channels, OH, OW) with
        OH = (H + 2 padding - dilation (kernel - 1) - 1) // stride + 1 (likewise OW).

    Example:
        >>> clnet.Sequential([Conv2D(1, 8, 3, padding=1), ReLU(), MaxPool2D(2)])  # (1, 28, 28) -> (8, 14, 14)
        >>> clnet.Sequential([Conv2D(32, 32, 3, padding=1, groups=32), ReLU6()])  # depthwise, as in MobileNetV2
    """

    fuses_activation = True
    takes_folded_norm = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: IntOrPair | str = 0, dilation: IntOrPair = 1, groups: int = 1, bias: bool = True,
                 init: str = "torch", name: str | None = None):
        super().__init__(name)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"Conv2D needs positive channel counts, got ({in_channels}, {out_channels})")
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"Conv2D groups must be a positive int, got {groups!r}")
        self.groups = int(groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2D groups={self.groups} must divide both in_channels ({self.in_channels}) "
                             f"and out_channels ({self.out_channels})")
        self.kernel_size = ops.int_pair(kernel_size, "Conv2D kernel_size")
        self.stride = ops.int_pair(stride, "Conv2D stride")
        self.dilation = ops.int_pair(dilation, "Conv2D dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1:
            raise ValueError("Conv2D kernel_size, stride and dilation must be at least 1")
        if padding == "same":
            if self.stride != (1, 1):
                raise ValueError('Conv2D padding="same" needs stride 1 (as in PyTorch)')
            self.padding = "same"
        else:
            self.padding = ops.int_pair(padding, "Conv2D padding")
            if min(self.padding) < 0:
                raise ValueError(f"Conv2D padding must not be negative, got {padding!r}")
        if init not in INITS:
            raise ValueError(f"Conv2D init must be one of {', '.join(map(repr, INITS))}, not {init!r}")
        self.bias, self.init = bool(bias), init

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if self.padding == "same" else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias, "init": self.init}

    def param_shapes(self):
        shapes = {"weight": (self.out_channels, self.in_channels // self.groups, *self.kernel_size)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init_params(self, rng, followed_by=None):
        kh, kw = self.kernel_size
        # as torch: fan_in from the weight's (in_channels / groups, kh, kw), fan_out from (out_channels, kh, kw)
        fan_in, fan_out = self.in_channels // self.groups * kh * kw, self.out_channels * kh * kw
        weight, bias = weight_and_bias(rng, self.init, self.param_shapes()["weight"], fan_in, fan_out,
                                       self.out_channels if self.bias else 0, isinstance(followed_by, ReLU))
        return {"weight": weight, "bias": bias} if self.bias else {"weight": weight}

    def _padding_sides(self):
        """((top, bottom), (left, right)): "same" puts the odd extra row/column of an even (dilated)
        kernel at the bottom/right, as PyTorch pads."""
        if self.padding != "same":
            return tuple((p, p) for p in self.padding)
        totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
        return tuple((t // 2, t - t // 2) for t in totals)

    def _top_left_padding(self):
        return tuple(before for before, _ in self._padding_sides())

    def geometry(self, input_shape: tuple[int, int, int]) -> ConvGeometry:
        c, h, w = input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ph, pw = self._top_left_padding()
        if self.padding == "same":
            oh, ow = h, w
        else:
            oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return ConvGeometry(c, h, w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw, self.groups)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise self.shape_error(f"({self.in_channels}, height, width)", input_shape)
        g = self.geometry(input_shape)
        if g.OH < 1 or g.OW < 1:
            raise self.shape_error(f"({self.in_channels}, height, width) at least as large as the "
                                   "dilated kernel minus the padding", input_shape,
                                   "the image is too small for this kernel: pad it or use a smaller kernel")
        return (self.out_channels, g.OH, g.OW)

    def flops(self, input_shape):
        g = self.geometry(input_shape)
        return 2 * self.out_channels * g.rows * g.pixels

    def forward(self, ctx, x):
        g = self.geometry(x.shape[1:])
        y = ctx.plan.value((x.shape[0], self.out_channels, g.OH, g.OW), f"{self!r} output")
        weight = ctx.params["weight"].view((self.out_channels, g.rows))
        conv_ops.forward(ctx.plan, g, x.shape[0], x, weight, y, ctx.params.get("bias"), ctx.act)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        plan, batch = ctx.plan, x.shape[0]
        g = self.geometry(x.shape[1:])
        dpre = conv_ops.pre_activation_grad(plan, g, ctx.act, dy, y, ctx.grads.get("bias"),
                                            f"{self!r} pre-activation grad")
        weight = ctx.params["weight"].view((self.out_channels, g.rows))
        conv_ops.weight_grad(plan, g, batch, dpre, x, ctx.grads["weight"].view((self.out_channels, g.rows)))
        if not need_dx:
            return None
        dx = plan.value(x.shape, f"{self!r} input grad")
        conv_ops.input_grad(plan, g, batch, weight, dpre, dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        inputs = [builder.constant(f"{prefix}.weight", arrays["weight"])]
        if "bias" in arrays:  # also without a bias of its own when a BatchNorm was folded in
            inputs.append(builder.constant(f"{prefix}.bias", arrays["bias"]))
        (top, bottom), (left, right) = self._padding_sides()
        builder.add("Conv", name, inputs, kernel_shape=list(self.kernel_size), strides=list(self.stride),
                    dilations=list(self.dilation), pads=[top, left, bottom, right], group=self.groups)

    def reference(self, params, x, training=False):
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        weight = np.asarray(params["weight"], np.float64)
        xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), *self._padding_sides()))
        oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
        ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
        groups, cg, og = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        xp = xp.reshape(len(xp), groups, cg, *xp.shape[2:])  # (n, group, channel of the group, h, w)
        weight = weight.reshape(groups, og, cg, kh, kw)
        y = np.zeros((len(xp), groups, og, oh, ow))
        for i in range(kh):
            for j in range(kw):
                patch = xp[..., i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                y += np.einsum("ngchw,goc->ngohw", patch, weight[..., i, j])
        y = y.reshape(len(xp), self.out_channels, oh, ow)
        return y + np.asarray(params["bias"], np.float64)[None, :, None, None] if self.bias else y

    def __repr__(self):
        extra = "".join(f", {name}={value!r}" for name, value, default in (
            ("stride", self.stride, (1, 1)), ("padding", self.padding, (0, 0)),
            ("dilation", self.dilation, (1, 1)), ("groups", self.groups, 1)) if value != default)
        k = self.kernel_size[0] if self.kernel_size[0] == self.kernel_size[1] else self.kernel_size
        return (f"Conv2D({self.in_channels}, {self.out_channels}, {k}{extra}"
                f"{'' if self.bias else ', bias=False'})")
