// Depthwise convolution (groups == input channels): output channel o reads input channel
// o / DW_MULT alone, through its KH x KW taps, so that as a GEMM it would have K = KH * KW. Direct
// kernels instead: the forward pass (with the bias and activation epilogue), the input gradient and
// the weight gradient, each value summed in a fixed order (no atomics). The geometry comes as
// compile-time constants, as for the GEMMs (conv.cl: CONV_C input channels, CONV_H x CONV_W, kernel
// CONV_KH x CONV_KW, output CONV_OH x CONV_OW, stride CONV_SH/SW, top/left padding CONV_PH/PW,
// dilation CONV_DH/DW), with DW_MULT output channels per input channel. The weight is (O, KH * KW);
// dpre, the gradient before the activation, is (O, B * OH * OW) as conv_bias_act_backward leaves it.
// DW_CPU (the CPU family): a work-item computes a row of outputs, in order along it; otherwise (the
// GPU family) one output, so that neighbouring work-items read neighbouring addresses.

#define DW_O (CONV_C * DW_MULT)
#define DW_TAPS (CONV_KH * CONV_KW)
#define DW_P (CONV_OH * CONV_OW)
#if DW_CPU
#define DW_RUN_OUT CONV_OW  // outputs of a work-item: a row of the output, or of the input gradient
#define DW_RUN_IN CONV_W
#else
#define DW_RUN_OUT 1
#define DW_RUN_IN 1
#endif

// y[image, o, oh, ow] = act(bias[o] + sum over the taps (kh, kw) of w[o, kh, kw] x[image, o / DW_MULT,
// oh * SH - PH + kh * DH, ow * SW - PW + kw * DW]), 0 in the padding. Global size
// B * O * OH * OW / DW_RUN_OUT.
__kernel void depthwise_forward(const int B, __global const float* restrict x, const int xo,
                                __global const float* restrict w, const int wo,
                                __global const float* restrict bias, const int bo,
                                __global float* restrict y, const int yo)
{
    const int i = get_global_id(0);  // ((image * O + o) * OH + oh) * OW / DW_RUN_OUT + ow / DW_RUN_OUT
    if (i >= B * DW_O * DW_P / DW_RUN_OUT) return;
    const int ow0 = i % (CONV_OW / DW_RUN_OUT) * DW_RUN_OUT, oh = i / (CONV_OW / DW_RUN_OUT) % CONV_OH;
    const int o = i / (DW_P / DW_RUN_OUT) % DW_O, image = i / (DW_O * DW_P / DW_RUN_OUT);
    __global const float* xc = x + xo + (image * CONV_C + o / DW_MULT) * CONV_H * CONV_W;
    __global const float* wt = w + wo + o * DW_TAPS;
    float acc[DW_RUN_OUT];
    for (int r = 0; r < DW_RUN_OUT; r++) acc[r] = 0.0f;
    for (int kh = 0; kh < CONV_KH; kh++) {
        const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH;
        if ((uint)ih >= CONV_H) continue;
        for (int kw = 0; kw < CONV_KW; kw++) {
            const float v = wt[kh * CONV_KW + kw];
            for (int r = 0; r < DW_RUN_OUT; r++) {
                const int iw = (ow0 + r) * CONV_SW - CONV_PW + kw * CONV_DW;
                if ((uint)iw < CONV_W) acc[r] += v * xc[ih * CONV_W + iw];
            }
        }
    }
#ifdef HAS_BIAS
    const float b = bias[bo + o];
#else
    const float b = 0.0f;
#endif
    __global float* out = y + yo + (i / (CONV_OW / DW_RUN_OUT)) * CONV_OW + ow0;
    for (int r = 0; r < DW_RUN_OUT; r++) out[r] = act_forward(acc[r] + b);
}

