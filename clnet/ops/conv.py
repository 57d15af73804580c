"""Launchers for the convolution's passes: `forward`, `weight_grad` and `input_grad` (each choosing
its algorithm for the device's family and the geometry), and the fused bias/activation backward.

The forward pass and the weight gradient are implicit GEMMs (operands gathered from the NCHW
tensors as the GEMM reads them). The input gradient is one implicit GEMM on the GPU family; on the
CPU family, for stride 1, the convolution of dY with the flipped weight (again a gathering GEMM),
else a GEMM into a column matrix (in chunks of images within COLUMNS) plus col2im.

The backward passes read the output gradient before the activation as `pre_activation_grad` leaves
it: on the GPU family in dY's own NCHW layout (dY itself where there is no activation: no launch,
or with a bias one that only sums it), on the CPU family transposed to (O, batch * OH * OW), whose
planes are contiguous runs of its GEMMs' rows, but for dY itself where a stride-1 convolution has
neither activation nor bias (a ResNet's: the weight gradient packs dY's runs where they lie, and the
input gradient gathers from them).

A grouped convolution runs every one of these GEMMs once for all its groups, a product per group
in one launch (the groups a dimension of the grid). A depthwise convolution (groups > 1, one input
channel per group: a GEMM with K = KH * KW) runs direct kernels of its own instead (depthwise.cl).
On the GPU family, a 3x3 stride-1 convolution may run its forward pass and input gradient as
Winograd F(2x2, 3x3) (or F(4x4, 3x3)) instead (ops/winograd.py): `winograd_tile` says when. On
either family, one of up to 32 channels may run a direct kernel (ops/direct.py), where
`direct_conv` says so."""

import os
from dataclasses import asdict, dataclass
from math import prod

from . import direct, winograd
from .elementwise import activation, slice_count, slice_totals
from .gemm import Matrix, gemm, record_gemm
from .norm import slice_rows

