"""Launchers for max and average pooling (kernels_cl/pool.cl) and adaptive average pooling
(adaptive_pool.cl) over NCHW tensors.

`kernel`, `stride` and `padding` are ints or (height, width) pairs; adaptive pooling takes its
output size from the output's shape. Shapes are checked before anything is built or recorded; a
mismatch is a ValueError (layers check their shapes earlier, with a ShapeError naming the layer).
"""

from ..errors import ShapeError
from . import int_pair

FILE = "pool.cl"
ADAPTIVE_FILE = "adaptive_pool.cl"
LOCAL = 64
CPU_LOCAL = 8  # work-groups of output rows for max pooling on CPUs (faster than 1 or 64 on PoCL)


def output_size(size, kernel, stride, padding):
    """floor((size + 2 padding - kernel) / stride) + 1, as PyTorch with ceil_mode=False; <= 0 when
    the window is larger than the padded input."""
    room = size + 2 * padding - kernel
    return room // stride + 1 if room >= 0 else 0


def output_hw(height, width, kernel, stride, padding):
    """(OH, OW) of an image; kernel, stride and padding are (height, width) pairs."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)


def _require_4d(what, shape):
    if len(shape) != 4:
        raise ValueError(f"{what} shapes: input {tuple(shape)} is not (N, C, H, W)")


def _geometry(what, x_shape, y_shape, kernel, stride, padding):
    """The planes (batch x channels) every pool kernel takes, and the rest of the geometry as the
    kernels' compile-time constants, after checking the shapes."""
    (kh, kw), (sh, sw), (ph, pw) = (int_pair(kernel, f"{what} kernel"), int_pair(stride, f"{what} stride"),
                                    int_pair(padding, f"{what} padding"))
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{what}: bad window: kernel {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}")
    _require_4d(what, x_shape)
    n, c, h, w = x_shape
    oh, ow = output_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    if n * c * max(h * w, oh * ow) >= 2**31:
        raise ShapeError(f"{what}: {tuple(x_shape)} is too large for the kernels' int32 indices: use a smaller batch "
                         "or smaller images")
    if oh < 1 or ow < 1 or tuple(y_shape) != (n, c, oh, ow):
        raise ValueError(f"{what} shapes: input {tuple(x_shape)} with kernel {(kh, kw)}, stride {(sh, sw)}, "
                         f"padding {(ph, pw)} gives output {(n, c, oh, ow)}, not {tuple(y_shape)}")
    sizes = dict(H=h, W=w, OH=oh, OW=ow, KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw)
    return n * c, {f"POOL_{name}": value for name, value in sizes.items()}


def _pairs(sizes):
    """Whether the windows are 2 x 2 at stride 2 without padding, which the CPU kernels take eight
    (then four) at a time, as vectors (POOL_PAIRS)."""
    return [sizes[f"POOL_{name}"] for name in ("KH", "KW", "SH", "SW", "PH", "PW")] == [2, 2, 2, 2, 0, 0]


