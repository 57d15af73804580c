"""Launchers for the convolution's im2col, col2im and fused bias/activation backward."""

from dataclasses import astuple, dataclass

from .gemm import family

FILE = "conv.cl"
LOCAL = 64
COLUMNS = 16 * 2**20  # floats (64 MiB) for the im2col matrices of one convolution, at most
SLICE_MIN = 256  # values of one channel that make a slice worth a work-group of its own


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


def _per_pixel(device):
    """The GPU kernel family takes a work-item per pixel (coalesced), the CPU family one per row of
    pixels (less index arithmetic); CLNET_GEMM chooses for both."""
    return family(device) == "tiled"


def im2col(plan, geometry, images, x, col, ldcol):
    """col[(c, kh, kw), (image, oh, ow)] from `images` images of x."""
    per_pixel = _per_pixel(plan.device)
    k = plan.kernel(FILE, "im2col", PER_PIXEL=per_pixel)
    rows = images * geometry.OH * (geometry.OW if per_pixel else 1)
    return plan.launch(k, (rows, geometry.rows), (LOCAL, 1), images, *astuple(geometry), ldcol, x, col)


def col2im(plan, geometry, images, col, dx, ldcol):
    """dx (images, C, H, W) = the gradient of im2col, gathered from col."""
    per_pixel = _per_pixel(plan.device)
    k = plan.kernel(FILE, "col2im", PER_PIXEL=per_pixel)
    rows = images * geometry.C * geometry.H * (geometry.W if per_pixel else 1)
    return plan.launch(k, (rows,), (LOCAL,), images, *astuple(geometry), ldcol, col, dx)


def conv_bias_act_backward(plan, act_code, dy, y, dpre, db):
    """dpre (C, B*P) = dy * act'(y) from dy, y (B, C, P); db[c] = sum of dpre's row c (unless None).

    Each channel is split into enough slices to give every compute unit work; their partial sums
    are added in a fixed order."""
    batch, channels, pixels = dy.shape
    slices = max(1, min(-(-4 * plan.device.info.compute_units // channels), batch * pixels // SLICE_MIN))
    sums = db if db is None or slices == 1 else plan.value((slices, channels), "bias gradient slices")
    k = plan.kernel(FILE, "conv_bias_act_backward", ACT=act_code, HAS_BIAS=db is not None, CONV_WG=LOCAL)
    launch = plan.launch(k, (channels * LOCAL, slices), (LOCAL, 1), batch, channels, pixels, dy, y, dpre,
                         sums if sums is not None else dpre)
    if sums is db:
        return launch
    total = plan.kernel("gemm.cl", "sum_slices", ACCUMULATE=False)
    return plan.launch(total, (channels,), (LOCAL,), 1, channels, slices, sums, db, channels)
