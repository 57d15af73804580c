// Depthwise convolution (groups == input channels): output channel o reads input channel
// o / DW_MULT alone, through its KH x KW taps, so that as a GEMM it would have K = KH * KW. Direct
// kernels instead: the forward pass (with the bias and activation epilogue), the input gradient and
// the weight gradient, each value summed in a fixed order (no atomics). The geometry comes as
// compile-time constants, as for the GEMMs (conv.cl: CONV_C input channels, CONV_H x CONV_W, kernel
// CONV_KH x CONV_KW, output CONV_OH x CONV_OW, stride CONV_SH/SW, top/left padding CONV_PH/PW,
// dilation CONV_DH/DW), with DW_MULT output channels per input channel. The weight is (O, KH * KW);
// dpre, the gradient before the activation, is as conv_bias_act_backward leaves it: (O, B * OH * OW)
// on the CPU family, in dY's own (B, O, OH, OW) layout on the GPU family.
// DW_CPU (the CPU family): a work-item computes a plane of outputs row by row, each row's taps
// along a copy of the input row padded with zeros (loops of constant trip counts, no bounds checks,
// which the compiler vectorises); otherwise (the GPU family) a work-item computes one output, so
// that neighbouring work-items read neighbouring addresses.

#define DW_O (CONV_C * DW_MULT)
#define DW_TAPS (CONV_KH * CONV_KW)
#define DW_P (CONV_OH * CONV_OW)

// The output row (or column) whose tap k reads input row (or column) i, given that dimension's
// padding, dilation, stride and output size; -1 where the stride skips i or the row falls outside.
inline int dw_reading_output(const int i, const int k, const int pad, const int dilation, const int stride,
                             const int out)
{
    const int t = i + pad - k * dilation, o = t / stride;
    return (t < 0 || o * stride != t || o >= out) ? -1 : o;
}

#ifndef DW_WG
#define DW_WG 64  // work-group size of depthwise_weight_grad (GPU family), a power of two
#endif

#if DW_CPU
#define DW_LANES 8  // the weight gradient's partial sums per tap, along a row
#define DW_OWP ((CONV_OW + DW_LANES - 1) / DW_LANES * DW_LANES)  // a row of dY padded to whole lanes
// A row of x as the taps of OW (or DW_OWP) outputs read it: from column -PW, zeros outside the image.
#define DW_WP(ow) (((ow) - 1) * CONV_SW + (CONV_KW - 1) * CONV_DW + 1)

inline void dw_padded_row(float* xp, const int width, __global const float* restrict xr)
{
    for (int j = 0; j < width; j++) {
        const int iw = j - CONV_PW;
        xp[j] = (uint)iw < CONV_W ? xr[iw] : 0.0f;
    }
}

// A work-item per output plane (image, o): global size B * O.
__kernel void depthwise_forward(const int B, __global const float* restrict x, const int xo,
                                __global const float* restrict w, const int wo,
                                __global const float* restrict bias, const int bo,
                                __global float* restrict y, const int yo)
{
    const int plane = get_global_id(0);  // image * O + o
    if (plane >= B * DW_O) return;
    const int o = plane % DW_O;
    __global const float* xc = x + xo + (plane / DW_O * CONV_C + o / DW_MULT) * CONV_H * CONV_W;
    __global const float* wt = w + wo + o * DW_TAPS;
#ifdef HAS_BIAS
    const float b = bias[bo + o];
#else
    const float b = 0.0f;
#endif
    for (int oh = 0; oh < CONV_OH; oh++) {
        float acc[CONV_OW], xp[DW_WP(CONV_OW)];
        for (int ow = 0; ow < CONV_OW; ow++) acc[ow] = 0.0f;
        for (int kh = 0; kh < CONV_KH; kh++) {
            const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH;
            if ((uint)ih >= CONV_H) continue;
            dw_padded_row(xp, DW_WP(CONV_OW), xc + ih * CONV_W);
            for (int kw = 0; kw < CONV_KW; kw++) {
                const float v = wt[kh * CONV_KW + kw];
                for (int ow = 0; ow < CONV_OW; ow++) acc[ow] += v * xp[ow * CONV_SW + kw * CONV_DW];
            }
        }
        __global float* out = y + yo + (plane * CONV_OH + oh) * CONV_OW;
        for (int ow = 0; ow < CONV_OW; ow++) out[ow] = act_forward(acc[ow] + b);
    }
}

