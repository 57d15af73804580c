// Dropout: out = in * keep / (1 - p), with keep drawn from a counter-based generator, so that the
// mask needs no storage: forward (in = x, out = y) and backward (in = dy, out = dx) compute the same
// mask from the same counters.
//
// The generator is Philox4x32-10 (common.h), keyed by the layer's seed; the counter is (group of
// four elements, step, 0, 0), and each call gives the four 32-bit draws of elements 4g .. 4g+3.
// Elements are counted from `offset`: a replica's shard of a batch (offset = its first row times the
// elements of a row) draws the masks of the same elements of the whole batch.

// n elements; element i is kept when its draw is >= threshold (= round(p * 2^32)), which happens
// with probability 1 - threshold / 2^32, and then scaled by `scale` (= 1 / (1 - p)).
// One work-item per four consecutive elements.
__kernel void dropout_apply(const int n, const uint seed_lo, const uint seed_hi, const uint step,
                            const uint offset, const uint threshold, const float scale,
                            __global const float* in, const int ino,
                            __global float* out, const int outo)
{
    const int g = get_global_id(0);
    const int first = 4 * g;
    if (first >= n) return;
    // The four elements from global index e span one group of four, or two when e is not aligned.
    const uint e = offset + (uint)first, lane = e & 3u;
    const uint2 key = (uint2)(seed_lo, seed_hi);
    const uint4 a = philox4x32_10((uint4)(e >> 2, step, 0u, 0u), key);
    const uint4 b = lane ? philox4x32_10((uint4)((e >> 2) + 1u, step, 0u, 0u), key) : a;
    const uint draws[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    for (int j = 0; j < 4; j++) {
        const int i = first + j;
        if (i < n) out[outo + i] = draws[lane + j] >= threshold ? in[ino + i] * scale : 0.0f;
    }
}
