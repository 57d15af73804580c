"""Launchers for the convolution's im2col, col2im and fused bias/activation backward."""

from dataclasses import astuple, dataclass

FILE = "conv.cl"
LOCAL = 64
COLUMNS = 16 * 2**20  # floats (64 MiB) for the im2col matrices of one convolution, at most


@dataclass(frozen=True)
class ConvGeometry:
    """Input (C, H, W), kernel, output size, stride, top/left padding and dilation, as kernels take them."""
    C: int
    H: int
    W: int
    KH: int
    KW: int
    OH: int
    OW: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int

    @property
    def rows(self):
        """Rows of the column matrix: one per (channel, kernel row, kernel column)."""
        return self.C * self.KH * self.KW

    @property
    def pixels(self):
        return self.OH * self.OW


def images_per_chunk(geometry, batch):
    """How many images' columns one im2col matrix holds, so that it stays within COLUMNS floats."""
    return max(1, min(batch, COLUMNS // (geometry.rows * geometry.pixels)))


def im2col(plan, geometry, images, x, col, ldcol):
    """col[(c, kh, kw), (image, oh, ow)] from `images` images of x."""
    k = plan.kernel(FILE, "im2col")
    return plan.launch(k, (images * geometry.OH, geometry.rows), (LOCAL, 1),
                       images, *astuple(geometry), ldcol, x, col)


def col2im(plan, geometry, images, col, dx, ldcol):
    """dx (images, C, H, W) = the gradient of im2col, gathered from col."""
    k = plan.kernel(FILE, "col2im")
    rows = images * geometry.C * geometry.H
    return plan.launch(k, (rows,), (LOCAL,), images, *astuple(geometry), ldcol, col, dx)


def conv_bias_act_backward(plan, act_code, dy, y, dpre, db):
    """dpre (C, B*P) = dy * act'(y) from dy, y (B, C, P); db[c] = sum of dpre's row c (unless None)."""
    batch, channels, pixels = dy.shape
    k = plan.kernel(FILE, "conv_bias_act_backward", ACT=act_code, HAS_BIAS=db is not None, CONV_WG=LOCAL)
    return plan.launch(k, (channels * LOCAL,), (LOCAL,), batch, channels, pixels, dy, y, dpre,
                       db if db is not None else dpre)
