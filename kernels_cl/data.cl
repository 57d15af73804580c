// The input stage of every plan: gather a batch from a source of images (the whole dataset in
// device memory, or the batch just uploaded) through an index list, convert it to float, normalise
// it per channel and, when training, augment it, all in one pass.
//
// One launch gathers a batch's images and, with TARGETS, its targets: a launch fewer a step, where a
// launch may cost tens of microseconds (PoCL on a 16-core Xeon: 54-68 us for an empty kernel).
// SRC_UINT8 reads 8-bit images, scaled by `scale` (1/255); otherwise floats. TARGET_FLOAT gathers
// float targets (rows of `width`), otherwise int labels.

#ifdef SRC_UINT8
#define SRC_T uchar
#else
#define SRC_T float
#endif

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
    if (dy == 0 && dx == 0 && !mirror) {  // the row as it is, 8 values at a time (a CPU's lanes)
        int w = 0;
        for (; w + 8 <= W; w += 8)
            vstore8((convert_float8(vload8(0, row + w)) * scale - mean) * inv_std, 0, dst + w);
        for (; w < W; w++) dst[w] = ((float)row[w] * scale - mean) * inv_std;
        return;
    }
    for (int w = 0; w < W; w++) {
        const int sw = (mirror ? W - 1 - w : w) + dx;
        const float v = (sh >= 0 && sh < H && sw >= 0 && sw < W) ? (float)row[sw] * scale : 0.0f;
        dst[w] = (v - mean) * inv_std;
    }
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

// Work-items 0 .. rows * C * H - 1 gather the images' rows (gather_image_row); with TARGETS the next
// rows * width gather target_out[b, j] = target_src[order[start + b], j] for rows b < n_valid
// (width values a row), zeros after.
__kernel void gather_batch(const int rows, const int n_valid, const int start, const int C,
                           const int H, const int W, const float scale, const int crop, const int flip,
                           const uint seed_lo, const uint seed_hi, const uint step, const uint first_row,
                           __global const int* restrict order, const int oo,
                           __global const SRC_T* restrict src, const int so,
                           __global const float* restrict norm, const int no,
                           __global float* restrict out, const int outo TARGET_ARGS)
{
    const int r = get_global_id(0), image_rows = rows * C * H;
    if (r < image_rows) {
        gather_image_row(r, n_valid, start, C, H, W, scale, crop, flip, seed_lo, seed_hi, step, first_row,
                         order + oo, src + so, norm + no, out + outo);
        return;
    }
#if TARGETS
    const int i = r - image_rows;
    if (i >= rows * width) return;
    const int b = i / width, j = i % width;
    target_out[too + i] = b < n_valid ? target_src[tso + order[oo + start + b] * width + j] : (TARGET_T)0;
#endif
}