// A work-item per plane (image, c) of dx: global size B * C. Each row of dY scatters into the padded
// input row that its taps read (each element once per tap), which is then cropped.
__kernel void depthwise_input_grad(const int B, __global const float* restrict w, const int wo,
                                   __global const float* restrict dpre, const int dpo,
                                   __global float* restrict dx, const int xo)
{
    const int plane = get_global_id(0);  // image * C + c
    if (plane >= B * CONV_C) return;
    const int c = plane % CONV_C, image = plane / CONV_C;
    for (int ih = 0; ih < CONV_H; ih++) {
        float acc[DW_WP(CONV_OW)];
        for (int j = 0; j < DW_WP(CONV_OW); j++) acc[j] = 0.0f;
        for (int m = 0; m < DW_MULT; m++) {
            const int o = c * DW_MULT + m;
            __global const float* d = dpre + dpo + o * (B * DW_P) + image * DW_P;
            __global const float* wt = w + wo + o * DW_TAPS;
            for (int kh = 0; kh < CONV_KH; kh++) {
                const int oh = dw_reading_output(ih, kh, CONV_PH, CONV_DH, CONV_SH, CONV_OH);
                if (oh < 0) continue;
                __global const float* dr = d + oh * CONV_OW;
                for (int kw = 0; kw < CONV_KW; kw++) {
                    const float v = wt[kh * CONV_KW + kw];
                    for (int ow = 0; ow < CONV_OW; ow++) acc[ow * CONV_SW + kw * CONV_DW] += v * dr[ow];
                }
            }
        }
        __global float* out = dx + xo + (plane * CONV_H + ih) * CONV_W;
        for (int iw = 0; iw < CONV_W; iw++) out[iw] = iw + CONV_PW < DW_WP(CONV_OW) ? acc[iw + CONV_PW] : 0.0f;
    }
}

// Work-group (o, s) of one work-item (DW_WG 1) sums slice s of channel o's rows of dY (image, oh) in
// order, in DW_LANES partial sums per tap along the row, added in order at the end.
#define DW_SUMS(acc) \
    const int rows = B * CONV_OH, share = (rows + slices - 1) / slices; \
    const int row_end = min(rows, (slice + 1) * share); \
    float lanes[DW_TAPS][DW_LANES]; \
    for (int t = 0; t < DW_TAPS; t++) \
        for (int j = 0; j < DW_LANES; j++) lanes[t][j] = 0.0f; \
    for (int row = slice * share; row < row_end; row++) { \
        const int image = row / CONV_OH, oh = row % CONV_OH; \
        __global const float* dr = dpre + dpo + o * n + row * CONV_OW; \
        __global const float* xc = x + xo + (image * CONV_C + c) * CONV_H * CONV_W; \
        float dp[DW_OWP], xp[DW_WP(DW_OWP)]; \
        for (int ow = 0; ow < DW_OWP; ow++) dp[ow] = ow < CONV_OW ? dr[ow] : 0.0f; \
        for (int kh = 0; kh < CONV_KH; kh++) { \
            const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH; \
            if ((uint)ih >= CONV_H) continue; \
            dw_padded_row(xp, DW_WP(DW_OWP), xc + ih * CONV_W); \
            for (int kw = 0; kw < CONV_KW; kw++) \
                for (int ow = 0; ow < DW_OWP; ow += DW_LANES) \
                    for (int j = 0; j < DW_LANES; j++) \
                        lanes[kh * CONV_KW + kw][j] += dp[ow + j] * xp[(ow + j) * CONV_SW + kw * CONV_DW]; \
        } \
    } \
    for (int t = 0; t < DW_TAPS; t++) { \
        float s = 0.0f; \
        for (int j = 0; j < DW_LANES; j++) s += lanes[t][j]; \
        acc[t] = s; \
    }

#else  // the GPU family: a work-item per value

__kernel void depthwise_forward(const int B, __global const float* restrict x, const int xo,
                                __global const float* restrict w, const int wo,
                                __global const float* restrict bias, const int bo,
                                __global float* restrict y, const int yo)
{
    const int i = get_global_id(0);  // ((image * O + o) * OH + oh) * OW + ow
    if (i >= B * DW_O * DW_P) return;
    const int plane = i / DW_P, o = plane % DW_O, oh = i / CONV_OW % CONV_OH, ow = i % CONV_OW;
    __global const float* xc = x + xo + (plane / DW_O * CONV_C + o / DW_MULT) * CONV_H * CONV_W;
    __global const float* wt = w + wo + o * DW_TAPS;
    float acc = 0.0f;
    for (int kh = 0; kh < CONV_KH; kh++) {
        const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH;
        if ((uint)ih >= CONV_H) continue;
        for (int kw = 0; kw < CONV_KW; kw++) {
            const int iw = ow * CONV_SW - CONV_PW + kw * CONV_DW;
            if ((uint)iw < CONV_W) acc += wt[kh * CONV_KW + kw] * xc[ih * CONV_W + iw];
        }
    }
#ifdef HAS_BIAS
    acc += bias[bo + o];
#endif
    y[yo + i] = act_forward(acc);
}

