// Shared by every clnet kernel: activation codes and their derivatives, rounding helpers.
// The host passes -D options; each file documents its own tunables.

// Activation codes, chosen with -DACT=<code> (same numbering as clnet/ops/activations.py).
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_SIGMOID 2
#define ACT_TANH 3

#ifndef ACT
#define ACT ACT_NONE
#endif

// The activation applied to a pre-activation value x.
inline float act_forward(float x) {
#if ACT == ACT_RELU
    return fmax(x, 0.0f);
#elif ACT == ACT_SIGMOID
    return 1.0f / (1.0f + exp(-x));
#elif ACT == ACT_TANH
    return tanh(x);
#else
    return x;
#endif
}

// d act / d x written with the activation's output y, so backward needs only the output.
inline float act_grad_from_output(float y) {
#if ACT == ACT_RELU
    return y > 0.0f ? 1.0f : 0.0f;
#elif ACT == ACT_SIGMOID
    return y * (1.0f - y);
#elif ACT == ACT_TANH
    return 1.0f - y * y;
#else
    return 1.0f;
#endif
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }

// 16 consecutive floats from any (4-byte aligned) address. Two halves, because vload16 of PoCL 3.0
// (pip's pocl-binary-distribution) fills only the first 8 lanes.
inline float16 load16(__global const float* p) { return (float16)(vload8(0, p), vload8(0, p + 8)); }
