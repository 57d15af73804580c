// Dropout: out = in * keep / (1 - p), with keep drawn from a counter-based generator, so that the
// mask needs no storage: forward (in = x, out = y) and backward (in = dy, out = dx) compute the same
// mask from the same counters.
//
// The generator is Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy
// as 1, 2, 3", SC 2011): ten rounds of two 32 x 32 -> 64-bit multiplications mixing a 128-bit counter
// under a 64-bit key. Here the key is the layer's seed and the counter is (group of four elements,
// step, 0, 0); each call gives the four 32-bit draws of elements 4g .. 4g+3.

#define PHILOX_M0 0xD2511F53u  // round multipliers
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u  // key schedule increments (golden ratio, sqrt(3) - 1)
#define PHILOX_W1 0xBB67AE85u

inline uint4 philox_round(uint4 c, uint2 k) {
    const uint hi0 = mul_hi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
    const uint hi1 = mul_hi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
    return (uint4)(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
}

inline uint4 philox4x32_10(uint4 c, uint2 k) {
    for (int r = 0; r < 9; r++) {
        c = philox_round(c, k);
        k += (uint2)(PHILOX_W0, PHILOX_W1);
    }
    return philox_round(c, k);
}

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
