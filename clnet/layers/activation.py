"""Activation layers. After a Dense, Conv2D, BatchNorm or Add layer the graph fuses those whose
gradient needs only their output into the layer's pass (`Network.stages`)."""

from __future__ import annotations

import numpy as np

from .. import ops
from .base import Layer


class Activation(Layer):
    """Base of the element-wise activations: `kind` names the kernel's activation, `onnx_op` the
    ONNX operator. `grad_from_output` says whether the derivative is a function of the output: then
    backward reads only the output, and the activation can run in a GEMM epilogue (which keeps no
    input); else backward reads the input, and the activation runs on its own."""

    kind = "none"
    onnx_op = ""
    grad_from_output = True

    def kernel_options(self) -> dict:
        """The -D options that select this activation in the kernels (`ops.activation`)."""
        return ops.activation(self.kind)

    def forward(self, ctx, x):
        y = ctx.plan.value(x.shape, f"{self!r} output")
        ops.activation_forward(ctx.plan, self.kernel_options(), x, y)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        if self.grad_from_output:
            ops.activation_backward(ctx.plan, self.kernel_options(), y, dy, dx)
        else:
            ops.activation_backward_from_input(ctx.plan, self.kernel_options(), x, dy, dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add(self.onnx_op, name)


class ReLU(Activation):
    """max(x, 0), element-wise.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(784, 128), ReLU(), Dense(128, 10)])
    """

    kind, onnx_op = "relu", "Relu"

    def reference(self, params, x, training=False):
        return np.maximum(np.asarray(x, np.float64), 0)


class Sigmoid(Activation):
    """1 / (1 + exp(-x)), element-wise.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(20, 1), Sigmoid()])
    """

    kind, onnx_op = "sigmoid", "Sigmoid"

    def reference(self, params, x, training=False):
        return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


class Tanh(Activation):
    """tanh(x), element-wise.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(4, 6), Tanh(), Dense(6, 3)])
    """

    kind, onnx_op = "tanh", "Tanh"

    def reference(self, params, x, training=False):
        return np.tanh(np.asarray(x, np.float64))


class ReLU6(Activation):
    """min(max(x, 0), 6), element-wise, as torch.nn.ReLU6 (gradient 0 at 0 and at 6).

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Conv2D(3, 16, 3), ReLU6(), Flatten(), Dense(16 * 30 * 30, 10)])
    """

    kind = "relu6"

    def to_onnx(self, builder, name, prefix, arrays):
        if builder.opset < 11:  # Clip's bounds were attributes before opset 11, inputs since
            builder.add("Clip", name, min=0.0, max=6.0)
            return
        bounds = [builder.constant(f"{prefix}.{bound}", np.array(value, np.float32))
                  for bound, value in (("min", 0.0), ("max", 6.0))]
        builder.add("Clip", name, bounds)

    def reference(self, params, x, training=False):
        return np.clip(np.asarray(x, np.float64), 0, 6)


class LeakyReLU(Activation):
    """x where x > 0, negative_slope * x elsewhere, element-wise, as torch.nn.LeakyReLU.

    Args:
        negative_slope: the slope for x <= 0 (in the kernels as its float32). With a negative
            slope the output no longer tells the sign of x: backward then reads the input, and the
            layer does not run in a GEMM epilogue.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(784, 128), LeakyReLU(0.1), Dense(128, 10)])
    """

    kind, onnx_op = "leaky_relu", "LeakyRelu"

    def __init__(self, negative_slope: float = 0.01, name: str | None = None):
        super().__init__(name)
        if not np.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU needs a finite negative_slope, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    @property
    def grad_from_output(self) -> bool:
        return self.negative_slope >= 0

    def config(self):
        return {"negative_slope": self.negative_slope}

    def kernel_options(self):
        return ops.activation(self.kind, self.negative_slope)

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add(self.onnx_op, name, alpha=self.negative_slope)

    def reference(self, params, x, training=False):
        x = np.asarray(x, np.float64)
        return np.where(x > 0, x, self.negative_slope * x)

    def __repr__(self):
        return f"LeakyReLU({self.negative_slope!r})"


class SiLU(Activation):
    """x * sigmoid(x), element-wise, as torch.nn.SiLU (Swish). Its derivative is not a function of
    its output, so backward reads the input and the layer never runs in a GEMM epilogue.

    Shape:
        Any input shape; the output has the same shape.

    Example:
        >>> clnet.Sequential([Dense(784, 128), SiLU(), Dense(128, 10)])
    """

    kind = "silu"
    grad_from_output = False

    def to_onnx(self, builder, name, prefix, arrays):
        x = builder.value
        builder.add("Sigmoid", f"{name}.sigmoid")
        builder.add("Mul", name, [x])

    def reference(self, params, x, training=False):
        x = np.asarray(x, np.float64)
        return x * 0.5 * (1 + np.tanh(0.5 * x))  # x / (1 + exp(-x)), without overflow


class Identity(Layer):
    """The input, unchanged, as torch.nn.Identity: a placeholder (where a block may have an
    activation or a shortcut may have a projection). A view: no kernel runs.

    Shape:
        Any input shape; the output is the input.

    Example:
        >>> clnet.Sequential([Dense(784, 128), Identity(), Dense(128, 10)])
    """

    def forward(self, ctx, x):
        return x.view(x.shape)

    def backward(self, ctx, x, y, dy, need_dx):
        return dy.view(x.shape) if need_dx else None

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add("Identity", name)

    def reference(self, params, x, training=False):
        return np.asarray(x, np.float64)


class Softmax(Layer):
    """Softmax over the features of each sample. As the last layer with a cross-entropy loss it is
    fused into the loss (computed from the logits, which is exact and stable).

    Shape:
        Input (features,); the output has the same shape and sums to 1.

    Example:
        >>> clnet.Sequential([Flatten(), Dense(784, 10), Softmax()])
    """

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 1:
            raise self.shape_error("(features,)", input_shape, "add a Flatten layer before it")
        return tuple(input_shape)

    def forward(self, ctx, x):
        y = ctx.plan.value(x.shape, f"{self!r} output")
        ops.softmax_forward(ctx.plan, x, y)
        return y

    def backward(self, ctx, x, y, dy, need_dx):
        if not need_dx:
            return None
        dx = ctx.plan.value(x.shape, f"{self!r} input grad")
        ops.softmax_backward(ctx.plan, y, dy, dx)
        return dx

    def to_onnx(self, builder, name, prefix, arrays):
        builder.add("Softmax", name, axis=1)

    def reference(self, params, x, training=False):
        z = np.asarray(x, np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
