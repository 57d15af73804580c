// Batch normalisation (torch.nn.BatchNorm1d / BatchNorm2d) of a tensor seen as (N, C, S): S = H * W
// for images, 1 (or the length L) for features. Statistics run over the N * S values of a channel.
//
// Only the first n_valid rows of a (possibly padded) batch count: they give the statistics and the
// gradients; the input gradient of the other rows is zero.
//
// Training reduces each channel in slices of BN_SLICE values, one work-group a slice, so that a
// channel of many values occupies many compute units; a second kernel combines a channel's slices
// in order, one work-item a channel; a third applies the result element by element. Every sum is
// deterministic: within a slice each work-item adds the elements e = start + lid, + BN_LOCAL, ...
// in order, then a fixed tree over the work-group; the slices are combined in order. Which slice
// and work-item takes an element depends on e only, so a padded batch gives the same sums as the
// unpadded one. The CPU family has kernels of its own for the slices and the element-wise passes
// (bn_rows_*, at the end), whose slices the same combining kernels read.
//
// AFFINE: weight and bias exist (else the w, b, dw, db arguments are placeholders).
// CUMULATIVE: momentum=None, the running statistics are a cumulative average (factor 1 / count).
// ACT: an activation fused after the normalisation (common.h): the forward kernels write act(y),
// and the backward pass takes the gradient of that output and the output itself (y), applying
// act'(y) as it reads dy, so the activation costs no pass of its own.

#ifndef BN_LOCAL
#define BN_LOCAL 128 // work-items of a reducing work-group; a power of two
#endif
#ifndef BN_SLICE
#define BN_SLICE 4096 // values of a channel per reducing work-group; a multiple of BN_LOCAL (CPU: BN_ROWS * BN_S)
#endif

// The sum of each work-item's v over the work-group; every work-item gets it.
inline float group_sum(__local float* scratch, const float v) {
    const int lid = get_local_id(0);
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int width = BN_LOCAL / 2; width > 0; width >>= 1) {
        if (lid < width) scratch[lid] += scratch[lid + width];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float total = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);  // scratch may be written again right after
    return total;
}

// The address of element e (row e / S, position e % S) of channel c, relative to the tensor start.
inline int bn_index(const int e, const int c, const int channels, const int spatial) {
    const int r = e / spatial;
    return (r * channels + c) * spatial + (e - r * spatial);
}

// The values [start, end) of channel c's first m in slice k.
inline int2 bn_slice(const int k, const int m) {
    const int start = k * BN_SLICE;
    return (int2)(start, max(start, min(start + BN_SLICE, m)));
}

// Training forward, statistics of slice k = group 0 of channel c = group 1: the mean of its values
// among the valid rows and the sum of their squared deviations from it (two passes), into
// partial[(k * channels + c) * 2 + 0, 1].
__kernel void bn_slice_statistics(const int n_valid, const int channels, const int spatial,
                                  __global const float* x, const int xo, __global float* partial, const int po)
{
    __local float scratch[BN_LOCAL];
    const int k = get_group_id(0), c = get_group_id(1), lid = get_local_id(0);
    const int2 range = bn_slice(k, n_valid * spatial);
    __global const float* xs = x + xo;
    float s = 0.0f;
    for (int e = range.x + lid; e < range.y; e += BN_LOCAL) s += xs[bn_index(e, c, channels, spatial)];
    const float total = group_sum(scratch, s);
    const float mean = range.y > range.x ? total / (float)(range.y - range.x) : 0.0f;
    float q = 0.0f;
    for (int e = range.x + lid; e < range.y; e += BN_LOCAL) {
        const float d = xs[bn_index(e, c, channels, spatial)] - mean;
        q += d * d;
    }
    const float squares = group_sum(scratch, q);
    if (lid == 0) {
        partial[po + (k * channels + c) * 2] = mean;
        partial[po + (k * channels + c) * 2 + 1] = squares;
    }
}

