// Batch normalisation (torch.nn.BatchNorm1d / BatchNorm2d) of a tensor seen as (N, C, S): S = H * W
// for images, 1 (or the length L) for features. Statistics run over the N * S values of a channel.
//
// Only the first n_valid rows of a (possibly padded) batch count: they give the statistics and the
// gradients; the input gradient of the other rows is zero.
//
// Training reduces each channel in slices of BN_SLICE values, one work-group a slice, so that a
// channel of many values occupies many compute units; then a channel's slices are combined in order
// and the result applied element by element. On the GPU family the applying kernels combine the
// slices themselves (bn_normalize, bn_input_gradient: two launches a pass, bn_count_batch a third
// with CUMULATIVE); the CPU family has kernels of its own for the slices and the element-wise
// passes (bn_rows_*, at the end), whose work-items combine their channels' slices likewise; a
// backward without dx combines them a work-item a channel (bn_combine_gradient_sums). All combine
// with the same arithmetic (bn_combine_slices, bn_combine_gradient_slices).
// Every sum is deterministic: within a slice each work-item adds the elements e = start + lid, +
// BN_LOCAL, ... in order, then a fixed tree over the work-group; the slices are combined in order.
// Which slice and work-item takes an element depends on e only, so a padded batch gives the same
// sums as the unpadded one.
//
// The GPU family's kernels take the plane size S as BN_S, and the applying kernels their block of
// channels as BN_BLOCK, compile-time constants: the index arithmetic of every element divides by
// them, a multiplication where a division by a run-time value is dozens of instructions.
//
// AFFINE: weight and bias exist (else the w, b, dw, db arguments are placeholders).
// CUMULATIVE: momentum=None, the running statistics are a cumulative average (factor 1 / count).
// ACT: an activation fused after the normalisation (common.h): the forward kernels write act(y),
// and the backward pass takes the gradient of that output and the output itself (y), applying
// act'(y) as it reads dy, so the activation costs no pass of its own.
// RESIDUAL: the forward kernels add res, a residual Add's other input, before the activation: they
// write act(y + res), so that a ResNet block's normalisation, sum and ReLU are one pass (else res is a
// placeholder). The compiler then hands the backward pass the gradient before the activation.

#ifdef RESIDUAL
#define PLUS_RESIDUAL(at) + res[reso + (at)]
#define PLUS_SHORTCUT(u) + shortcut[u]
#else
#define PLUS_RESIDUAL(at)
#define PLUS_SHORTCUT(u)
#endif