FILE = "conv.cl"
LOCAL = 64
COLUMNS = 16 * 2**20  # floats (64 MiB) for the column gradients of one CPU convolution, at most
SLICE_MIN = 256  # values of one channel that make a slice worth a work-group of its own
DEPTHWISE_GROUPS = 16  # work-groups per compute unit wanted for a depthwise weight gradient


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
    return max(1, min(batch, COLUMNS // (geometry.G * geometry.rows * geometry.pixels)))


def col2im(plan, geometry, images, col, dx, ldcol):
    """dx (images, C, H, W) = the gradient of im2col, gathered from col."""
    k = plan.kernel(FILE, "col2im", **geometry.defines())
    return plan.launch(k, (images * geometry.C * geometry.H,), (LOCAL,), images, ldcol, col, dx)


def pre_activation_grad(plan, geometry, act, dy, y, db, name):
    """The output gradient before the activation `act` (its options, None for none), which
    `weight_grad` and `input_grad` read, from dy and y (batch, O, OH, OW) of the convolution
    `geometry`, and the bias gradient db (unless None); `name` names a new value. On the GPU family
    in dy's layout: dy itself where there is no activation (no launch, or with a bias one that sums
    it). On the CPU family (O, batch * OH * OW), except that dy itself is read where there is neither
    activation nor bias and the convolution has stride 1 and is not depthwise (every ResNet's 3x3
    layer): `dy_in_place` tells which."""
    batch, out = dy.shape[:2]
    pixels = prod(dy.shape[2:])
    tiled = plan.device.family == "tiled"
    if act is None and db is None and (tiled or (transposed(geometry, out) and not depthwise(geometry))):
        return dy
    if tiled:
        dpre = plan.value(dy.shape, name) if act is not None else dy
    else:
        dpre = plan.value((out, batch * pixels), name)
    shape = (batch, out, pixels)
    conv_bias_act_backward(plan, act, dy.view(shape), (y if act else dy).view(shape), dpre, db)
    return dpre


def dy_in_place(plan, dpre):
    """Whether `pre_activation_grad` left the gradient in dY's own NCHW layout (always on the GPU
    family), rather than transposed to (O, batch * OH * OW)."""
    return plan.device.family == "tiled" or len(dpre.shape) == 4


def conv_bias_act_backward(plan, act, dy, y, dpre, db):
    """dpre = dy * act'(y) from dy, y (B, C, P): on the GPU family in their (B, C, P) layout, on the
    CPU family transposed to (C, B*P); db[c] = the sum of channel c of dpre (unless None). `act` is
    the activation's options (`activation(...)`), None for none.

    Each channel is split into slices whose partial sums are added in a fixed order. On the GPU
    family a slice is a work-group of LOCAL work-items, and there are enough to give every compute
    unit work; on the CPU family a slice is a work-item's block of whole rows (planes of P
    contiguous values, `slice_rows`), whose sums run in vector lanes."""
    batch, channels, pixels = dy.shape
    options = {**(act or activation()), "HAS_BIAS": db is not None, "CONV_P": pixels}
    if plan.device.family == "tiled":
        slices = slice_count(plan, channels, batch * pixels, SLICE_MIN)
        k = plan.kernel(FILE, "conv_bias_act_backward", **options, CONV_WG=LOCAL)
        size, local = (channels * LOCAL, slices), (LOCAL, 1)
    else:
        rows = slice_rows(pixels)
        slices = -(-batch // rows)
        k = plan.kernel(FILE, "conv_bias_act_backward_rows", **options, CONV_ROWS=rows)
        size, local = (slices, channels), (1, 1)
    sums = db if db is None or slices == 1 else plan.value((slices, channels), "bias gradient slices")
    launch = plan.launch(k, size, local, batch, channels, dy, y, dpre, sums if sums is not None else dpre)
    return launch if sums is db else slice_totals(plan, sums, slices, channels, db)


# Implicit convolution: each product below is one GEMM that gathers its operand from the NCHW
# tensors (CONV_B, CONV_DX in gemm_common.h), with no column matrix stored whole: gemm_tiled (the GPU
# family) as it loads its tiles, gemm_packed (the CPU family) as it copies B into panels.

def _implicit(geometry, **defines):
    fixed = dict(TRANS_A=0, TRANS_B=0, HAS_BIAS=False, ACT=0, BIAS_PER_ROW=False)
    return {**fixed, **defines, **geometry.defines()}


def _kernel(plan):
    return "gemm_tiled" if plan.device.family == "tiled" else "gemm_packed"


def depthwise(geometry):
    """Whether a convolution runs the depthwise kernels: groups > 1 of one input channel each."""
    return geometry.G > 1 and geometry.C == geometry.G


def forward(plan, geometry, batch, x, weight, y, bias, act):
    """y (batch, O, OH, OW) = act(weight . cols(x) + bias), weight viewed as (O, C/G*KH*KW) (group g's
    outputs reading its own input channels); `act` is the activation's options (`activation(...)`),
    None for none."""
    if depthwise(geometry):
        return depthwise_forward(plan, geometry, batch, x, weight, y, bias, act)
    tile = winograd_tile(plan, geometry, weight.shape[0])
    if tile:
        return winograd.forward(plan, geometry, batch, x, weight, y, bias, act, tile)
    if direct_conv(plan, geometry, weight.shape[0]):
        return direct.forward(plan, geometry, batch, x, weight, y, bias, act)
    g, out = geometry, weight.shape[0]
    columns, o = batch * g.pixels, out // g.G  # o: the outputs of a group
    defines = _implicit(g, CONV_B=True, HAS_BIAS=bias is not None, BIAS_PER_ROW=True, **(act or {}))
    y_matrix = Matrix(y, o, columns, ld=out * g.pixels, image_cols=g.pixels)
    return record_gemm(plan, _kernel(plan), defines, (o, columns, g.rows),
                       Matrix(weight, o, g.rows, group_stride=o * g.rows),
                       Matrix(x, g.rows, columns, ld=0, group_stride=g.C // g.G * g.H * g.W), y_matrix, bias,
                       groups=g.G)


def weight_grad(plan, geometry, batch, dpre, x, dweight):
    """dweight (O, C/G*KH*KW) = dpre . cols(x)^T per group, dpre (as `pre_activation_grad` leaves it)
    read as the (O, batch*OH*OW) matrix: on the GPU family in dY's NCHW layout, in place."""
    if depthwise(geometry):
        return depthwise_weight_grad(plan, geometry, batch, dpre, x, dweight)
    g, out = geometry, dweight.shape[0]
    columns, o = batch * g.pixels, out // g.G
    if dy_in_place(plan, dpre):
        a = _output_grad_matrix(geometry, batch, dpre, out)
    else:
        a = Matrix(dpre, o, columns, group_stride=o * columns)
    return record_gemm(plan, _kernel(plan), _implicit(g, CONV_B=True, TRANS_B=1), (o, g.rows, columns), a,
                       Matrix(x, g.rows, columns, ld=0, group_stride=g.C // g.G * g.H * g.W),
                       Matrix(dweight, o, g.rows), groups=g.G)


def _output_grad_matrix(geometry, batch, dy, out):
    """A group's (O/G, batch*OH*OW) matrix of the output gradient dy (batch, O, OH, OW), read in
    place: column (image, pixel) of row o at dy[image, o, pixel] (`Matrix.image_cols`)."""
    o, pixels = out // geometry.G, geometry.pixels
    return Matrix(dy, o, batch * pixels, ld=out * pixels, image_cols=pixels, group_stride=o * pixels)


def input_grad(plan, geometry, batch, weight, dpre, dx):
    """dx (batch, C, H, W) from the weight (O, C/G*KH*KW) and dpre (as `pre_activation_grad` leaves
    it), by the algorithm of the device's family and the geometry (see the module's docstring)."""
    if depthwise(geometry):
        return depthwise_input_grad(plan, geometry, batch, weight, dpre, dx)
    t = transposed(geometry, weight.shape[0])
    tile = winograd_tile(plan, t, geometry.C) if t else None
    if tile:  # the GPU family's: dpre in dY's layout
        return winograd.input_grad(plan, geometry, t, batch, weight, dpre, dx, tile)
    if t and direct_conv(plan, t, geometry.C):
        return direct.input_grad(plan, t, batch, weight, dpre, dx, dy_in_place(plan, dpre))
    if plan.device.family == "tiled":
        return _tiled_input_grad(plan, geometry, batch, weight, dpre, dx)
    if t:  # stride 1: a convolution of dpre
        return _gathered_input_grad(plan, geometry, batch, weight, dpre, dx, dy_in_place(plan, dpre))
    return _col2im_input_grad(plan, geometry, batch, weight, dpre, dx)


# Winograd F(m x m, 3x3) (ops/winograd.py): which convolutions run it, and m.

WINOGRAD = True  # the default where CLNET_WINOGRAD is unset (its "1" when True, "0" when False)
WINOGRAD_TILE = 2  # m where CLNET_WINOGRAD_TILE is unset: F(2x2, 3x3), the more accurate
WINOGRAD_CHANNELS = 64  # input and output channels at least, for CLNET_WINOGRAD=1. F(2x2) moves
# about 16 x max(C, O) floats per output pixel through memory (the input tiles, 4x the input, written
# and read; the products, 4x the output, likewise) to save 5 of the 9 multiply-adds per output pixel
# and pair of channels (16 for a 2x2 tile where the direct convolution has 36), so it wins the more
# the more channels there are. On an H100 (2026-12-07), for every layer of 32 channels or more:
# resnet18-cifar (64-512 channels) trained 16-19% faster at batch 128 and 512, resnet20 (32, 64) and
# cifar-cnn (32, 64) about as fast, mnist-cnn (32 to 64 channels, batch 1024) 8% slower.


def winograd_tile(plan, geometry, out_channels):
    """The output tile's side m of the Winograd F(m x m, 3x3) that the convolution `geometry` (to
    `out_channels`) runs as, or None for none: on the GPU family, for a geometry `winograd.fits`,
    as CLNET_WINOGRAD says: "0" never, "1" where both channel counts are at least
    WINOGRAD_CHANNELS, "all" whatever the channels (the tests' way of forcing it onto small layers);
    unset, as "1" if WINOGRAD else "0". m is CLNET_WINOGRAD_TILE (2 or 4), else WINOGRAD_TILE."""
    mode = os.environ.get("CLNET_WINOGRAD") or ("1" if WINOGRAD else "0")
    if mode not in ("0", "1", "all"):
        raise ValueError(f"CLNET_WINOGRAD must be 0, 1 or all, not {mode!r}")
    tile = os.environ.get("CLNET_WINOGRAD_TILE") or str(WINOGRAD_TILE)
    if tile not in map(str, winograd.TILES):
        raise ValueError(f"CLNET_WINOGRAD_TILE must be {' or '.join(map(str, winograd.TILES))}, not {tile!r}")
    if mode == "0" or plan.device.family != "tiled" or not winograd.fits(geometry):
        return None
    return int(tile) if mode == "all" or min(geometry.C, out_channels) >= WINOGRAD_CHANNELS else None


def direct_conv(plan, geometry, out_channels):
    """Whether the convolution `geometry` (to `out_channels`) runs the direct kernel of the device's
    family (ops/direct.py), for a geometry it fits (3x3, stride 1, up to 32 channels), unless
    CLNET_DIRECT_CONV is "0" (then as implicit GEMMs). On an H100 it trained resnet20 at batch 1024
    20% faster and cifar-cnn at batch 128 12% faster than the GEMMs it replaces."""
    mode = os.environ.get("CLNET_DIRECT_CONV") or "1"
    if mode not in ("0", "1"):
        raise ValueError(f"CLNET_DIRECT_CONV must be 0 or 1, not {mode!r}")
    return mode == "1" and direct.fits(geometry, out_channels, plan.device.family)


def transposed(geometry, out_channels):
    """For a convolution of stride 1, the geometry of its input gradient as a convolution of dY
    (out_channels, OH, OW) with the flipped weight: output pixel (ih, iw) reads dY at
    (ih + PH - kh*DH, iw + PW - kw*DW) through tap (KH-1-kh, KW-1-kw). None for other strides, and
    for padding beyond the kernel's reach."""
    g = geometry
    ph, pw = g.dh * (g.KH - 1) - g.ph, g.dw * (g.KW - 1) - g.pw
    if (g.sh, g.sw) != (1, 1) or min(ph, pw) < 0:
        return None
    return ConvGeometry(out_channels, g.OH, g.OW, g.KH, g.KW, g.H, g.W, 1, 1, ph, pw, g.dh, g.dw, g.G)


def _gathered_input_grad(plan, geometry, batch, weight, dpre, dx, in_place):
    """The CPU family's input gradient where `transposed` gives a geometry: dx (batch, C, H, W), the
    convolution of dpre (O, batch*OH*OW), or dY (batch, O, OH, OW) itself where `in_place`, with the
    weight (O, C/G*KH*KW) flipped, as one GEMM per group that gathers its panels from it."""
    g = geometry
    t = transposed(g, weight.shape[0])
    columns, c, o = batch * g.H * g.W, g.C // g.G, weight.shape[0] // g.G
    # dY's images and channels: NCHW (the gather's default), or channels each holding every image
    strides = {} if in_place else {"CONV_IMAGE_STRIDE": g.pixels, "CONV_CHANNEL_STRIDE": batch * g.pixels}
    defines = _implicit(t, CONV_B=True, CONV_FLIP=g.KH * g.KW, **strides)
    dx_matrix = Matrix(dx, c, columns, ld=g.C * g.H * g.W, image_cols=g.H * g.W)
    group = o * g.pixels * (1 if in_place else batch)
    return record_gemm(plan, "gemm_packed", defines, (c, columns, t.rows),
                       Matrix(weight, c, t.rows, ld=0, group_stride=o * g.rows),
                       Matrix(dpre, t.rows, columns, ld=0, group_stride=group), dx_matrix, groups=g.G)


def _tiled_input_grad(plan, geometry, batch, weight, dpre, dx):
    """dx (batch, C, H, W) from the weight (O, C/G*KH*KW) and dpre (batch, O, OH, OW): for every input
    pixel, the sum over the output pixels and taps (of its group) that read it (gemm_tiled only)."""
    g, o = geometry, weight.shape[0] // geometry.G
    columns, taps, c = batch * g.H * g.W, o * g.KH * g.KW, g.C // g.G
    dx_matrix = Matrix(dx, c, columns, ld=g.C * g.H * g.W, image_cols=g.H * g.W)
    return record_gemm(plan, "gemm_tiled", _implicit(g, CONV_DX=True), (c, columns, taps),
                       Matrix(weight, c, taps, ld=0, group_stride=o * g.rows),
                       _output_grad_matrix(g, batch, dpre, weight.shape[0]), dx_matrix, groups=g.G)


def _col2im_input_grad(plan, geometry, batch, weight, dpre, dx):
    """The CPU family's input gradient for other strides: dcol = weight^T . dpre (per group, the
    groups' rows one after another) in chunks of images within the column budget, each folded back
    into dx by col2im."""
    g, out = geometry, weight.shape[0]
    pixels, o = batch * g.pixels, out // g.G
    per = images_per_chunk(g, batch)
    dcol = plan.value((g.G * g.rows, per * g.pixels), "convolution column grads")
    image = g.C * g.H * g.W
    for start in range(0, batch, per):
        images = min(per, batch - start)
        chunk = Matrix(dpre.view((out, pixels - start * g.pixels), start * g.pixels), o, images * g.pixels,
                       ld=pixels, group_stride=o * pixels)
        gemm(plan, Matrix(weight, o, g.rows, group_stride=o * g.rows), chunk,
             Matrix(dcol, g.rows, images * g.pixels, ld=per * g.pixels), trans_a=True, groups=g.G)
        launch = col2im(plan, g, images, dcol, dx.view((images, g.C, g.H, g.W), start * image), per * g.pixels)
    return launch


# Depthwise convolution: output channel o reads input channel o // (O / C) alone, K = KH * KW.

DEPTHWISE_FILE = "depthwise.cl"


def _depthwise_defines(plan, geometry, out):
    return {**geometry.defines(), "DW_MULT": out // geometry.C, "DW_CPU": plan.device.family != "tiled"}


def depthwise_forward(plan, geometry, batch, x, weight, y, bias, act):
    """y (batch, O, OH, OW) = act(bias + the depthwise convolution of x (batch, C, H, W)), weight (O, KH*KW)."""
    g, out = geometry, weight.shape[0]
    k = plan.kernel(DEPTHWISE_FILE, "depthwise_forward", **_depthwise_defines(plan, g, out),
                    HAS_BIAS=bias is not None, **(act or activation()))
    planes = batch * out
    if plan.device.family == "tiled":  # an output a work-item
        size, local = (planes * g.pixels,), (LOCAL,)
    else:  # an output plane a work-item
        size, local = (planes,), (1,)
    return plan.launch(k, size, local, batch, x, weight, bias if bias is not None else weight, y)


def depthwise_input_grad(plan, geometry, batch, weight, dpre, dx):
    """dx (batch, C, H, W) from the weight (O, KH*KW) and dpre (as `pre_activation_grad` leaves it):
    for every input pixel, the sum over its channel's outputs and the taps that read it."""
    g, out = geometry, weight.shape[0]
    k = plan.kernel(DEPTHWISE_FILE, "depthwise_input_grad", **_depthwise_defines(plan, g, out))
    planes = batch * g.C
    if plan.device.family == "tiled":
        size, local = (planes * g.H * g.W,), (LOCAL,)
    else:
        size, local = (planes,), (1,)
    return plan.launch(k, size, local, batch, weight, dpre, dx)


def depthwise_weight_grad(plan, geometry, batch, dpre, x, dweight):
    """dweight (O, KH*KW): for each output channel and tap, the sum over the batch's output pixels
    of dpre (as `pre_activation_grad` leaves it) times the input the tap read. Each channel is split
    into slices, as in `conv_bias_act_backward`, whose partial sums sum_slices adds in a fixed order."""
    g, out = geometry, dweight.shape[0]
    taps, n = g.KH * g.KW, batch * g.pixels
    slices = slice_count(plan, out, n, SLICE_MIN, DEPTHWISE_GROUPS)
    sums = dweight if slices == 1 else plan.value((slices, out, taps), "depthwise weight gradient slices")
    group = LOCAL if plan.device.family == "tiled" else 1
    while group > 1 and group * taps * 4 > plan.device.info.local_mem // 2:  # large kernels: the taps' sums
        group //= 2
    k = plan.kernel(DEPTHWISE_FILE, "depthwise_weight_grad", **_depthwise_defines(plan, g, out), DW_WG=group)
    launch = plan.launch(k, (out * group, slices), (group, 1), batch, dpre, x, sums)
    return launch if slices == 1 else slice_totals(plan, sums, slices, out * taps, dweight)