// Training forward, one work-item per channel: the slices' statistics combined in order (the mean
// and squared deviations of two parts make those of their union), the batch mean and biased
// variance saved as mean and 1 / sqrt(var + eps) for backward, the running statistics updated with
// the unbiased variance. A channel with a single valid value leaves running_var as it is (its
// unbiased variance does not exist; PyTorch refuses such a batch). Work-item 0 counts the batch in
// num_batches_tracked, unless CUMULATIVE, where every work-item reads the count and bn_count_batch
// increments it afterwards.
__kernel void bn_combine_statistics(const int n_valid, const int channels, const int spatial, const int slices,
                                    const float eps, const float momentum,
                                    __global const float* partial, const int po,
                                    __global float* running_mean, const int rmo,
                                    __global float* running_var, const int rvo,
                                    __global float* count, const int co,
                                    __global float* save_mean, const int smo,
                                    __global float* save_invstd, const int sio)
{
    const int c = get_global_id(0);
    if (c >= channels) return;
    const int m = n_valid * spatial;
    float n = 0.0f, mean = 0.0f, squares = 0.0f;
    for (int k = 0; k < slices; k++) {
        const int2 range = bn_slice(k, m);
        if (range.y == range.x) break;
        const float n_k = (float)(range.y - range.x), union_n = n + n_k;
        const float delta = partial[po + (k * channels + c) * 2] - mean;
        mean += delta * (n_k / union_n);
        squares += partial[po + (k * channels + c) * 2 + 1] + delta * delta * (n * n_k / union_n);
        n = union_n;
    }
    const float var = squares / (float)m;
    save_mean[smo + c] = mean;
    save_invstd[sio + c] = 1.0f / sqrt(var + eps);
#ifdef CUMULATIVE
    const float factor = 1.0f / (count[co] + 1.0f);
#else
    const float factor = momentum;
    if (c == 0) count[co] += 1.0f;
#endif
    running_mean[rmo + c] = (1.0f - factor) * running_mean[rmo + c] + factor * mean;
    if (m > 1)
        running_var[rvo + c] = (1.0f - factor) * running_var[rvo + c] + factor * (var * (float)m / (float)(m - 1));
}

// Channel c's scale from its 1 / std: invstd * w (AFFINE), else invstd; the normalisation's
// factor forward and the input gradient's backward.
inline float bn_scale(const int c, const float invstd, __global const float* w, const int wo)
{
#ifdef AFFINE
    return invstd * w[wo + c];
#else
    return invstd;
#endif
}

// Channel c's normalisation as (scale, shift), y = (x - mean) * scale + shift, from its 1 / std:
// shift = b (AFFINE), else 0.
inline float2 bn_affine(const int c, const float invstd, __global const float* w, const int wo,
                        __global const float* b, const int bo)
{
#ifdef AFFINE
    return (float2)(bn_scale(c, invstd, w, wo), b[bo + c]);
#else
    return (float2)(bn_scale(c, invstd, w, wo), 0.0f);
#endif
}

// Training forward, one work-item per element of the n x C x S tensor, padded rows included:
// y = act((x - mean) * invstd * w + b).
__kernel void bn_normalize(const int total, const int channels, const int spatial,
                           __global const float* x, const int xo, __global float* y, const int yo,
                           __global const float* w, const int wo, __global const float* b, const int bo,
                           __global const float* save_mean, const int smo,
                           __global const float* save_invstd, const int sio)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int c = (i / spatial) % channels;
    const float2 affine = bn_affine(c, save_invstd[sio + c], w, wo, b, bo);
    y[yo + i] = act_forward((x[xo + i] - save_mean[smo + c]) * affine.x + affine.y);
}

// num_batches_tracked += 1, after a CUMULATIVE forward has read it. One work-item.
__kernel void bn_count_batch(__global float* count, const int co)
{
    if (get_global_id(0) == 0) count[co] += 1.0f;
}

// Evaluation forward with the running statistics, one work-item per element of the n x C x S tensor.
__kernel void bn_forward_eval(const int total, const int channels, const int spatial, const float eps,
                              __global const float* x, const int xo, __global float* y, const int yo,
                              __global const float* w, const int wo, __global const float* b, const int bo,
                              __global const float* running_mean, const int rmo,
                              __global const float* running_var, const int rvo)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int c = (i / spatial) % channels;
    const float2 affine = bn_affine(c, 1.0f / sqrt(running_var[rvo + c] + eps), w, wo, b, bo);
    y[yo + i] = act_forward((x[xo + i] - running_mean[rmo + c]) * affine.x + affine.y);
}

