"""A direct 3x3 stride-1 convolution for layers of few channels: the forward pass, and the input
gradient as the same kernel over dY with the weight read flipped and transposed. `ops.conv` chooses
when it runs. No operand is transformed or gathered into a matrix.

- The GPU family (kernels_cl/conv_direct.cl): a work-group stages a tile of the input, its halo
  included, and the weights of a few input channels at a time in local memory, and computes every
  output channel of its pixels from them.
- The CPU family (kernels_cl/conv_rows.cl), for convolutions to at most 16 channels: a work-item
  computes 16 pixels of an output row for every output channel, each input vector read straight from
  the input and multiplied by the weights in place. The implicit GEMMs it replaces gather each panel
  of 16 pixels into memory before they multiply it, which with 16 rows of A to share it weighs
  twice what it does at 32. On the 16-core Xeon of the lent machine (PoCL 5, 2026-12-07), resnet20's
  16-channel layers at batch 128 ran their forward pass in 0.67-0.68 ms against 0.97 (1.43x) and
  their input gradient in 0.71 against 0.93; at 32 output channels (16 x 16) the two ran about as
  fast (0.63-0.69 against 0.65-0.71 ms), and cifar-cnn's (32 x 32) trained 0.88-1.03x as fast
  direct, so a GEMM keeps those."""

from .elementwise import activation

CHANNELS = 32  # input and output channels at most: a GPU work-item keeps 2 x out accumulators
CHUNK = 8      # input channels staged at a time (with 32 outputs: 20 KiB of local memory)
ROWS = 8       # output rows of a work-group
LANES = 16     # the CPU family's output pixels per work-item: a float16
CPU_OUT = 16   # the CPU family's output channels at most: a float16 accumulator each, in registers


def fits(geometry, out_channels, family):
    """Whether the family's kernel computes a convolution `geometry` to `out_channels`: 3x3, stride 1,
    dilation 1, one group, padding up to 2, at most CHANNELS channels in and out; on the CPU family
    only to CPU_OUT channels at most, in rows of at least LANES outputs, which fill its vectors."""
    g = geometry
    fitting = ((g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.G) == (3, 3, 1, 1, 1, 1, 1) and max(g.ph, g.pw) <= 2
               and max(g.C, out_channels) <= CHANNELS)
    return fitting and (family == "tiled" or (out_channels <= CPU_OUT and g.OW >= LANES))


def forward(plan, geometry, batch, x, weight, y, bias, act):
    """y (batch, O, OH, OW) = act(the convolution of x (batch, C, H, W) + bias), weight (O, C*9) as
    stored; `act` is the activation's options (`activation(...)`), None for none."""
    return _launch(plan, geometry, batch, x, weight, weight.shape[0], y, bias, act, flip=False)


def input_grad(plan, transposed, batch, weight, dpre, dx, in_place):
    """dx (batch, C, H, W) of a convolution whose input gradient is the convolution `transposed`
    (`ops.conv.transposed`) of dY with the weight (O, C*9) flipped, in and out swapped. dpre is dY
    as `ops.conv.pre_activation_grad` leaves it: (batch, O, OH, OW) where `in_place` (always on the
    GPU family), else (O, batch * OH * OW)."""
    return _launch(plan, transposed, batch, dpre, weight, dx.shape[1], dx, None, None, flip=True,
                   strided=not in_place)


def _launch(plan, g, batch, x, weight, out, y, bias, act, flip, strided=False):
    options = {"HAS_BIAS": bias is not None, **(act or activation())}
    bias = bias if bias is not None else y
    if plan.device.family == "tiled":
        width = 32 if g.OW > 16 else 16  # output columns of a work-group, two a work-item
        k = plan.kernel("conv_direct.cl", "conv3x3_direct", DC_C=g.C, DC_O=out, DC_H=g.H, DC_W=g.W, DC_OH=g.OH,
                        DC_OW=g.OW, DC_PH=g.ph, DC_PW=g.pw, DC_ROWS=ROWS, DC_TW=width, DC_CC=min(CHUNK, g.C),
                        DC_FLIP=flip, **options)
        grid = (-(-g.OW // width) * width // 2, -(-g.OH // ROWS) * ROWS, batch)
        return plan.launch(k, grid, (width // 2, ROWS, 1), x, weight, bias, y)
    if strided:  # dY transposed: its channels one after another, each holding every image's plane
        options.update(RC_IMAGE_STRIDE=g.H * g.W, RC_CHANNEL_STRIDE=batch * g.H * g.W)
    k = plan.kernel("conv_rows.cl", "conv3x3_rows", RC_C=g.C, RC_O=out, RC_H=g.H, RC_W=g.W, RC_OH=g.OH,
                    RC_OW=g.OW, RC_PH=g.ph, RC_PW=g.pw, RC_FLIP=flip, **options)
    return plan.launch(k, (-(-g.OW // LANES), g.OH, batch), (1, 1, 1), x, weight, bias, y)
