// Batch normalisation (torch.nn.BatchNorm1d / BatchNorm2d) of a tensor seen as (N, C, S): S = H * W
// for images, 1 (or the length L) for features. Statistics run over the N * S values of a channel.
//
// Only the first n_valid rows of a (possibly padded) batch count: they give the statistics and the
// gradients; the input gradient of the other rows is zero.
//
// The reductions are deterministic: one work-group per channel, each work-item adding the elements
// e = lid, lid + BN_LOCAL, ... of the channel in order, then a fixed tree over the work-group. The
// split of elements among work-items depends on e only, so a padded batch gives the same sums as
// the unpadded one.
//
// AFFINE: weight and bias exist (else the w, b, dw, db arguments are placeholders).
// CUMULATIVE: momentum=None, the running statistics are a cumulative average (factor 1 / count).
// NEED_DX: the backward pass writes the input gradient.
// ACT: an activation fused after the normalisation (common.h): the forward kernels write act(y),
// and the backward pass takes the gradient of that output and the output itself (y), applying
// act'(y) as it reads dy, so the activation costs no pass of its own.

#ifndef BN_LOCAL
#define BN_LOCAL 128 // work-items per channel; a power of two
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

// Training forward, one work-group per channel: batch mean and biased variance over the valid
// rows (two passes), saved mean and 1 / sqrt(var + eps) for backward, the running statistics
// updated with the unbiased variance, then y = (x - mean) / sqrt(var + eps) * w + b on every row.
// A channel with a single valid value leaves running_var as it is (its unbiased variance does not
// exist; PyTorch refuses such a batch). Work-group 0 counts the batch in num_batches_tracked, unless
// CUMULATIVE, where every group reads the count and bn_count_batch increments it afterwards.
__kernel void bn_forward_train(const int n_valid, const int n, const int channels, const int spatial,
                               const float eps, const float momentum,
                               __global const float* x, const int xo, __global float* y, const int yo,
                               __global const float* w, const int wo, __global const float* b, const int bo,
                               __global float* running_mean, const int rmo,
                               __global float* running_var, const int rvo,
                               __global float* count, const int co,
                               __global float* save_mean, const int smo,
                               __global float* save_invstd, const int sio)
{
    __local float scratch[BN_LOCAL];
    const int c = get_group_id(0), lid = get_local_id(0);
    const int m = n_valid * spatial;
    __global const float* xs = x + xo;

    float s = 0.0f;
    for (int e = lid; e < m; e += BN_LOCAL) s += xs[bn_index(e, c, channels, spatial)];
    const float mean = group_sum(scratch, s) / (float)m;

    float q = 0.0f;
    for (int e = lid; e < m; e += BN_LOCAL) {
        const float d = xs[bn_index(e, c, channels, spatial)] - mean;
        q += d * d;
    }
    const float var = group_sum(scratch, q) / (float)m;
    const float invstd = 1.0f / sqrt(var + eps);

    if (lid == 0) {
        save_mean[smo + c] = mean;
        save_invstd[sio + c] = invstd;
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

#ifdef AFFINE
    const float scale = invstd * w[wo + c], shift = b[bo + c];
#else
    const float scale = invstd, shift = 0.0f;
#endif
    const int total = n * spatial;
    for (int e = lid; e < total; e += BN_LOCAL) {
        const int i = bn_index(e, c, channels, spatial);
        y[yo + i] = act_forward((xs[i] - mean) * scale + shift);
    }
}

// num_batches_tracked += 1, after a CUMULATIVE forward has read it. One work-item.
__kernel void bn_count_batch(__global float* count, const int co)
{
    if (get_global_id(0) == 0) count[co] += 1.0f;
}

// Evaluation's normalisation of channel c as (scale, shift): y = (x - running_mean) * scale + shift.
inline float2 bn_eval_affine(const int c, const float eps, __global const float* w, const int wo,
                             __global const float* b, const int bo, __global const float* running_var, const int rvo)
{
    const float scale = 1.0f / sqrt(running_var[rvo + c] + eps);
#ifdef AFFINE
    return (float2)(scale * w[wo + c], b[bo + c]);
#else
    return (float2)(scale, 0.0f);
#endif
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
    const float2 affine = bn_eval_affine(c, eps, w, wo, b, bo, running_var, rvo);
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
    const float2 affine = bn_eval_affine(o, eps, w, wo, b, bo, running_var, rvo);
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

// Training backward, one work-group per channel. With xhat = (x - mean) * invstd over the valid rows
// and g = dy * act'(y) the gradient of the normalised value: db = sum(g), dw = sum(g * xhat),
// dx = w * invstd * (g - db / m - xhat * dw / m); dx = 0 on the padded rows.
#if ACT == ACT_NONE
#define BN_GRAD(i) dy[dyo + (i)]
#else
#define BN_GRAD(i) (dy[dyo + (i)] * act_grad_from_output(y[yo + (i)]))
#endif
__kernel void bn_backward(const int n_valid, const int n, const int channels, const int spatial,
                          __global const float* x, const int xo, __global const float* y, const int yo,
                          __global const float* dy, const int dyo,
                          __global float* dx, const int dxo,
                          __global const float* w, const int wo,
                          __global float* dw, const int dwo, __global float* db, const int dbo,
                          __global const float* save_mean, const int smo,
                          __global const float* save_invstd, const int sio)
{
    __local float scratch[BN_LOCAL];
    const int c = get_group_id(0), lid = get_local_id(0);
    const int m = n_valid * spatial;
    const float mean = save_mean[smo + c], invstd = save_invstd[sio + c];

    float s = 0.0f, t = 0.0f;
    for (int e = lid; e < m; e += BN_LOCAL) {
        const int i = bn_index(e, c, channels, spatial);
        const float g = BN_GRAD(i);
        s += g;
        t += g * (x[xo + i] - mean);
    }
    const float sum_dy = group_sum(scratch, s);
    const float sum_dy_xhat = group_sum(scratch, t) * invstd;

#ifdef AFFINE
    if (lid == 0) {
        dw[dwo + c] = sum_dy_xhat;
        db[dbo + c] = sum_dy;
    }
    const float gain = w[wo + c] * invstd;
#else
    const float gain = invstd;
#endif

#ifdef NEED_DX
    const float mean_dy = sum_dy / (float)m, mean_dy_xhat = sum_dy_xhat / (float)m;
    const int total = n * spatial;
    for (int e = lid; e < total; e += BN_LOCAL) {
        const int i = bn_index(e, c, channels, spatial);
        float g = 0.0f;
        if (e < m) g = gain * (BN_GRAD(i) - mean_dy - (x[xo + i] - mean) * invstd * mean_dy_xhat);
        dx[dxo + i] = g;
    }
#endif
}
