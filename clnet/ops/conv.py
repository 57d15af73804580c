"""Launchers for the convolution's passes: `forward`, `weight_grad` and `input_grad` (each choosing
its algorithm for the device's family and the geometry), and the fused bias/activation backward.

The forward pass and the weight gradient are implicit GEMMs (operands gathered from the NCHW
tensors as the GEMM reads them). The input gradient is one implicit GEMM on the GPU family; on the
CPU family, for stride 1, the convolution of dY with the flipped weight (again a gathering GEMM),
else a GEMM into a column matrix (in chunks of images within COLUMNS) plus col2im."""

from dataclasses import asdict, dataclass

from .elementwise import activation
from .gemm import SUM_SLICES_FILE, Matrix, gemm, record_gemm

FILE = "conv.cl"
LOCAL = 64
COLUMNS = 16 * 2**20  # floats (64 MiB) for the column gradients of one CPU convolution, at most
SLICE_MIN = 256  # values of one channel that make a slice worth a work-group of its own


@dataclass(frozen=True)
class ConvGeometry:
    """Input (C, H, W), kernel, output size, stride, top/left padding, dilation and groups (G), as
    kernels take them. C counts all the input channels; each group reads C / G of them."""
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
    G: int = 1

    @property
    def rows(self):
        """Rows of a group's column matrix (K of its GEMMs): one per (channel of the group, kernel
        row, kernel column)."""
        return self.C // self.G * self.KH * self.KW

    @property
    def pixels(self):
        return self.OH * self.OW

    def defines(self):
        """The geometry as the kernels' compile-time constants CONV_C, CONV_H, ... CONV_DW."""
        return {f"CONV_{name.upper()}": value for name, value in asdict(self).items()}