// Folds an evaluation BatchNorm into the Dense or Conv2D layer before it, whose output channel o is
// row o of its weight (per_row values): with s = w / sqrt(running_var + eps) per channel,
// folded_weight = weight * s[o] and folded_bias = (bias - running_mean) * s + b (bias 0 without
// HAS_BIAS). One work-item per weight value; the first of each row writes the bias.
__kernel void bn_fold(const int rows, const int per_row, const float eps,
                      __global const float* weight, const int wto, __global const float* bias, const int bso,
                      __global const float* w, const int wo, __global const float* b, const int bo,
                      __global const float* running_mean, const int rmo,
                      __global const float* running_var, const int rvo,
                      __global float* folded_weight, const int fwo, __global float* folded_bias, const int fbo)
{
    const int i = get_global_id(0);
    if (i >= rows * per_row) return;
    const int o = i / per_row;
    const float2 affine = bn_affine(o, 1.0f / sqrt(running_var[rvo + o] + eps), w, wo, b, bo);
    const float scale = affine.x, shift = affine.y;
    folded_weight[fwo + i] = weight[wto + i] * scale;
    if (i - o * per_row == 0) {
#ifdef HAS_BIAS
        const float before = bias[bso + o];
#else
        const float before = 0.0f;
#endif
        folded_bias[fbo + o] = (before - running_mean[rmo + o]) * scale + shift;
    }
}

// Training backward. With xhat = (x - mean) * invstd over the valid rows and g = dy * act'(y) the
// gradient of the normalised value: db = sum(g), dw = sum(g * xhat),
// dx = w * invstd * (g - db / m - xhat * dw / m); dx = 0 on the padded rows.
#if ACT == ACT_NONE
#define BN_GRAD(i) dy[dyo + (i)]
#else
#define BN_GRAD(i) (dy[dyo + (i)] * act_grad_from_output(y[yo + (i)]))
#endif

// Training backward, the sums of slice k = group 0 of channel c = group 1: of g and of
// g * (x - mean), into partial[(k * channels + c) * 2 + 0, 1].
__kernel void bn_slice_gradient_sums(const int n_valid, const int channels, const int spatial,
                                     __global const float* x, const int xo, __global const float* y, const int yo,
                                     __global const float* dy, const int dyo,
                                     __global const float* save_mean, const int smo,
                                     __global float* partial, const int po)
{
    __local float scratch[BN_LOCAL];
    const int k = get_group_id(0), c = get_group_id(1), lid = get_local_id(0);
    const int2 range = bn_slice(k, n_valid * spatial);
    const float mean = save_mean[smo + c];
    float s = 0.0f, t = 0.0f;
    for (int e = range.x + lid; e < range.y; e += BN_LOCAL) {
        const int i = bn_index(e, c, channels, spatial);
        const float g = BN_GRAD(i);
        s += g;
        t += g * (x[xo + i] - mean);
    }
    const float sum_g = group_sum(scratch, s);
    const float sum_gx = group_sum(scratch, t);
    if (lid == 0) {
        partial[po + (k * channels + c) * 2] = sum_g;
        partial[po + (k * channels + c) * 2 + 1] = sum_gx;
    }
}

// Training backward, one work-item per channel: the slices' sums added in order; dw and db (AFFINE)
// and, for bn_input_gradient, means[c] = db / m and means[channels + c] = dw / m.
__kernel void bn_combine_gradient_sums(const int n_valid, const int channels, const int spatial, const int slices,
                                       __global const float* partial, const int po,
                                       __global const float* save_invstd, const int sio,
                                       __global float* dw, const int dwo, __global float* db, const int dbo,
                                       __global float* means, const int mo)
{
    const int c = get_global_id(0);
    if (c >= channels) return;
    const int m = n_valid * spatial;
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int k = 0; k < slices && k * BN_SLICE < m; k++) {
        sum_g += partial[po + (k * channels + c) * 2];
        sum_gx += partial[po + (k * channels + c) * 2 + 1];
    }
    const float sum_g_xhat = sum_gx * save_invstd[sio + c];
#ifdef AFFINE
    dw[dwo + c] = sum_g_xhat;
    db[dbo + c] = sum_g;
#endif
    means[mo + c] = sum_g / (float)m;
    means[mo + channels + c] = sum_g_xhat / (float)m;
}

// Training backward, one work-item per element: dx from the channel's means (bn_combine_gradient_sums).
__kernel void bn_input_gradient(const int total, const int n_valid, const int channels, const int spatial,
                                __global const float* x, const int xo, __global const float* y, const int yo,
                                __global const float* dy, const int dyo, __global float* dx, const int dxo,
                                __global const float* w, const int wo,
                                __global const float* save_mean, const int smo,
                                __global const float* save_invstd, const int sio,
                                __global const float* means, const int mo)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    if (i / (channels * spatial) >= n_valid) {
        dx[dxo + i] = 0.0f;
        return;
    }
    const int c = (i / spatial) % channels;
    const float invstd = save_invstd[sio + c], gain = bn_scale(c, invstd, w, wo);
    const float xhat = (x[xo + i] - save_mean[smo + c]) * invstd;
    dx[dxo + i] = gain * (BN_GRAD(i) - means[mo + c] - xhat * means[mo + channels + c]);
}

