// A direct 3x3 stride-1 convolution to few output channels (the CPU family): work-item (s, oh, image)
// computes the 16 output pixels ow0 = 16 s .. ow0 + 15 of row oh of one image for each of the RC_O
// (at most 16) output channels, in float16 accumulators. Each input vector (16 consecutive values
// of an input row, shifted by the tap's column: load_window16) is read straight from x and serves RC_O
// multiply-adds: no panel is gathered into memory first, as an implicit GEMM's is.
//
// With RC_FLIP the weight is read as the input gradient's: w'[o][c][kh][kw] = w[c][o][2-kh][2-kw]
// (in and out swapped, the taps flipped), so that the input gradient of a convolution is this kernel
// over dY with the geometry `ops.conv.transposed` gives.
//
// x: channel c of image i at x[i * RC_IMAGE_STRIDE + c * RC_CHANNEL_STRIDE] (NCHW unless the strides
// say otherwise: the CPU family's transposed dY is (O, images, OH, OW)); y (images, RC_O, RC_OH, RC_OW);
// w (RC_O, RC_C, 3, 3) as stored, or (RC_C, RC_O, 3, 3) with RC_FLIP; bias[o] with HAS_BIAS, then ACT
// (common.h). Global size (ceil(RC_OW / 16), RC_OH, images), work-groups of one.

#include "register_block.h"

#define LANES PANEL  // output pixels of a work-item: one float16
#ifndef RC_IMAGE_STRIDE
#define RC_IMAGE_STRIDE (RC_C * RC_H * RC_W)
#define RC_CHANNEL_STRIDE (RC_H * RC_W)
#endif

// The weight of output o, input c and tap t is at[o * W_STEP], from at = w + wo + W_FIRST(c, t):
// constant distances, so that the multiply-adds read it in place (an index computed for each would
// cost two integer instructions a multiply-add).
#ifdef RC_FLIP
#define W_FIRST(c, t) ((c) * RC_O * 9 + 8 - (t))
#define W_STEP 9
#else
#define W_FIRST(c, t) ((c) * 9 + (t))
#define W_STEP (RC_C * 9)
#endif

__kernel void conv3x3_rows(__global const float* restrict x, const int xo,
                           __global const float* restrict w, const int wo,
                           __global const float* restrict bias, const int bias_off,
                           __global float* restrict y, const int yo)
{
    const int ow0 = get_global_id(0) * LANES, oh = get_global_id(1), image = get_global_id(2);
    const int valid = min(LANES, RC_OW - ow0);
    __global const float* in = x + xo + image * RC_IMAGE_STRIDE;
    float16 acc[RC_O];
    _Pragma("unroll") for (int o = 0; o < RC_O; o++) acc[o] = (float16)(0.0f);
    for (int kh = 0; kh < 3; kh++) {
        const int ih = oh + kh - RC_PH;
        if ((uint)ih >= RC_H) continue;  // a row of padding
        for (int kw = 0; kw < 3; kw++) {
            const int iw = ow0 + kw - RC_PW, tap = kh * 3 + kw;
            for (int c = 0; c < RC_C; c++) {
                const float16 v = load_window16(in + c * RC_CHANNEL_STRIDE + ih * RC_W, iw, RC_W);
                __global const float* at = w + wo + W_FIRST(c, tap);
                _Pragma("unroll") for (int o = 0; o < RC_O; o++) acc[o] = at[o * W_STEP] * v + acc[o];
            }
        }
    }
    for (int o = 0; o < RC_O; o++) {
#ifdef HAS_BIAS
        const float b = bias[bias_off + o];
#else
        const float b = 0.0f;
#endif
        __attribute__((aligned(64))) float out[LANES];
        *(float16*)out = acc[o];
        __global float* dst = y + yo + ((image * RC_O + o) * RC_OH + oh) * RC_OW + ow0;
        for (int j = 0; j < valid; j++) dst[j] = act_forward(out[j] + b);
    }
}
