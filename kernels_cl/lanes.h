// Sums in explicit vector lanes for the CPU family's kernels that walk contiguous planes (PoCL does
// not vectorise a float sum loop, as that would reorder it): value j of a plane goes to lane
// j % LANES, the planes' first S / LANES * LANES values (the body) in a float16 and the last
// S % LANES in an aligned array of their own (the tail), the lanes added pairwise at the end: a
// fixed order that depends on the positions only.

#define LANES 16

// The sum of the lanes, pairwise.
inline float lane_sum(const float16 v) {
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    const float2 d = b.lo + b.hi;
    return d.x + d.y;
}

// The sum of the body's lanes and the tail's first `used` (an array indexed by constants once
// unrolled; 64-byte aligned and read as a vector, not by vload16: PoCL 3.0's fills only 8 lanes).
inline float lanes_total(const float16 body, float* tail, const int used) {
    #pragma unroll
    for (int j = used; j < LANES; j++) tail[j] = 0.0f;
    return lane_sum(body) + lane_sum(*(const float16*)tail);
}

// dy * act'(y) (ACT, common.h) of the LANES values from dy and y on.
inline float16 act_grad16(__global const float* dy, __global const float* y) {
#if ACT == ACT_NONE
    return load16(dy);
#else
    __attribute__((aligned(64))) float d[LANES];  // as in lanes_total, no vload16 / vstore16
    *(float16*)d = load16(y);
    #pragma unroll
    for (int l = 0; l < LANES; l++) d[l] = act_grad_from_output(d[l]);
    return load16(dy) * *(const float16*)d;
#endif
}
