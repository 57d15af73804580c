"""Winograd F(m x m, 3x3) convolutions, m (the output tile's side) 2 or 4 (winograd.cl): the forward
pass and the input gradient of a 3x3 stride-1 convolution as a weight transform, an input
transform, the n^2 products of the transformed operands (n = m + 2) in one grouped GEMM (tuned by
clnet-tune as any GEMM: layout "NN+g16" or "NN+g36") and an output transform that adds the bias and
applies the activation. `ops.conv` chooses when they run, and m.

Every transformed operand is a plan value: U (n^2, O, C), V (n^2, C, tiles) and M (n^2, O, tiles)
with tiles = batch * ceil(OH / m) * ceil(OW / m), so V and M each hold about (n / m)^2 times the
input and the output (4x for F(2x2), 2.25x for F(4x4)), up to CHUNK elements; the weights are
transformed at every step, as they train."""

from .elementwise import activation
from .gemm import Matrix, gemm

FILE = "winograd.cl"
LOCAL = 64
TILES = (2, 4)  # the output tiles' sides the kernels have transforms for
CHUNK = 2**26   # elements of V or of M at most (256 MiB): a larger batch runs in chunks of images,
                # which still give the GEMM a wide N (VGG's first layers at 224 x 224: 5 images, 62,720
                # F(2x2) tiles)


def fits(geometry):
    """Whether a convolution's geometry is one these kernels compute: 3x3, stride 1, dilation 1, one
    group (any padding, any size)."""
    g = geometry
    return (g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.G) == (3, 3, 1, 1, 1, 1, 1)


def forward(plan, geometry, batch, x, weight, y, bias, act, tile):
    """y (batch, O, OH, OW) = act(the convolution of x (batch, C, H, W) NCHW + bias), weight (O, C*9)
    as stored, by F(tile x tile, 3x3); `act` is the activation's options (`activation(...)`), None
    for none."""
    out, g = weight.shape[0], geometry
    u = plan.value(((tile + 2) ** 2, out, g.C), "winograd weights")
    _weights(plan, tile, weight, out, g.C, u, flip=False)
    return _convolve(plan, tile, g, batch, x, u, out, y, bias, act)


def input_grad(plan, geometry, transposed, batch, weight, dy, dx, tile):
    """dx (batch, C, H, W) NCHW of a convolution `geometry` (3x3, stride 1), as the convolution
    `transposed` (`ops.conv.transposed`: padding 2 - the forward's) of dY (batch, O, OH, OW) NCHW
    with the weight (O, C*9) flipped and its in and out swapped, by F(tile x tile, 3x3)."""
    out, g = weight.shape[0], geometry
    u = plan.value(((tile + 2) ** 2, g.C, out), "winograd weights (input gradient)")
    _weights(plan, tile, weight, out, g.C, u, flip=True)
    return _convolve(plan, tile, transposed, batch, dy, u, g.C, dx, None, None)


def _weights(plan, tile, weight, out, channels, u, flip):
    """u = the transformed weight, (n^2, out, channels), or with `flip` the input gradient's (n^2,
    channels, out)."""
    k = plan.kernel(FILE, "winograd_weights", WINO_TILE=tile, WINO_O=out, WINO_C=channels, WINO_FLIP=flip)
    return plan.launch(k, (out * channels,), (LOCAL,), weight, u)


def _convolve(plan, tile, geometry, batch, x, u, out, y, bias, act):
    """y (batch, out, OH, OW) NCHW = act(bias + the convolution `geometry` of x (batch, C, H, W)
    NCHW, with the transformed weight u (n^2, out, C)): the input transform, the grouped GEMM and
    the output transform of each chunk of images (all of them, unless V or M would exceed CHUNK)."""
    g, elements = geometry, (tile + 2) ** 2
    th, tw = -(-g.OH // tile), -(-g.OW // tile)  # tiles per image
    per = max(1, min(batch, CHUNK // (elements * max(g.C, out) * th * tw)))  # images per chunk
    v = plan.value((elements, g.C, per * th * tw), "winograd input tiles")
    m = plan.value((elements, out, per * th * tw), "winograd products")
    input_options = dict(WINO_TILE=tile, WINO_C=g.C, WINO_H=g.H, WINO_W=g.W, WINO_PH=g.ph, WINO_PW=g.pw, WINO_TH=th,
                         WINO_TW=tw)
    output_options = dict(WINO_TILE=tile, WINO_O=out, WINO_OH=g.OH, WINO_OW=g.OW, WINO_TH=th, WINO_TW=tw,
                          HAS_BIAS=bias is not None, **(act or activation()))
    for start in range(0, batch, per):  # a kernel object per launch: each binds its own arguments
        images = min(per, batch - start)
        tiles = images * th * tw  # V and M: (n^2, C or out, tiles) in their first elements
        plan.launch(plan.kernel(FILE, "winograd_input", **input_options), (tiles, g.C), (LOCAL, 1), images,
                    _from(x, start * g.C * g.H * g.W), v)
        gemm(plan, Matrix(u, out, g.C, group_stride=out * g.C), Matrix(v, g.C, tiles, group_stride=g.C * tiles),
             Matrix(m, out, tiles), groups=elements)
        launch = plan.launch(plan.kernel(FILE, "winograd_output", **output_options), (tiles, out), (LOCAL, 1), images,
                             m, bias if bias is not None else m, _from(y, start * out * g.OH * g.OW))
    return launch


def _from(tensor, offset):
    """The elements of `tensor` from `offset` on."""
    return tensor.view((tensor.size - offset,), offset)
