// The CPU family's input gradient of a strided convolution: col2im of the column-matrix gradient
// (the forward pass, the weight gradient and a stride-1 input gradient gather their columns inside
// the GEMM: CONV_B in conv_gather.h; GPUs gather every input gradient: CONV_DX). The geometry comes
// as compile-time constants, as for the GEMMs: input (CONV_C, CONV_H, CONV_W) per image, kernel
// CONV_KH x CONV_KW, output CONV_OH x CONV_OW, stride CONV_SH/SW, top/left padding CONV_PH/PW,
// dilation CONV_DH/DW. The column matrix has a row per (c, kh, kw) and a column per (image, oh,
// ow), with leading dimension ldcol.

// The gradient of im2col as a gather: each input element sums the column entries it was copied to,
// in a fixed order, tap (kh, kw) after tap (no atomics, the same result every run). Global size
// images*C*H: a work-item handles a row of input pixels, adding each tap's contiguous run of output
// columns to the pixels it reaches (every sw-th, from a compile-time start: no division per pixel).
// Built only with the geometry.
#ifdef CONV_C
__kernel void col2im(const int images, const int ldcol,
                     __global const float* restrict col, const int co,
                     __global float* restrict dx, const int xo)
{
    const int C = CONV_C, H = CONV_H, W = CONV_W, KH = CONV_KH, KW = CONV_KW, OH = CONV_OH, OW = CONV_OW,
        sh = CONV_SH, sw = CONV_SW, ph = CONV_PH, pw = CONV_PW, dh = CONV_DH, dw = CONV_DW;
    const int r = get_global_id(0);  // r = (image * C + c) * H + ih
    if (r >= images * C * H) return;
    const int ih = r % H, c = (r / H) % C, g = r / (C * H);
    float s[CONV_W];  // the row, summed over the taps in order
    for (int iw = 0; iw < W; iw++) s[iw] = 0.0f;
    for (int kh = 0; kh < KH; kh++) {
        const int t = ih + ph - kh * dh, oh = t / sh;
        if (t < 0 || oh * sh != t || oh >= OH) continue;
        #pragma unroll
        for (int kw = 0; kw < KW; kw++) {
            __global const float* tap = col + co + ((c * KH + kh) * KW + kw) * ldcol + (g * OH + oh) * OW;
            // output column ow reaches iw = ow * sw + kw * dw - pw: the ow with 0 <= iw < W
            const int shift = kw * dw - pw, lo = shift < 0 ? (sw - 1 - shift) / sw : 0;
            const int hi = min(OW, (W - shift + sw - 1) / sw);
            for (int ow = lo; ow < hi; ow++) s[ow * sw + shift] += tap[ow];
        }
    }
    for (int iw = 0; iw < W; iw++) dx[xo + r * W + iw] = s[iw];
}
#endif

#ifndef CONV_WG
#define CONV_WG 64  // work-group size of conv_bias_act_backward, a power of two
#endif

// The GPU family's: for a convolution output y (B, C, P) = act(conv + bias), P = CONV_P (a
// compile-time constant, so that the index arithmetic has no run-time division), dpre = dy * act'(y)
// in the same (B, C, P) layout, which the weight- and input-gradient GEMMs read (A_IMAGE_COLS and
// CONV_DX in gemm_common.h; the CPU family's kernel below transposes it), and with HAS_BIAS the
// bias gradient; without an activation the GEMMs read dy itself, and only the bias is summed.
// Work-group (c, s) of a (C, S) grid handles slice s of channel c's B * P values (consecutive
// work-items at consecutive addresses within a plane) and writes their sum, reduced in a fixed
// order, to sums[s * C + c]: the bias gradient itself when S = 1, else partial sums that sum_slices
// (sum_slices.cl) adds up. Several slices keep a GPU busy.
#ifdef CONV_P
__kernel __attribute__((reqd_work_group_size(CONV_WG, 1, 1)))
void conv_bias_act_backward(const int B, const int C,
                            __global const float* restrict dy, const int dyo,
                            __global const float* restrict y, const int yo,
                            __global float* restrict dpre, const int dpo,
                            __global float* restrict sums, const int so)
{
    __local float part[CONV_WG];
    const int P = CONV_P, c = get_group_id(0), lid = get_local_id(0);
    const int slices = get_num_groups(1), n = B * P;
    const int share = (n + slices - 1) / slices, begin = get_group_id(1) * share, end = min(n, begin + share);
    float s = 0.0f;
    for (int i = begin + lid; i < end; i += CONV_WG) {
        const int at = ((i / P) * C + c) * P + i % P;
        const float g = dy[dyo + at] * act_grad_from_output(y[yo + at]);
#if ACT != ACT_NONE  // without an activation dpre is dY itself: only the bias is summed
        dpre[dpo + at] = g;
#endif
        s += g;
    }
#ifdef HAS_BIAS
    part[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = CONV_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) part[lid] += part[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) sums[so + get_group_id(1) * C + c] = part[0];
#endif
}
#endif

// The CPU family's conv_bias_act_backward (PoCL vectorises a fixed-length loop over contiguous
// values, not work-items): work-item (k, c) of an exact (ceil(B / CONV_ROWS), C) grid, work-groups
// of one, takes the rows [k * CONV_ROWS, (k + 1) * CONV_ROWS) of channel c, each a plane of P
// contiguous values read in order and written as one run of dpre, and writes their sum, in lanes
// (lanes.h), to sums[k * C + c]: the bias gradient itself when there is one slice, else partial sums
// that sum_slices adds up. The host bounds CONV_ROWS, and with it the values a lane adds in sequence.
#ifdef CONV_ROWS
#include "lanes.h"

#define CONV_BODY (CONV_P / LANES * LANES)  // a plane's values that fill the vector lanes

__kernel void conv_bias_act_backward_rows(const int B, const int C,
                                          __global const float* restrict dy, const int dyo,
                                          __global const float* restrict y, const int yo,
                                          __global float* restrict dpre, const int dpo,
                                          __global float* restrict sums, const int so)
{
    const int P = CONV_P, k = get_global_id(0), c = get_global_id(1);
    const int first = k * CONV_ROWS, last = min(first + CONV_ROWS, B);
    float16 body = 0.0f;
    __attribute__((aligned(64))) float tail[LANES];
    #pragma unroll
    for (int j = 0; j < P - CONV_BODY; j++) tail[j] = 0.0f;
    for (int r = first; r < last; r++) {
        const int src = (r * C + c) * P;
        __global float* out = dpre + dpo + (c * B + r) * P;
        for (int j = 0; j < CONV_BODY; j += LANES) {
            const float16 g = act_grad16(dy + dyo + src + j, y + yo + src + j);
            __attribute__((aligned(64))) float v[LANES];  // stored from an aligned array (no vstore16)
            *(float16*)v = g;
            for (int l = 0; l < LANES; l++) out[j + l] = v[l];
            body += g;
        }
        #pragma unroll
        for (int j = CONV_BODY; j < P; j++) {
            const float g = dy[dyo + src + j] * act_grad_from_output(y[yo + src + j]);
            out[j] = g;
            tail[j - CONV_BODY] += g;
        }
    }
#ifdef HAS_BIAS
    sums[so + k * C + c] = lanes_total(body, tail, P - CONV_BODY);
#endif
}
#endif