def images_per_chunk(geometry, batch):
    """How many images' column gradients one matrix holds, so that it stays within COLUMNS floats."""
    return max(1, min(batch, COLUMNS // (geometry.rows * geometry.pixels)))


def col2im(plan, geometry, images, col, dx, ldcol):
    """dx (images, C, H, W) = the gradient of im2col, gathered from col."""
    k = plan.kernel(FILE, "col2im", **geometry.defines())
    return plan.launch(k, (images * geometry.C * geometry.H,), (LOCAL,), images, ldcol, col, dx)


def conv_bias_act_backward(plan, act, dy, y, dpre, db):
    """dpre (C, B*P) = dy * act'(y) from dy, y (B, C, P); db[c] = sum of dpre's row c (unless None).
    `act` is the activation's options (`activation(...)`), None for none.

    Each channel is split into enough slices to give every compute unit work; their partial sums
    are added in a fixed order. A slice is a work-group of LOCAL work-items on the GPU family, of
    one on the CPU family, which then reads its slice in order instead of in LOCAL strided passes."""
    batch, channels, pixels = dy.shape
    slices = max(1, min(-(-4 * plan.device.info.compute_units // channels), batch * pixels // SLICE_MIN))
    sums = db if db is None or slices == 1 else plan.value((slices, channels), "bias gradient slices")
    group = LOCAL if plan.device.family == "tiled" else 1
    k = plan.kernel(FILE, "conv_bias_act_backward", **(act or activation()), HAS_BIAS=db is not None, CONV_WG=group,
                    CONV_P=pixels)
    launch = plan.launch(k, (channels * group, slices), (group, 1), batch, channels, dy, y, dpre,
                         sums if sums is not None else dpre)
    if sums is db:
        return launch
    total = plan.kernel(SUM_SLICES_FILE, "sum_slices")
    return plan.launch(total, (channels,), (LOCAL,), 1, channels, slices, sums, db, channels, db)


# Implicit convolution: each product below is one GEMM that gathers its operand from the NCHW
# tensors (CONV_B, CONV_DX in gemm_common.h), with no column matrix stored whole: gemm_tiled (the GPU
# family) as it loads its tiles, gemm_packed (the CPU family) as it copies B into panels.

def _implicit(geometry, **defines):
    fixed = dict(TRANS_A=0, TRANS_B=0, HAS_BIAS=False, ACT=0, BIAS_PER_ROW=False)
    return {**fixed, **defines, **geometry.defines()}


def _kernel(plan):
    return "gemm_tiled" if plan.device.family == "tiled" else "gemm_packed"


def forward(plan, geometry, batch, x, weight, y, bias, act):
    """y (batch, O, OH, OW) = act(weight . cols(x) + bias), weight viewed as (O, C*KH*KW); `act` is
    the activation's options (`activation(...)`), None for none."""
    g, out = geometry, weight.shape[0]
    columns = batch * g.pixels
    defines = _implicit(g, CONV_B=True, HAS_BIAS=bias is not None, BIAS_PER_ROW=True, **(act or {}))
    y_matrix = Matrix(y, out, columns, ld=out * g.pixels, image_cols=g.pixels)
    return record_gemm(plan, _kernel(plan), defines, (out, columns, g.rows), Matrix(weight, out, g.rows),
                       Matrix(x, g.rows, columns, ld=0), y_matrix, bias)


def weight_grad(plan, geometry, batch, dpre, x, dweight):
    """dweight (O, C*KH*KW) = dpre . cols(x)^T, dpre being (O, batch*OH*OW)."""
    g, out = geometry, dpre.shape[0]
    columns = batch * g.pixels
    return record_gemm(plan, _kernel(plan), _implicit(g, CONV_B=True, TRANS_B=1), (out, g.rows, columns),
                       Matrix(dpre, out, columns), Matrix(x, g.rows, columns, ld=0), Matrix(dweight, out, g.rows))


def input_grad(plan, geometry, batch, weight, dpre, dx):
    """dx (batch, C, H, W) from the weight (O, C*KH*KW) and dpre (O, batch*OH*OW), by the algorithm
    of the device's family and the geometry (see the module's docstring)."""
    if plan.device.family == "tiled":
        return _tiled_input_grad(plan, geometry, batch, weight, dpre, dx)
    if transposed(geometry, weight.shape[0]):  # stride 1: a convolution of dpre
        return _gathered_input_grad(plan, geometry, batch, weight, dpre, dx)
    return _col2im_input_grad(plan, geometry, batch, weight, dpre, dx)


def transposed(geometry, out_channels):
    """For a convolution of stride 1, the geometry of its input gradient as a convolution of dY
    (out_channels, OH, OW) with the flipped weight: output pixel (ih, iw) reads dY at
    (ih + PH - kh*DH, iw + PW - kw*DW) through tap (KH-1-kh, KW-1-kw). None for other strides, and
    for padding beyond the kernel's reach."""
    g = geometry
    ph, pw = g.dh * (g.KH - 1) - g.ph, g.dw * (g.KW - 1) - g.pw
    if (g.sh, g.sw) != (1, 1) or min(ph, pw) < 0:
        return None
    return ConvGeometry(out_channels, g.OH, g.OW, g.KH, g.KW, g.H, g.W, 1, 1, ph, pw, g.dh, g.dw)


def _gathered_input_grad(plan, geometry, batch, weight, dpre, dx):
    """The CPU family's input gradient where `transposed` gives a geometry: dx (batch, C, H, W), the
    convolution of dpre (O, batch*OH*OW) with the weight (O, C*KH*KW) flipped, as one GEMM that
    gathers its panels from dpre."""
    g = geometry
    t = transposed(g, weight.shape[0])
    columns = batch * g.H * g.W
    defines = _implicit(t, CONV_B=True, CONV_FLIP=g.KH * g.KW, CONV_IMAGE_STRIDE=g.pixels,
                        CONV_CHANNEL_STRIDE=batch * g.pixels)
    dx_matrix = Matrix(dx, g.C, columns, ld=g.C * g.H * g.W, image_cols=g.H * g.W)
    return record_gemm(plan, "gemm_packed", defines, (g.C, columns, t.rows), Matrix(weight, g.C, t.rows, ld=0),
                       Matrix(dpre, t.rows, columns, ld=0), dx_matrix)


def _tiled_input_grad(plan, geometry, batch, weight, dpre, dx):
    """dx (batch, C, H, W) from the weight (O, C*KH*KW) and dpre (O, batch*OH*OW): for every input
    pixel, the sum over the output pixels and taps that read it (gemm_tiled only)."""
    g, out = geometry, weight.shape[0]
    columns, taps = batch * g.H * g.W, out * g.KH * g.KW
    dx_matrix = Matrix(dx, g.C, columns, ld=g.C * g.H * g.W, image_cols=g.H * g.W)
    return record_gemm(plan, "gemm_tiled", _implicit(g, CONV_DX=True), (g.C, columns, taps),
                       Matrix(weight, g.C, taps, ld=0), Matrix(dpre, taps, batch * g.pixels, ld=batch * g.pixels),
                       dx_matrix)


def _col2im_input_grad(plan, geometry, batch, weight, dpre, dx):
    """The CPU family's input gradient for other strides: dcol = weight^T . dpre in chunks of images
    within the column budget, each folded back into dx by col2im."""
    g, out = geometry, weight.shape[0]
    pixels = batch * g.pixels
    per = images_per_chunk(g, batch)
    dcol = plan.value((g.rows, per * g.pixels), "convolution column grads")
    image = g.C * g.H * g.W
    for start in range(0, batch, per):
        images = min(per, batch - start)
        chunk = Matrix(dpre.view((out, pixels - start * g.pixels), start * g.pixels), out, images * g.pixels,
                       ld=pixels)
        gemm(plan, weight, chunk, Matrix(dcol, g.rows, images * g.pixels, ld=per * g.pixels), trans_a=True)
        launch = col2im(plan, g, images, dcol, dx.view((images, g.C, g.H, g.W), start * image), per * g.pixels)
    return launch
