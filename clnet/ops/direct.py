"""A direct 3x3 stride-1 convolution for layers of few channels on the GPU family
(kernels_cl/conv_direct.cl): the forward pass, and the input gradient as the same kernel over dY with
the weight read flipped and transposed. `ops.conv` chooses when it runs. No operand is transformed
or gathered into a matrix: a work-group stages a tile of the input, its halo included, and the
weights of a few input channels at a time in local memory, and computes every output channel of
its pixels from them."""

from .elementwise import activation

FILE = "conv_direct.cl"
CHANNELS = 32  # input and output channels at most: a work-item keeps 2 x out accumulators
CHUNK = 8      # input channels staged at a time (with 32 outputs: 20 KiB of local memory)
ROWS = 8       # output rows of a work-group


def fits(geometry, out_channels):
    """Whether the kernel computes a convolution `geometry` to `out_channels`: 3x3, stride 1,
    dilation 1, one group, padding up to 2, at most CHANNELS channels in and out."""
    g = geometry
    return ((g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.G) == (3, 3, 1, 1, 1, 1, 1) and max(g.ph, g.pw) <= 2
            and max(g.C, out_channels) <= CHANNELS)


def forward(plan, geometry, batch, x, weight, y, bias, act):
    """y (batch, O, OH, OW) = act(the convolution of x (batch, C, H, W) + bias), weight (O, C*9) as
    stored; `act` is the activation's options (`activation(...)`), None for none."""
    return _launch(plan, geometry, batch, x, weight, weight.shape[0], y, bias, act, flip=False)


def input_grad(plan, transposed, batch, weight, dy, dx):
    """dx (batch, C, H, W) of a convolution whose input gradient is the convolution `transposed`
    (`ops.conv.transposed`) of dY (batch, O, OH, OW) with the weight (O, C*9) flipped, in and out
    swapped."""
    return _launch(plan, transposed, batch, dy, weight, dx.shape[1], dx, None, None, flip=True)


def _launch(plan, g, batch, x, weight, out, y, bias, act, flip):
    width = 32 if g.OW > 16 else 16  # output columns of a work-group, two a work-item
    k = plan.kernel(FILE, "conv3x3_direct", DC_C=g.C, DC_O=out, DC_H=g.H, DC_W=g.W, DC_OH=g.OH, DC_OW=g.OW,
                    DC_PH=g.ph, DC_PW=g.pw, DC_ROWS=ROWS, DC_TW=width, DC_CC=min(CHUNK, g.C), DC_FLIP=flip,
                    HAS_BIAS=bias is not None, **(act or activation()))
    grid = (-(-g.OW // width) * width // 2, -(-g.OH // ROWS) * ROWS, batch)
    return plan.launch(k, grid, (width // 2, ROWS, 1), x, weight, bias if bias is not None else y, y)
