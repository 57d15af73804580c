// Shared by every clnet kernel: activation codes and their derivatives, rounding helpers.
// The host passes -D options; each file documents its own tunables.

// Activation codes, chosen with -DACT=<code> (same numbering as clnet/ops/elementwise.py); LeakyReLU
// takes its negative slope as -DACT_SLOPE=<float literal>.
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_SIGMOID 2
#define ACT_TANH 3
#define ACT_RELU6 4
#define ACT_LEAKY_RELU 5
#define ACT_SILU 6

#ifndef ACT
#define ACT ACT_NONE
#endif

inline float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }

#ifndef ACT_SLOPE
#define ACT_SLOPE 0.0f  // (read only for LeakyReLU)
#endif

// Activation `code` applied to a pre-activation value x, `slope` LeakyReLU's negative slope. Every
// caller passes compile-time constants, which the compiler folds into the one case.
inline float act_apply(const float x, const int code, const float slope) {
    switch (code) {
    case ACT_RELU: return fmax(x, 0.0f);
    case ACT_SIGMOID: return sigmoid(x);
    case ACT_TANH: return tanh(x);
    case ACT_RELU6: return fmin(fmax(x, 0.0f), 6.0f);
    case ACT_LEAKY_RELU: return x > 0.0f ? x : slope * x;
    case ACT_SILU: return x * sigmoid(x);
    default: return x;
    }
}

// The activation ACT applied to a pre-activation value x.
inline float act_forward(float x) { return act_apply(x, ACT, ACT_SLOPE); }

// d act / d x written with the activation's output y, so backward needs only the output (LeakyReLU:
// for a slope >= 0, where y > 0 exactly when x > 0); `code` and `slope` as act_apply's.
inline float act_grad_apply(const float y, const int code, const float slope) {
    switch (code) {
    case ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
    case ACT_SIGMOID: return y * (1.0f - y);
    case ACT_TANH: return 1.0f - y * y;
    case ACT_RELU6: return y > 0.0f && y < 6.0f ? 1.0f : 0.0f;
    case ACT_LEAKY_RELU: return y > 0.0f ? 1.0f : slope;
    case ACT_SILU: return NAN;  // not a function of y: SiLU's backward reads its input (act_grad_from_input)
    default: return 1.0f;
    }
}

// That of the activation ACT.
inline float act_grad_from_output(float y) { return act_grad_apply(y, ACT, ACT_SLOPE); }

// d act / d x written with the input x, for activations whose derivative the output does not
// determine: SiLU, and LeakyReLU of a negative slope.
inline float act_grad_from_input(float x) {
#if ACT == ACT_SILU
    const float s = sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
#elif ACT == ACT_LEAKY_RELU
    return x > 0.0f ? 1.0f : (ACT_SLOPE);
#else
    return act_grad_from_output(act_forward(x));
#endif
}

// 16 consecutive floats from any (4-byte aligned) address. Two halves, because vload16 of PoCL 3.0
// (pip's pocl-binary-distribution) fills only the first 8 lanes.
inline float16 load16(__global const float* p) { return (float16)(vload8(0, p), vload8(0, p + 8)); }

// Counter-based random numbers for dropout and augmentation: Philox4x32-10 (Salmon, Moraes, Dror and
// Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011): ten rounds of two 32 x 32 -> 64-bit
// multiplications mixing a 128-bit counter under a 64-bit key (the seed).

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