// ---------------------------------------------------------------------------------------------
// The CPU family (PoCL runs a work-group's work-items as a loop on one core and vectorises only
// simple loops): BN_S = S is a compile-time constant and every kernel walks whole (row, channel)
// planes, each S contiguous values, with no division per element. A slice is BN_ROWS rows of one
// channel (BN_SLICE = BN_ROWS * BN_S values, so that the combining kernels above read its partial
// results as the GPU's): work-item (k, c) of an exact grid (work-groups of one) takes the rows
// [k * BN_ROWS, (k + 1) * BN_ROWS) of channel c. Sums run in lanes (lanes.h), added at the end of
// the slice: a fixed order that depends on the row and the position only, so a padded batch gives
// the unpadded one's sums. The host bounds BN_ROWS, and with it the values a lane adds in sequence
// (ops/norm.py).
#ifdef BN_S
#include "lanes.h"

#ifndef BN_ROWS
#define BN_ROWS 1 // rows per work-item
#endif
#define BN_BODY (BN_S / LANES * LANES) // a plane's values that fill the vector lanes

// Training forward, the statistics of slice k of channel c (as bn_slice_statistics).
__kernel void bn_rows_statistics(const int n_valid, const int channels,
                                 __global const float* x, const int xo, __global float* partial, const int po)
{
    const int k = get_global_id(0), c = get_global_id(1);
    const int first = k * BN_ROWS, last = min(first + BN_ROWS, n_valid), stride = channels * BN_S;
    __global const float* xc = x + xo + c * BN_S;
    float16 body = 0.0f;
    __attribute__((aligned(64))) float tail[LANES];
    #pragma unroll
    for (int j = 0; j < BN_S - BN_BODY; j++) tail[j] = 0.0f;
    for (int r = first; r < last; r++) {
        __global const float* p = xc + r * stride;
        for (int j = 0; j < BN_BODY; j += LANES) body += load16(p + j);
        #pragma unroll
        for (int j = BN_BODY; j < BN_S; j++) tail[j - BN_BODY] += p[j];
    }
    const int m = max(last - first, 0) * BN_S;
    const float mean = m > 0 ? lanes_total(body, tail, BN_S - BN_BODY) / (float)m : 0.0f;
    body = 0.0f;
    #pragma unroll
    for (int j = 0; j < BN_S - BN_BODY; j++) tail[j] = 0.0f;
    for (int r = first; r < last; r++) {
        __global const float* p = xc + r * stride;
        for (int j = 0; j < BN_BODY; j += LANES) {
            const float16 d = load16(p + j) - mean;
            body += d * d;
        }
        #pragma unroll
        for (int j = BN_BODY; j < BN_S; j++) {
            const float d = p[j] - mean;
            tail[j - BN_BODY] += d * d;
        }
    }
    partial[po + (k * channels + c) * 2] = mean;
    partial[po + (k * channels + c) * 2 + 1] = lanes_total(body, tail, BN_S - BN_BODY);
}

// The element-wise kernels' work-item (k, q) takes the rows [k * BN_ROWS, (k + 1) * BN_ROWS) of
// the channels [q * BN_CHANNELS, (q + 1) * BN_CHANNELS): one channel for planes long enough to fill
// the vector lanes; several where S is short, so that the loop over channels is the long one (for
// S = 1, a row's channels are contiguous).
#ifndef BN_CHANNELS
#define BN_CHANNELS 1 // channels per work-item of the element-wise kernels
#endif

// y = act((x - mean) * invstd * w + b) over the work-item's planes, invstd read from spread or,
// with `variance` (evaluation), 1 / sqrt(spread + eps).
inline void bn_rows_apply(const int rows, const int channels, const float eps, const bool variance,
                          __global const float* x, const int xo, __global float* y, const int yo,
                          __global const float* w, const int wo, __global const float* b, const int bo,
                          __global const float* mean, const int mo, __global const float* spread, const int so)
{
    const int first = get_global_id(0) * BN_ROWS, last = min(first + BN_ROWS, rows);
    const int c0 = get_global_id(1) * BN_CHANNELS, c1 = min(c0 + BN_CHANNELS, channels);
    for (int r = first; r < last; r++) {
        for (int c = c0; c < c1; c++) {
            const float m = mean[mo + c];
            const float2 affine = bn_affine(c, variance ? 1.0f / sqrt(spread[so + c] + eps) : spread[so + c],
                                            w, wo, b, bo);
            const int p = (r * channels + c) * BN_S;
            for (int j = 0; j < BN_S; j++) y[yo + p + j] = act_forward((x[xo + p + j] - m) * affine.x + affine.y);
        }
    }
}

