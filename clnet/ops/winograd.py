"""Winograd F(2x2, 3x3) convolutions (winograd.cl): the forward pass and the input gradient of a 3x3
stride-1 convolution as a weight transform, an input transform, the 16 products of the transformed
operands in one grouped GEMM (tuned by clnet-tune as any GEMM: layout "NN+g16") and an output
transform that adds the bias and applies the activation. `ops.conv` chooses when they run.

Every transformed operand is a plan value: U (16, O, C), V (16, C, tiles) and M (16, O, tiles)
with tiles = batch * ceil(OH / 2) * ceil(OW / 2), so V and M each hold about 4x the input and the
output; the weights are transformed at every step, as they train."""

from .elementwise import activation
from .gemm import Matrix, gemm

FILE = "winograd.cl"
LOCAL = 64
TILE = 2       # output pixels per tile side: F(2x2, 3x3)
ELEMENTS = 16  # (TILE + 2)^2 elements of a transformed tile: the GEMM's groups


def fits(geometry):
    """Whether a convolution's geometry is one these kernels compute: 3x3, stride 1, dilation 1, one
    group (any padding, any size)."""
    g = geometry
    return (g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.G) == (3, 3, 1, 1, 1, 1, 1)


def forward(plan, geometry, batch, x, weight, y, bias, act):
    """y (batch, O, OH, OW) = act(the convolution of x (batch, C, H, W) NCHW + bias), weight (O, C*9)
    as stored; `act` is the activation's options (`activation(...)`), None for none."""
    out, g = weight.shape[0], geometry
    u = plan.value((ELEMENTS, out, g.C), "winograd weights")
    _weights(plan, weight, out, g.C, u, flip=False)
    return _convolve(plan, g, batch, x, (g.C * g.H * g.W, g.H * g.W), u, out, y, bias, act)


def input_grad(plan, geometry, transposed, batch, weight, dy, dx, image_stride, channel_stride):
    """dx (batch, C, H, W) NCHW of a convolution `geometry` (3x3, stride 1), as the convolution
    `transposed` (`ops.conv.transposed`: padding 2 - the forward's) of dY (O channels of OH x OW, an
    image every `image_stride` elements, a channel every `channel_stride`) with the weight (O, C*9)
    flipped and its in and out swapped."""
    out, g = weight.shape[0], geometry
    u = plan.value((ELEMENTS, g.C, out), "winograd weights (input gradient)")
    _weights(plan, weight, out, g.C, u, flip=True)
    return _convolve(plan, transposed, batch, dy, (image_stride, channel_stride), u, g.C, dx, None, None)


def _weights(plan, weight, out, channels, u, flip):
    """u = the transformed weight, (16, out, channels), or with `flip` the input gradient's (16,
    channels, out)."""
    k = plan.kernel(FILE, "winograd_weights", WINO_O=out, WINO_C=channels, WINO_FLIP=flip)
    return plan.launch(k, (out * channels,), (LOCAL,), weight, u)


def _convolve(plan, geometry, batch, x, strides, u, out, y, bias, act):
    """y (batch, out, OH, OW) NCHW = act(bias + the convolution `geometry` of x, whose images and
    channels lie `strides` apart, with the transformed weight u (16, out, C)): the input transform,
    the grouped GEMM, the output transform."""
    g = geometry
    th, tw = -(-g.OH // TILE), -(-g.OW // TILE)  # tiles per image
    n = batch * th * tw
    v = plan.value((ELEMENTS, g.C, n), "winograd input tiles")
    image_stride, channel_stride = strides
    k = plan.kernel(FILE, "winograd_input", WINO_C=g.C, WINO_H=g.H, WINO_W=g.W, WINO_PH=g.ph, WINO_PW=g.pw,
                    WINO_TH=th, WINO_TW=tw, WINO_IMAGE_STRIDE=image_stride,
                    WINO_CHANNEL_STRIDE=channel_stride)
    plan.launch(k, (g.C * n,), (LOCAL,), batch, x, v)
    m = plan.value((ELEMENTS, out, n), "winograd products")
    gemm(plan, Matrix(u, out, g.C, group_stride=out * g.C), Matrix(v, g.C, n, group_stride=g.C * n),
         Matrix(m, out, n), groups=ELEMENTS)
    k = plan.kernel(FILE, "winograd_output", WINO_O=out, WINO_OH=g.OH, WINO_OW=g.OW, WINO_TH=th,
                    WINO_TW=tw, HAS_BIAS=bias is not None, **(act or activation()))
    return plan.launch(k, (out * n,), (LOCAL,), batch, m, bias if bias is not None else m, y)