__kernel void depthwise_input_grad(const int B, __global const float* restrict w, const int wo,
                                   __global const float* restrict dpre, const int dpo,
                                   __global float* restrict dx, const int xo)
{
    const int i = get_global_id(0);  // ((image * C + c) * H + ih) * W + iw
    if (i >= B * CONV_C * CONV_H * CONV_W) return;
    const int plane = i / (CONV_H * CONV_W), ih = i / CONV_W % CONV_H, iw = i % CONV_W;
    const int c = plane % CONV_C, image = plane / CONV_C;
    float acc = 0.0f;
    for (int m = 0; m < DW_MULT; m++) {
        const int o = c * DW_MULT + m;
        __global const float* d = dpre + dpo + (image * DW_O + o) * DW_P;
        __global const float* wt = w + wo + o * DW_TAPS;
        for (int kh = 0; kh < CONV_KH; kh++) {
            const int oh = dw_reading_output(ih, kh, CONV_PH, CONV_DH, CONV_SH, CONV_OH);
            if (oh < 0) continue;
            for (int kw = 0; kw < CONV_KW; kw++) {
                const int ow = dw_reading_output(iw, kw, CONV_PW, CONV_DW, CONV_SW, CONV_OW);
                if (ow >= 0) acc += wt[kh * CONV_KW + kw] * d[oh * CONV_OW + ow];
            }
        }
    }
    dx[xo + i] = acc;
}

// The work-group's DW_WG work-items along the slice's pixels, each summing every tap.
#define DW_SUMS(acc) \
    const int n_slice = (n + slices - 1) / slices, begin = slice * n_slice, end = min(n, begin + n_slice); \
    for (int t = 0; t < DW_TAPS; t++) acc[t] = 0.0f; \
    for (int i = begin + lid; i < end; i += DW_WG) { \
        const int image = i / DW_P, oh = i / CONV_OW % CONV_OH, ow = i % CONV_OW; \
        const float g = dpre[dpo + (image * DW_O + o) * DW_P + i % DW_P]; \
        __global const float* xc = x + xo + (image * CONV_C + c) * CONV_H * CONV_W; \
        for (int kh = 0; kh < CONV_KH; kh++) { \
            const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH; \
            if ((uint)ih >= CONV_H) continue; \
            for (int kw = 0; kw < CONV_KW; kw++) { \
                const int iw = ow * CONV_SW - CONV_PW + kw * CONV_DW; \
                if ((uint)iw < CONV_W) acc[kh * CONV_KW + kw] += g * xc[ih * CONV_W + iw]; \
            } \
        } \
    }
#endif

// dw[o, kh, kw] = the sum over the batch's output pixels (image, oh, ow) of dpre at (o, image, oh, ow)
// (the GPU family's in dY's layout [image, o, oh, ow], the CPU family's [o, image, oh, ow])
// times the input that tap (kh, kw) read for them. Work-group (o, s) of an (O, S) grid handles slice
// s of channel o's B * OH * OW pixels, every tap at once (DW_SUMS), and writes the taps' sums, each
// reduced in a fixed order, to sums[(s * O + o) * KH * KW + tap]: the weight gradient itself when
// S = 1, else partial sums that sum_slices adds up.
__kernel __attribute__((reqd_work_group_size(DW_WG, 1, 1)))
void depthwise_weight_grad(const int B, __global const float* restrict dpre, const int dpo,
                           __global const float* restrict x, const int xo,
                           __global float* restrict sums, const int so)
{
    __local float part[DW_TAPS][DW_WG];
    const int o = get_group_id(0), lid = get_local_id(0), c = o / DW_MULT;
    const int slices = get_num_groups(1), slice = get_group_id(1), n = B * DW_P;
    float acc[DW_TAPS];
    DW_SUMS(acc)
    for (int t = 0; t < DW_TAPS; t++) part[t][lid] = acc[t];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = DW_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride)
            for (int t = 0; t < DW_TAPS; t++) part[t][lid] += part[t][lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int t = lid; t < DW_TAPS; t += DW_WG) sums[so + (slice * DW_O + o) * DW_TAPS + t] = part[t][0];
}