// dx[image, c, ih, iw] = the sum over the outputs o of channel c (m = 0 .. DW_MULT - 1) and the taps
// (kh, kw) of w[o, kh, kw] dpre[o, image, oh, ow] for the output pixel (oh, ow) that read (ih, iw)
// through that tap, if any. Global size B * C * H * W / DW_RUN_IN.
__kernel void depthwise_input_grad(const int B, __global const float* restrict w, const int wo,
                                   __global const float* restrict dpre, const int dpo,
                                   __global float* restrict dx, const int xo)
{
    const int i = get_global_id(0);  // ((image * C + c) * H + ih) * W / DW_RUN_IN + iw / DW_RUN_IN
    if (i >= B * CONV_C * CONV_H * CONV_W / DW_RUN_IN) return;
    const int iw0 = i % (CONV_W / DW_RUN_IN) * DW_RUN_IN, ih = i / (CONV_W / DW_RUN_IN) % CONV_H;
    const int c = i / (CONV_H * CONV_W / DW_RUN_IN) % CONV_C, image = i / (CONV_C * CONV_H * CONV_W / DW_RUN_IN);
    float acc[DW_RUN_IN];
    for (int r = 0; r < DW_RUN_IN; r++) acc[r] = 0.0f;
    for (int m = 0; m < DW_MULT; m++) {
        const int o = c * DW_MULT + m;
        __global const float* d = dpre + dpo + o * (B * DW_P) + image * DW_P;
        __global const float* wt = w + wo + o * DW_TAPS;
        for (int kh = 0; kh < CONV_KH; kh++) {
            const int t = ih + CONV_PH - kh * CONV_DH, oh = t / CONV_SH;
            if (t < 0 || oh * CONV_SH != t || oh >= CONV_OH) continue;
            for (int kw = 0; kw < CONV_KW; kw++) {
                const float v = wt[kh * CONV_KW + kw];
                for (int r = 0; r < DW_RUN_IN; r++) {
                    const int u = iw0 + r + CONV_PW - kw * CONV_DW, ow = u / CONV_SW;
                    if (u >= 0 && ow * CONV_SW == u && ow < CONV_OW) acc[r] += v * d[oh * CONV_OW + ow];
                }
            }
        }
    }
    __global float* out = dx + xo + (i / (CONV_W / DW_RUN_IN)) * CONV_W + iw0;
    for (int r = 0; r < DW_RUN_IN; r++) out[r] = acc[r];
}

#ifndef DW_WG
#define DW_WG 64  // work-group size of depthwise_weight_grad, a power of two
#endif

// dw[o, kh, kw] = the sum over the batch's output pixels (image, oh, ow) of dpre[o, image, oh, ow]
// times the input that tap (kh, kw) read for them. Work-group (o, s) of an (O, S) grid handles slice
// s of channel o's B * OH * OW pixels, every tap at once, and writes the taps' sums, each reduced in
// a fixed order, to sums[(s * O + o) * KH * KW + tap]: the weight gradient itself when S = 1, else
// partial sums that sum_slices adds up.
__kernel __attribute__((reqd_work_group_size(DW_WG, 1, 1)))
void depthwise_weight_grad(const int B, __global const float* restrict dpre, const int dpo,
                           __global const float* restrict x, const int xo,
                           __global float* restrict sums, const int so)
{
    __local float part[DW_TAPS][DW_WG];
    const int o = get_group_id(0), lid = get_local_id(0), c = o / DW_MULT;
    const int slices = get_num_groups(1), n = B * DW_P;
    const int share = (n + slices - 1) / slices, begin = get_group_id(1) * share, end = min(n, begin + share);
    float acc[DW_TAPS];
    for (int t = 0; t < DW_TAPS; t++) acc[t] = 0.0f;
    for (int i = begin + lid; i < end; i += DW_WG) {
        const int image = i / DW_P, oh = i / CONV_OW % CONV_OH, ow = i % CONV_OW;
        const float g = dpre[dpo + o * n + i];
        __global const float* xc = x + xo + (image * CONV_C + c) * CONV_H * CONV_W;
        for (int kh = 0; kh < CONV_KH; kh++) {
            const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH;
            if ((uint)ih >= CONV_H) continue;
            for (int kw = 0; kw < CONV_KW; kw++) {
                const int iw = ow * CONV_SW - CONV_PW + kw * CONV_DW;
                if ((uint)iw < CONV_W) acc[kh * CONV_KW + kw] += g * xc[ih * CONV_W + iw];
            }
        }
    }
    for (int t = 0; t < DW_TAPS; t++) part[t][lid] = acc[t];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = DW_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride)
            for (int t = 0; t < DW_TAPS; t++) part[t][lid] += part[t][lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int t = lid; t < DW_TAPS; t += DW_WG) sums[so + (get_group_id(1) * DW_O + o) * DW_TAPS + t] = part[t][0];
}