def maxpool_forward(plan, x, y, kernel, stride, padding=0, argmax=None):
    """y = max over each window; argmax (int32, shape of y), when given, gets the flat index h*W+w of
    the chosen element within its (n, c) plane. Without argmax (inference) nothing else is written."""
    planes, sizes = _geometry("maxpool_forward", x.shape, y.shape, kernel, stride, padding)
    if argmax is not None and tuple(argmax.shape) != tuple(y.shape):
        raise ValueError(f"maxpool_forward shapes: argmax {tuple(argmax.shape)} differs from "
                         f"output {tuple(y.shape)}")
    if plan.device.family == "cpu":  # a work-item per output row (2 x 2 windows at stride 2 by eights)
        k = plan.kernel(FILE, "maxpool_forward", **sizes, POOL_ROWS=True, POOL_PAIRS=_pairs(sizes))
        grid, local = (y.size // sizes["POOL_OW"],), (CPU_LOCAL,)
    else:
        k = plan.kernel(FILE, "maxpool_forward", **sizes)
        grid, local = (y.size,), (LOCAL,)
    return plan.launch(k, grid, local, planes, int(argmax is not None), x, y,
                       argmax if argmax is not None else y)  # y stands in for an unused argmax


def maxpool_backward(plan, argmax, dy, dx, kernel, stride, padding=0):
    """dx = for each input element, the sum of dy over the windows whose argmax it is."""
    planes, sizes = _geometry("maxpool_backward", dx.shape, dy.shape, kernel, stride, padding)
    if tuple(argmax.shape) != tuple(dy.shape):
        raise ValueError(f"maxpool_backward shapes: argmax {tuple(argmax.shape)} differs from "
                         f"dy {tuple(dy.shape)}")
    if plan.device.family == "cpu" and _pairs(sizes):  # a work-item per output row writes its two rows of dx
        k = plan.kernel(FILE, "maxpool_backward", **sizes, POOL_PAIRS=True)
        return plan.launch(k, (dy.size // sizes["POOL_OW"],), (CPU_LOCAL,), planes, argmax, dy, dx)
    if plan.device.family == "cpu" and sizes["POOL_SH"] >= sizes["POOL_KH"] and sizes["POOL_SW"] >= sizes["POOL_KW"]:
        # windows that do not overlap: a work-item per output element writes its cell of dx
        k = plan.kernel(FILE, "maxpool_backward", **sizes, POOL_CELLS=True)
        return plan.launch(k, (dy.size,), None, planes, argmax, dy, dx)
    k = plan.kernel(FILE, "maxpool_backward", **sizes)
    return plan.launch(k, (dx.size,), (LOCAL,), planes, argmax, dy, dx)


def avgpool_forward(plan, x, y, kernel, stride, padding=0):
    """y = mean of each window, zero padding included (count_include_pad=True)."""
    planes, sizes = _geometry("avgpool_forward", x.shape, y.shape, kernel, stride, padding)
    return plan.launch(plan.kernel(FILE, "avgpool_forward", **sizes), (y.size,), (LOCAL,), planes, x, y)


def avgpool_backward(plan, dy, dx, kernel, stride, padding=0):
    """dx = for each input element, the sum of dy / window size over the windows covering it."""
    planes, sizes = _geometry("avgpool_backward", dx.shape, dy.shape, kernel, stride, padding)
    return plan.launch(plan.kernel(FILE, "avgpool_backward", **sizes), (dx.size,), (LOCAL,), planes, dy, dx)


def global_avgpool_forward(plan, x, y):
    """y (N, C, 1, 1) = mean of each H x W plane of x: one window covering the whole image."""
    _require_4d("global_avgpool_forward", x.shape)
    return avgpool_forward(plan, x, y, x.shape[2:], 1, 0)


def global_avgpool_backward(plan, dy, dx):
    """dx = dy / (H W), spread over each plane."""
    _require_4d("global_avgpool_backward", dx.shape)
    return avgpool_backward(plan, dy, dx, dx.shape[2:], 1, 0)


def _adaptive_geometry(what, x_shape, y_shape):
    """The planes and the compile-time sizes of adaptive pooling from x (N, C, H, W) to y (N, C, OH, OW)."""
    _require_4d(what, x_shape)
    n, c, h, w = x_shape
    if len(y_shape) != 4 or tuple(y_shape[:2]) != (n, c) or min(y_shape[2:]) < 1:
        raise ValueError(f"{what} shapes: output {tuple(y_shape)} is not (N, C, OH, OW) for input {tuple(x_shape)}")
    oh, ow = y_shape[2:]
    if n * c * max(h * w, oh * ow) >= 2**31 or max(oh * h, ow * w) >= 2**31:
        raise ShapeError(f"{what}: {tuple(x_shape)} -> {tuple(y_shape)} is too large for the kernels' int32 indices: "
                         "use a smaller batch or smaller images")
    return n * c, {"POOL_H": h, "POOL_W": w, "POOL_OH": oh, "POOL_OW": ow}


def adaptive_avgpool_forward(plan, x, y):
    """y (N, C, OH, OW) = the mean of each of x's bins: output row o averages input rows
    floor(o H / OH) .. ceil((o + 1) H / OH) - 1, as torch.nn.AdaptiveAvgPool2d (likewise columns)."""
    planes, sizes = _adaptive_geometry("adaptive_avgpool_forward", x.shape, y.shape)
    k = plan.kernel(ADAPTIVE_FILE, "adaptive_avgpool_forward", **sizes)
    return plan.launch(k, (y.size,), (LOCAL,), planes, x, y)


def adaptive_avgpool_backward(plan, dy, dx):
    """dx = for each input element, the sum of dy / (bin size) over the bins that hold it."""
    planes, sizes = _adaptive_geometry("adaptive_avgpool_backward", dx.shape, dy.shape)
    k = plan.kernel(ADAPTIVE_FILE, "adaptive_avgpool_backward", **sizes)
    return plan.launch(k, (dx.size,), (LOCAL,), planes, dy, dx)
