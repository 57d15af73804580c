// Dropout: out = in * keep / (1 - p), with keep drawn from a counter-based generator, so that the
// mask needs no storage: forward (in = x, out = y) and backward (in = dy, out = dx) compute the same
// mask from the same counters.
//
// The generator is Philox4x32-10 (common.h), keyed by the layer's seed; the counter is (group of
// four elements, step, 0, 0), and each call gives the four 32-bit draws of elements 4g .. 4g+3.

// n elements; element i is kept when its draw is >= threshold (= round(p * 2^32)), which happens
// with probability 1 - threshold / 2^32, and then scaled by `scale` (= 1 / (1 - p)).
// One work-item per four consecutive elements.
__kernel void dropout_apply(const int n, const uint seed_lo, const uint seed_hi, const uint step,
                            const uint threshold, const float scale,
                            __global const float* in, const int ino,
                            __global float* out, const int outo)
{
    const int g = get_global_id(0);
    const int first = 4 * g;
    if (first >= n) return;
    const uint4 r = philox4x32_10((uint4)((uint)g, step, 0u, 0u), (uint2)(seed_lo, seed_hi));
    const uint draws[4] = {r.x, r.y, r.z, r.w};
    for (int j = 0; j < 4; j++) {
        const int i = first + j;
        if (i < n) out[outo + i] = draws[j] >= threshold ? in[ino + i] * scale : 0.0f;
    }
}