#ifndef BN_LOCAL
#define BN_LOCAL 256 // work-items of a reducing work-group; a power of two
#endif
#ifndef BN_SLICE
#define BN_SLICE 4096 // values of a channel per reducing work-group; a multiple of BN_LOCAL (CPU: BN_ROWS * BN_S)
#endif
#ifndef BN_APPLY_LOCAL
#define BN_APPLY_LOCAL 256 // work-items of a GPU applying work-group, and the most channels it combines
#endif
#ifndef BN_S
#define BN_S 1 // the plane size, given to every kernel that reads planes (1 in a program built for another)
#endif
#ifndef BN_BLOCK
#define BN_BLOCK 1 // a GPU applying work-group's channels, given to those kernels
#endif
#ifndef BN_STAGE
#define BN_STAGE 1024 // slice pairs a GPU applying work-group stages in local memory at a time; >= BN_APPLY_LOCAL
#endif
// The GPU family's applying kernels load BN_UNROLL of a work-item's values (BN_APPLY_LOCAL apart)
// before they store any: their loads are then in flight together, where a loop that stored each
// value as it came would wait on global memory once a value (a store could alias the next load, for
// all the compiler knows). 8 rather than 4 took these kernels of resnet20 at batch 512 from 1.05
// to 0.97 ms a step on an H100 (16: as 8). The reducing kernels, whose loops only add, gained
// nothing so (4 took them half as long again).
#ifndef BN_UNROLL
#define BN_UNROLL 8
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
__kernel void bn_slice_statistics(const int n_valid, const int channels,
                                  __global const float* x, const int xo, __global float* partial, const int po)
{
    __local float scratch[BN_LOCAL];
    const int spatial = BN_S;
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

// A channel's statistics over its m valid values: the batch mean, biased variance and 1 / std.
typedef struct { float mean, var, invstd; } bn_statistics;

// The slices of a channel's m values that hold any: the first min(slices, ceil(m / BN_SLICE)).
inline int bn_slices_used(const int slices, const int m) {
    return min(slices, (m + BN_SLICE - 1) / BN_SLICE);
}

// The pair a reducing kernel wrote for slice k of channel c: partial[(k * channels + c) * 2 + 0, 1].
inline float2 bn_partial(__global const float* partial, const int po, const int k, const int channels, const int c) {
    const int i = po + (k * channels + c) * 2;
    return (float2)(partial[i], partial[i + 1]);
}

// The union of a channel's first slices: its values, their mean and their squared deviations from it.
typedef struct { float n, mean, squares; } bn_union;

// The union grown by slice k of the channel's m values, of which `slice` holds the mean and the
// squared deviations (bn_slice_statistics): those of two parts make those of their union.
inline void bn_absorb_slice(bn_union* u, const int k, const int m, const float2 slice) {
    const int2 range = bn_slice(k, m);
    const float n_k = (float)(range.y - range.x), union_n = u->n + n_k;
    const float delta = slice.x - u->mean;
    u->mean += delta * (n_k / union_n);
    u->squares += slice.y + delta * delta * (u->n * n_k / union_n);
    u->n = union_n;
}

// A channel's statistics from the union of all its m values' slices.
inline bn_statistics bn_statistics_of(const bn_union u, const int m, const float eps) {
    bn_statistics s;
    s.mean = u.mean;
    s.var = u.squares / (float)m;
    s.invstd = 1.0f / sqrt(s.var + eps);
    return s;
}

// Channel c's statistics from its slices', combined in order.
inline bn_statistics bn_combine_slices(const int m, const float eps, const int channels, const int c,
                                       const int slices, __global const float* partial, const int po)
{
    bn_union u = {0.0f, 0.0f, 0.0f};
    for (int k = 0; k < bn_slices_used(slices, m); k++)
        bn_absorb_slice(&u, k, m, bn_partial(partial, po, k, channels, c));
    return bn_statistics_of(u, m, eps);
}

// What channel c's statistics leave to the rest of the step, written once a step: mean and 1 / std
// saved for backward, the running statistics updated with the unbiased variance. A channel with a
// single valid value leaves running_var as it is (its unbiased variance does not exist; PyTorch
// refuses such a batch). Channel 0 counts the batch in num_batches_tracked, unless CUMULATIVE,
// where every channel reads the count and bn_count_batch increments it afterwards.
inline void bn_record_statistics(const int c, const int m, const bn_statistics s, const float momentum,
                                 __global float* running_mean, const int rmo,
                                 __global float* running_var, const int rvo,
                                 __global float* count, const int co,
                                 __global float* save_mean, const int smo,
                                 __global float* save_invstd, const int sio)
{
    save_mean[smo + c] = s.mean;
    save_invstd[sio + c] = s.invstd;
#ifdef CUMULATIVE
    const float factor = 1.0f / (count[co] + 1.0f);
#else
    const float factor = momentum;
    if (c == 0) count[co] += 1.0f;
#endif
    running_mean[rmo + c] = (1.0f - factor) * running_mean[rmo + c] + factor * s.mean;
    if (m > 1)
        running_var[rvo + c] = (1.0f - factor) * running_var[rvo + c] + factor * (s.var * (float)m / (float)(m - 1));
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

// The GPU family's applying kernels: work-group (k = group 0, b = group 1) takes the block b of
// BN_BLOCK channels [b * BN_BLOCK, (b + 1) * BN_BLOCK) (fewer in the last block) and chunk k of the
// block's values in memory order: a row's values of the block's channels are contiguous, so that
// where planes are short a work-group still reads runs of about BN_APPLY_LOCAL values (the host
// gives a block BN_APPLY_LOCAL / S channels, one where S is larger; BatchNorm1d: S = 1). The
// work-group stages the block's channels' slices in local memory (bn_stage_slices) and its first
// work-items combine them, one channel each, with the arithmetic of the combining kernels; those of
// chunk 0 also write what the combination leaves to the rest of the step, exactly once per
// channel, and no work-group reads what another writes.

// Value e of the block of in_block channels from c0 (in_block * BN_S values a row, in memory
// order): .x its address relative to the tensor start, .y its channel's place in the block. The
// divisions are by compile-time constants (multiplications) for every block but a shorter last one.
inline int2 bn_block_element(const int e, const int c0, const int in_block, const int channels)
{
    const int width = in_block * BN_S;
    const int r = in_block == BN_BLOCK ? e / (BN_BLOCK * BN_S) : e / width, v = e - r * width;
    return (int2)((r * channels + c0) * BN_S + v, v / BN_S);
}

// The values [first, last) of the block of channels from c0 that chunk k takes, `width` per row.
inline int2 bn_chunk(const int k, const int chunk, const int rows, const int width)
{
    const int first = k * chunk;
    return (int2)(first, min(first + chunk, rows * width));
}

// The pairs of slices [k0, k0 + count) of the block's in_block channels from c0, loaded by the
// whole work-group at once: staged[j * in_block + i] = the pair of slice k0 + j of channel c0 + i.
// A channel's work-item then combines them from local memory, in order, where its loads one after
// another would each wait for global memory (a channel may have a hundred slices and more).
inline void bn_stage_slices(__local float2* staged, const int k0, const int count, const int c0, const int in_block,
                            const int channels, __global const float* partial, const int po)
{
    barrier(CLK_LOCAL_MEM_FENCE);  // the pairs staged before are read
    for (int i = get_local_id(0); i < count * in_block; i += BN_APPLY_LOCAL) {
        const int j = i / in_block;
        staged[i] = bn_partial(partial, po, k0 + j, channels, c0 + i - j * in_block);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

// The training forward's tensors (bn_normalize, bn_rows_normalize): input, output, weight and bias,
// the slices' statistics, and what the combined statistics update.
#define BN_NORMALIZE_ARGS \
    __global const float* x, const int xo, __global float* y, const int yo, __global const float* res, const int reso, \
    __global const float* w, const int wo, __global const float* b, const int bo, \
    __global const float* partial, const int po, \
    __global float* running_mean, const int rmo, __global float* running_var, const int rvo, \
    __global float* count, const int co, __global float* save_mean, const int smo, \
    __global float* save_invstd, const int sio

// Training forward: the channels' statistics combined (and, by chunk 0, recorded: bn_record_statistics)
// and y = act((x - mean) * invstd * w + b (+ res)) over the chunk, padded rows included.
__kernel void bn_normalize(const int n_valid, const int rows, const int channels, const int chunk, const int slices,
                           const float eps, const float momentum, BN_NORMALIZE_ARGS)
{
    __local float mean[BN_APPLY_LOCAL], scale[BN_APPLY_LOCAL], shift[BN_APPLY_LOCAL];
    __local float2 staged[BN_STAGE];
    const int k = get_group_id(0), c0 = get_group_id(1) * BN_BLOCK, lid = get_local_id(0);
    const int in_block = min(BN_BLOCK, channels - c0), width = in_block * BN_S;
    const int2 range = bn_chunk(k, chunk, rows, width);
    if (range.x >= range.y) return;  // past the last block's values: the whole work-group
    const int m = n_valid * BN_S, used = bn_slices_used(slices, m), per_round = BN_STAGE / in_block;
    bn_union u = {0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < used; k0 += per_round) {
        const int staging = min(per_round, used - k0);
        bn_stage_slices(staged, k0, staging, c0, in_block, channels, partial, po);
        for (int j = 0; lid < in_block && j < staging; j++)
            bn_absorb_slice(&u, k0 + j, m, staged[j * in_block + lid]);
    }
    if (lid < in_block) {
        const int c = c0 + lid;
        const bn_statistics s = bn_statistics_of(u, m, eps);
        if (k == 0)
            bn_record_statistics(c, m, s, momentum, running_mean, rmo, running_var, rvo, count, co,
                                 save_mean, smo, save_invstd, sio);
        const float2 affine = bn_affine(c, s.invstd, w, wo, b, bo);
        mean[lid] = s.mean;
        scale[lid] = affine.x;
        shift[lid] = affine.y;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e0 = range.x + lid; e0 < range.y; e0 += BN_UNROLL * BN_APPLY_LOCAL) {
        int2 at[BN_UNROLL];
        float v[BN_UNROLL], shortcut[BN_UNROLL];  // the residual's values, loaded with x's (else unused)
        #pragma unroll
        for (int u = 0; u < BN_UNROLL; u++) {  // past the chunk's end: its last value again, not stored
            at[u] = bn_block_element(min(e0 + u * BN_APPLY_LOCAL, range.y - 1), c0, in_block, channels);
            v[u] = x[xo + at[u].x];
#ifdef RESIDUAL
            shortcut[u] = res[reso + at[u].x];
#endif
        }
        #pragma unroll
        for (int u = 0; u < BN_UNROLL && e0 + u * BN_APPLY_LOCAL < range.y; u++)
            y[yo + at[u].x] = act_forward((v[u] - mean[at[u].y]) * scale[at[u].y] + shift[at[u].y]
                                          PLUS_SHORTCUT(u));
    }
}

// num_batches_tracked += 1, after a CUMULATIVE forward has read it. One work-item.
__kernel void bn_count_batch(__global float* count, const int co)
{
    if (get_global_id(0) == 0) count[co] += 1.0f;
}

// Evaluation forward with the running statistics, one work-item per element of the n x C x S tensor.
__kernel void bn_forward_eval(const int total, const int channels, const int spatial, const float eps,
                              __global const float* x, const int xo, __global float* y, const int yo,
                              __global const float* res, const int reso,
                              __global const float* w, const int wo, __global const float* b, const int bo,
                              __global const float* running_mean, const int rmo,
                              __global const float* running_var, const int rvo)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int c = (i / spatial) % channels;
    const float2 affine = bn_affine(c, 1.0f / sqrt(running_var[rvo + c] + eps), w, wo, b, bo);
    y[yo + i] = act_forward((x[xo + i] - running_mean[rmo + c]) * affine.x + affine.y PLUS_RESIDUAL(i));
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
// BN_GRAD_OF(d, out): g from dy's value d and y's value out (not read without an activation).
#if ACT == ACT_NONE
#define BN_GRAD_OF(d, out) (d)
#else
#define BN_GRAD_OF(d, out) ((d) * act_grad_from_output(out))
#endif
#define BN_GRAD(i) BN_GRAD_OF(dy[dyo + (i)], y[yo + (i)])

// Training backward, the sums of slice k = group 0 of channel c = group 1: of g and of
// g * (x - mean), into partial[(k * channels + c) * 2 + 0, 1].
__kernel void bn_slice_gradient_sums(const int n_valid, const int channels,
                                     __global const float* x, const int xo, __global const float* y, const int yo,
                                     __global const float* dy, const int dyo,
                                     __global const float* save_mean, const int smo,
                                     __global float* partial, const int po)
{
    __local float scratch[BN_LOCAL];
    const int spatial = BN_S;
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

// Channel c's gradient sums from its slices' (bn_slice_gradient_sums), added in order:
// (sum of g, sum of g * (x - mean)).
inline float2 bn_combine_gradient_slices(const int m, const int channels, const int c, const int slices,
                                         __global const float* partial, const int po)
{
    float2 sums = (float2)(0.0f, 0.0f);
    for (int k = 0; k < bn_slices_used(slices, m); k++)
        sums += bn_partial(partial, po, k, channels, c);
    return sums;
}

// (sum of g, sum of g * xhat) from (sum of g, sum of g * (x - mean)): xhat = (x - mean) * invstd.
inline float2 bn_xhat_sums(const float2 sums, const float invstd) {
    return (float2)(sums.x, sums.y * invstd);
}

// Channel c's parameter gradients from its sums (AFFINE; nothing without): dw = sum(g * xhat), db = sum(g).
inline void bn_record_gradients(const int c, const float2 sums, __global float* dw, const int dwo,
                                __global float* db, const int dbo)
{
#ifdef AFFINE
    dw[dwo + c] = sums.y;
    db[dbo + c] = sums.x;
#endif
}

// Training backward without dx, one work-item per channel: the slices' sums combined, dw and db.
__kernel void bn_combine_gradient_sums(const int n_valid, const int channels, const int spatial, const int slices,
                                       __global const float* partial, const int po,
                                       __global const float* save_invstd, const int sio,
                                       __global float* dw, const int dwo, __global float* db, const int dbo)
{
    const int c = get_global_id(0);
    if (c >= channels) return;
    const int m = n_valid * spatial;
    const float2 sums = bn_xhat_sums(bn_combine_gradient_slices(m, channels, c, slices, partial, po), save_invstd[sio + c]);
    bn_record_gradients(c, sums, dw, dwo, db, dbo);
}

// Training backward on the GPU family, the blocks and chunks of bn_normalize: the channels' sums
// combined (dw and db written by chunk 0: bn_record_gradients) and dx over the chunk.
__kernel void bn_input_gradient(const int n_valid, const int rows, const int channels, const int chunk,
                                const int slices,
                                __global const float* x, const int xo, __global const float* y, const int yo,
                                __global const float* dy, const int dyo, __global float* dx, const int dxo,
                                __global const float* w, const int wo,
                                __global const float* save_mean, const int smo,
                                __global const float* save_invstd, const int sio,
                                __global const float* partial, const int po,
                                __global float* dw, const int dwo, __global float* db, const int dbo)
{
    __local float mean[BN_APPLY_LOCAL], invstd[BN_APPLY_LOCAL], gain[BN_APPLY_LOCAL];
    __local float mean_g[BN_APPLY_LOCAL], mean_gx[BN_APPLY_LOCAL];
    __local float2 staged[BN_STAGE];
    const int k = get_group_id(0), c0 = get_group_id(1) * BN_BLOCK, lid = get_local_id(0);
    const int in_block = min(BN_BLOCK, channels - c0), width = in_block * BN_S;
    const int2 range = bn_chunk(k, chunk, rows, width);
    if (range.x >= range.y) return;  // past the last block's values: the whole work-group
    const int m = n_valid * BN_S, used = bn_slices_used(slices, m), per_round = BN_STAGE / in_block;
    float2 added = (float2)(0.0f, 0.0f);
    for (int k0 = 0; k0 < used; k0 += per_round) {
        const int staging = min(per_round, used - k0);
        bn_stage_slices(staged, k0, staging, c0, in_block, channels, partial, po);
        for (int j = 0; lid < in_block && j < staging; j++)
            added += staged[j * in_block + lid];
    }
    if (lid < in_block) {
        const int c = c0 + lid;
        const float channel_invstd = save_invstd[sio + c];
        const float2 sums = bn_xhat_sums(added, channel_invstd);
        if (k == 0) bn_record_gradients(c, sums, dw, dwo, db, dbo);
        mean[lid] = save_mean[smo + c];
        invstd[lid] = channel_invstd;
        gain[lid] = bn_scale(c, channel_invstd, w, wo);
        mean_g[lid] = sums.x / (float)m;
        mean_gx[lid] = sums.y / (float)m;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int valid_end = n_valid * width;  // the chunk's values from here on are padded rows'
    for (int e0 = range.x + lid; e0 < range.y; e0 += BN_UNROLL * BN_APPLY_LOCAL) {
        int2 at[BN_UNROLL];
        float d[BN_UNROLL], out[BN_UNROLL], v[BN_UNROLL];
        #pragma unroll
        for (int u = 0; u < BN_UNROLL; u++) {  // past the chunk's end: its last value again, not stored
            at[u] = bn_block_element(min(e0 + u * BN_APPLY_LOCAL, range.y - 1), c0, in_block, channels);
            d[u] = dy[dyo + at[u].x];
            out[u] = y[yo + at[u].x];
            v[u] = x[xo + at[u].x];
        }
        #pragma unroll
        for (int u = 0; u < BN_UNROLL && e0 + u * BN_APPLY_LOCAL < range.y; u++) {
            const int2 a = at[u];
            const float xhat = (v[u] - mean[a.y]) * invstd[a.y];
            dx[dxo + a.x] = e0 + u * BN_APPLY_LOCAL < valid_end  // else a padded row's
                          ? gain[a.y] * (BN_GRAD_OF(d[u], out[u]) - mean_g[a.y] - xhat * mean_gx[a.y]) : 0.0f;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The CPU family (PoCL runs a work-group's work-items as a loop on one core and vectorises only
// simple loops): BN_S = S is a compile-time constant and every kernel walks whole (row, channel)
// planes, each S contiguous values, with no division per element. A slice is BN_ROWS rows of one
// channel (BN_SLICE = BN_ROWS * BN_S values, so that the combining functions above read its partial
// results as the GPU's): work-item (k, c) of an exact grid (work-groups of one) takes the rows
// [k * BN_ROWS, (k + 1) * BN_ROWS) of channel c. Sums run in lanes (lanes.h), added at the end of
// the slice: a fixed order that depends on the row and the position only, so a padded batch gives
// the unpadded one's sums. The host bounds BN_ROWS, and with it the values a lane adds in sequence
// (ops/norm.py). BN_ROWS, given with BN_S to every kernel of the family, builds this part.
#ifdef BN_ROWS
#include "lanes.h"

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

// The work-item's channels [c0, c1) and rows [first, last) of the element-wise kernels.
#define BN_ROWS_ITEM(rows) \
    const int first = get_global_id(0) * BN_ROWS, last = min(first + BN_ROWS, rows); \
    const int c0 = get_global_id(1) * BN_CHANNELS, c1 = min(c0 + BN_CHANNELS, channels);

// y = act((x - mean[c]) * affine[c].x + affine[c].y (+ res)) over the work-item's planes (its
// channels' mean and (scale, shift) from c0 on), in memory order.
inline void bn_rows_apply(const int rows, const int channels, __global const float* x, const int xo,
                          __global float* y, const int yo, __global const float* res, const int reso,
                          __local const float* mean, __local const float2* affine)
{
    BN_ROWS_ITEM(rows)
    for (int r = first; r < last; r++)
        for (int c = c0; c < c1; c++) {
            const float m = mean[c - c0];
            const float2 a = affine[c - c0];
            const int p = (r * channels + c) * BN_S;
            for (int j = 0; j < BN_S; j++)
                y[yo + p + j] = act_forward((x[xo + p + j] - m) * a.x + a.y PLUS_RESIDUAL(p + j));
        }
}

// Training forward (as bn_normalize), padded rows included: each work-item combines its channels'
// slices (BN_SLICE values each, in order: every work-item of a channel finds the same statistics),
// those of the first rows recording them (bn_record_statistics), and normalises its planes.
__kernel void bn_rows_normalize(const int n_valid, const int rows, const int channels, const int slices,
                                const float eps, const float momentum, BN_NORMALIZE_ARGS)
{
    BN_ROWS_ITEM(rows)
    __local float mean[BN_CHANNELS];
    __local float2 affine[BN_CHANNELS];
    const int m = n_valid * BN_S;
    for (int c = c0; c < c1; c++) {
        const bn_statistics s = bn_combine_slices(m, eps, channels, c, slices, partial, po);
        if (first == 0)
            bn_record_statistics(c, m, s, momentum, running_mean, rmo, running_var, rvo, count, co,
                                 save_mean, smo, save_invstd, sio);
        mean[c - c0] = s.mean;
        affine[c - c0] = bn_affine(c, s.invstd, w, wo, b, bo);
    }
    bn_rows_apply(rows, channels, x, xo, y, yo, res, reso, mean, affine);
}

// Evaluation forward (as bn_forward_eval).
__kernel void bn_rows_forward_eval(const int rows, const int channels, const float eps,
                                   __global const float* x, const int xo, __global float* y, const int yo,
                                   __global const float* res, const int reso,
                                   __global const float* w, const int wo, __global const float* b, const int bo,
                                   __global const float* running_mean, const int rmo,
                                   __global const float* running_var, const int rvo)
{
    BN_ROWS_ITEM(rows)
    __local float mean[BN_CHANNELS];
    __local float2 affine[BN_CHANNELS];
    for (int c = c0; c < c1; c++) {
        mean[c - c0] = running_mean[rmo + c];
        affine[c - c0] = bn_affine(c, 1.0f / sqrt(running_var[rvo + c] + eps), w, wo, b, bo);
    }
    bn_rows_apply(rows, channels, x, xo, y, yo, res, reso, mean, affine);
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

// Training backward (as bn_input_gradient): each work-item combines its channels' slices of the
// gradient sums (BN_SLICE values each, in order), those of the first rows writing dw and db
// (bn_record_gradients), and makes dx over its planes, zeros on the padded rows.
__kernel void bn_rows_input_gradient(const int rows, const int n_valid, const int channels, const int slices,
                                     __global const float* x, const int xo, __global const float* y, const int yo,
                                     __global const float* dy, const int dyo, __global float* dx, const int dxo,
                                     __global const float* w, const int wo,
                                     __global const float* save_mean, const int smo,
                                     __global const float* save_invstd, const int sio,
                                     __global const float* partial, const int po,
                                     __global float* dw, const int dwo, __global float* db, const int dbo)
{
    BN_ROWS_ITEM(rows)
    __local float2 means[BN_CHANNELS];  // the channel's mean of g and of g * xhat
    const int m = n_valid * BN_S;
    for (int c = c0; c < c1; c++) {
        const float2 sums = bn_xhat_sums(bn_combine_gradient_slices(m, channels, c, slices, partial, po),
                                         save_invstd[sio + c]);
        if (first == 0)
            bn_record_gradients(c, sums, dw, dwo, db, dbo);
        means[c - c0] = sums / (float)m;
    }
    for (int r = first; r < last; r++) {
        for (int c = c0; c < c1; c++) {
            const int p = (r * channels + c) * BN_S;
            if (r >= n_valid) {
                for (int j = 0; j < BN_S; j++) dx[dxo + p + j] = 0.0f;
                continue;
            }
            const float mean = save_mean[smo + c], invstd = save_invstd[sio + c];
            const float gain = bn_scale(c, invstd, w, wo);
            const float2 g = means[c - c0];
            for (int j = 0; j < BN_S; j++) {
                const float xhat = (x[xo + p + j] - mean) * invstd;
                dx[dxo + p + j] = gain * (BN_GRAD(p + j) - g.x - xhat * g.y);
            }
        }
    }
}
#endif
