"""Conv2D: NCHW convolution, weight (out, in, kh, kw) as torch.nn.Conv2d; its passes are the
launchers of ops/conv.py, which choose the algorithm for the device."""

import numpy as np

from .. import ops
from ..ops import conv as conv_ops
from ..ops.conv import ConvGeometry, conv_bias_act_backward
from .activation import ReLU
from .base import Layer, glorot_uniform, he_uniform


class Conv2D(Layer):
    """2-D convolution over (C, H, W) inputs; kernel_size, stride, padding and dilation are ints or
    (h, w) pairs, and padding="same" keeps the size for stride 1 (the extra row/column of an even
    kernel goes bottom/right, as PyTorch pads). A following activation runs in the GEMM epilogue."""

    fuses_activation = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, init="auto"):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"Conv2D needs positive channel counts, got ({in_channels}, {out_channels})")
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
        if init not in ("auto", "he", "glorot"):
            raise ValueError(f"Conv2D init must be 'auto', 'he' or 'glorot', not {init!r}")
        self.bias, self.init = bool(bias), init

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if self.padding == "same" else list(self.padding),
                "dilation": list(self.dilation), "bias": self.bias, "init": self.init}

    def param_shapes(self):
        shapes = {"weight": (self.out_channels, self.in_channels, *self.kernel_size)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init_params(self, rng, followed_by=None):
        kh, kw = self.kernel_size
        fan_in, fan_out = self.in_channels * kh * kw, self.out_channels * kh * kw
        shape = self.param_shapes()["weight"]
        he = self.init == "he" or (self.init == "auto" and isinstance(followed_by, ReLU))
        params = {"weight": he_uniform(rng, shape, fan_in) if he else glorot_uniform(rng, shape, fan_in, fan_out)}
        if self.bias:
            params["bias"] = np.zeros(self.out_channels, np.float32)
        return params

    def _top_left_padding(self):
        if self.padding == "same":
            return tuple(d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size))
        return self.padding

    def geometry(self, input_shape):
        c, h, w = input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ph, pw = self._top_left_padding()
        if self.padding == "same":
            oh, ow = h, w
        else:
            oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return ConvGeometry(c, h, w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw)

    def output_shape(self, input_shape):
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
        conv_ops.forward(ctx.plan, g, x.shape[0], x, weight, y, ctx.params.get("bias"),
                                  ops.ACTIVATIONS[ctx.act])
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        plan, batch = ctx.plan, x.shape[0]
        g = self.geometry(x.shape[1:])
        pixels = batch * g.pixels
        # dpre: the gradient before the activation, channels first, (out, batch * pixels)
        dpre = plan.value((self.out_channels, pixels), f"{self!r} pre-activation grad")
        act = ops.ACTIVATIONS[ctx.act]
        shape = (batch, self.out_channels, g.pixels)
        conv_bias_act_backward(plan, act, dy.view(shape), (y if act else dy).view(shape), dpre,
                               ctx.grads.get("bias"))
        weight = ctx.params["weight"].view((self.out_channels, g.rows))
        conv_ops.weight_grad(plan, g, batch, dpre, x, ctx.grads["weight"].view((self.out_channels, g.rows)))
        if not need_dx:
            return None
        dx = plan.value(x.shape, f"{self!r} input grad")
        conv_ops.input_grad(plan, g, batch, weight, dpre, dx)
        return dx

    def __repr__(self):
        extra = "".join(f", {name}={value!r}" for name, value, default in (
            ("stride", self.stride, (1, 1)), ("padding", self.padding, (0, 0)),
            ("dilation", self.dilation, (1, 1))) if value != default)
        k = self.kernel_size[0] if self.kernel_size[0] == self.kernel_size[1] else self.kernel_size
        return (f"Conv2D({self.in_channels}, {self.out_channels}, {k}{extra}"
                f"{'' if self.bias else ', bias=False'})")
