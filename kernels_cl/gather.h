// The input stage's gather, by image rows, whole images or target values: included by data.cl
// (gather_batch, a launch of its own) and dense_chain.cl (the gather taken into a chain's launch,
// CHAIN_GATHER).
// SRC_UINT8 reads 8-bit images, scaled by `scale` (1/255); otherwise floats. TARGET_FLOAT gathers
// float targets (rows of `width`), otherwise int labels.

#ifdef SRC_UINT8
#define SRC_T uchar
#else
#define SRC_T float
#endif

// to[i] = (from[i] * scale - mean) * inv_std for i < count, 8 values at a time (a CPU's lanes).
inline void normalize_run(__global const SRC_T* restrict from, __global float* restrict to, const int count,
                          const float scale, const float mean, const float inv_std)
{
    int i = 0;
    for (; i + 8 <= count; i += 8)
        vstore8((convert_float8(vload8(0, from + i)) * scale - mean) * inv_std, 0, to + i);
    for (; i < count; i++) to[i] = ((float)from[i] * scale - mean) * inv_std;
}

// Row r = (b, c, h) of out[b] = normalise(augment(src[order[start + b]] * scale)) for rows
// b < n_valid, zeros after. norm holds mean[c] then 1/std[c] per channel. Augmentation per sample,
// from Philox keyed by the seed with counter (first_row + b, step): the same whether the batch was
// uploaded or gathered on the device, and for a replica's shard (rows first_row... of the global
// batch) as for the whole batch: first a shift of the image by (dy, dx) in [-crop, crop] with zero
// fill (a random crop of the image padded by `crop`), then, when `flip`, a horizontal mirror with
// probability 1/2.
inline void gather_image_row(const int r, const int n_valid, const int start, const int C, const int H,
                             const int W, const float scale, const int crop, const int flip, const uint seed_lo,
                             const uint seed_hi, const uint step, const uint first_row,
                             __global const int* restrict order, __global const SRC_T* restrict src,
                             __global const float* restrict norm, __global float* restrict out)
{
    const int h = r % H, c = (r / H) % C, b = r / (C * H);
    __global float* dst = out + r * W;
    if (b >= n_valid) {
        for (int w = 0; w < W; w++) dst[w] = 0.0f;
        return;
    }
    int dy = 0, dx = 0, mirror = 0;
    if (crop > 0 || flip) {
        const uint4 draw = philox4x32_10((uint4)(first_row + (uint)b, step, 0u, 0u), (uint2)(seed_lo, seed_hi));
        dy = (int)(draw.x % (uint)(2 * crop + 1)) - crop;
        dx = (int)(draw.y % (uint)(2 * crop + 1)) - crop;
        mirror = flip && (draw.z & 1u);
    }
    const float mean = norm[c], inv_std = norm[C + c];
    const int sh = h + dy;
    __global const SRC_T* row = src + ((size_t)order[start + b] * C + c) * H * W + sh * W;
    if (dy == 0 && dx == 0 && !mirror) {  // the row as it is
        normalize_run(row, dst, W, scale, mean, inv_std);
        return;
    }
    for (int w = 0; w < W; w++) {
        const int sw = (mirror ? W - 1 - w : w) + dx;
        const float v = (sh >= 0 && sh < H && sw >= 0 && sw < W) ? (float)row[sw] * scale : 0.0f;
        dst[w] = (v - mean) * inv_std;
    }
}

// The arguments of a gather but for its rows and output, in every kernel that gathers.
#define GATHER_ARGS const int n_valid, const int start, const int C, const int H, const int W, const float scale, \
                    const int crop, const int flip, const uint seed_lo, const uint seed_hi, const uint step, \
                    const uint first_row, __global const int* restrict order, const int oo, \
                    __global const SRC_T* restrict src, const int so, __global const float* restrict norm, const int no

// Image b of out as gather_image_row's rows of it would make it, where nothing augments it a channel's
// plane at a time (a work-item gathering whole images, dense_chain's, gets no vectors from PoCL
// across work-items, as gather_batch's rows do).
inline void gather_image(const int b, const int n_valid, const int start, const int C, const int H, const int W,
                         const float scale, const int crop, const int flip, const uint seed_lo, const uint seed_hi,
                         const uint step, const uint first_row, __global const int* restrict order,
                         __global const SRC_T* restrict src, __global const float* restrict norm,
                         __global float* restrict out)
{
    if (crop > 0 || flip || b >= n_valid) {
        for (int r = b * C * H; r < (b + 1) * C * H; r++)
            gather_image_row(r, n_valid, start, C, H, W, scale, crop, flip, seed_lo, seed_hi, step, first_row,
                             order, src, norm, out);
        return;
    }
    const int plane = H * W;
    for (int c = 0; c < C; c++)
        normalize_run(src + ((size_t)order[start + b] * C + c) * plane, out + ((size_t)b * C + c) * plane, plane,
                      scale, norm[c], norm[C + c]);
}

#if TARGETS
#ifdef TARGET_FLOAT
#define TARGET_T float
#else
#define TARGET_T int
#endif
#define TARGET_ARGS , const int width, __global const TARGET_T* restrict target_src, const int tso, \
                      __global TARGET_T* restrict target_out, const int too
#else
#define TARGET_ARGS
#endif

// target_out[b, j] = target_src[order[start + b], j] (rows of `width` values) for rows b < n_valid,
// zeros after.
#define GATHER_TARGET(b, j) \
    target_out[too + (b) * width + (j)] = (b) < n_valid ? target_src[tso + order[oo + start + (b)] * width + (j)] \
                                                        : (TARGET_T)0;