// Training forward, padded rows included (as bn_normalize).
__kernel void bn_rows_normalize(const int rows, const int channels,
                                __global const float* x, const int xo, __global float* y, const int yo,
                                __global const float* w, const int wo, __global const float* b, const int bo,
                                __global const float* save_mean, const int smo,
                                __global const float* save_invstd, const int sio)
{
    bn_rows_apply(rows, channels, 0.0f, false, x, xo, y, yo, w, wo, b, bo, save_mean, smo, save_invstd, sio);
}

// Evaluation forward (as bn_forward_eval).
__kernel void bn_rows_forward_eval(const int rows, const int channels, const float eps,
                                   __global const float* x, const int xo, __global float* y, const int yo,
                                   __global const float* w, const int wo, __global const float* b, const int bo,
                                   __global const float* running_mean, const int rmo,
                                   __global const float* running_var, const int rvo)
{
    bn_rows_apply(rows, channels, eps, true, x, xo, y, yo, w, wo, b, bo, running_mean, rmo, running_var, rvo);
}

// Training backward, the sums of slice k of channel c (as bn_slice_gradient_sums).
__kernel void bn_rows_gradient_sums(const int n_valid, const int channels,
                                    __global const float* x, const int xo, __global const float* y, const int yo,
                                    __global const float* dy, const int dyo,
                                    __global const float* save_mean, const int smo,
                                    __global float* partial, const int po)
{
    const int k = get_global_id(0), c = get_global_id(1);
    const int first = k * BN_ROWS, last = min(first + BN_ROWS, n_valid), stride = channels * BN_S;
    const float mean = save_mean[smo + c];
    float16 body_g = 0.0f, body_gx = 0.0f;
    __attribute__((aligned(64))) float tail_g[LANES], tail_gx[LANES];
    #pragma unroll
    for (int j = 0; j < BN_S - BN_BODY; j++) tail_g[j] = tail_gx[j] = 0.0f;
    for (int r = first; r < last; r++) {
        const int p = r * stride + c * BN_S;
        for (int j = 0; j < BN_BODY; j += LANES) {
            const float16 g = act_grad16(dy + dyo + p + j, y + yo + p + j);
            body_g += g;
            body_gx += g * (load16(x + xo + p + j) - mean);
        }
        #pragma unroll
        for (int j = BN_BODY; j < BN_S; j++) {
            const float g = BN_GRAD(p + j);
            tail_g[j - BN_BODY] += g;
            tail_gx[j - BN_BODY] += g * (x[xo + p + j] - mean);
        }
    }
    partial[po + (k * channels + c) * 2] = lanes_total(body_g, tail_g, BN_S - BN_BODY);
    partial[po + (k * channels + c) * 2 + 1] = lanes_total(body_gx, tail_gx, BN_S - BN_BODY);
}

// Training backward (as bn_input_gradient).
__kernel void bn_rows_input_gradient(const int rows, const int n_valid, const int channels,
                                     __global const float* x, const int xo, __global const float* y, const int yo,
                                     __global const float* dy, const int dyo, __global float* dx, const int dxo,
                                     __global const float* w, const int wo,
                                     __global const float* save_mean, const int smo,
                                     __global const float* save_invstd, const int sio,
                                     __global const float* means, const int mo)
{
    const int first = get_global_id(0) * BN_ROWS, last = min(first + BN_ROWS, rows);
    const int c0 = get_global_id(1) * BN_CHANNELS, c1 = min(c0 + BN_CHANNELS, channels);
    for (int r = first; r < last; r++) {
        for (int c = c0; c < c1; c++) {
            const int p = (r * channels + c) * BN_S;
            if (r >= n_valid) {
                for (int j = 0; j < BN_S; j++) dx[dxo + p + j] = 0.0f;
                continue;
            }
            const float mean = save_mean[smo + c], invstd = save_invstd[sio + c];
            const float gain = bn_scale(c, invstd, w, wo);
            const float mean_g = means[mo + c], mean_gx = means[mo + channels + c];
            for (int j = 0; j < BN_S; j++) {
                const float xhat = (x[xo + p + j] - mean) * invstd;
                dx[dxo + p + j] = gain * (BN_GRAD(p + j) - mean_g - xhat * mean_gx);
            }
        }
    }
}
#endif
