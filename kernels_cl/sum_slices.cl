// The sum of split-K partial products, stored with the GEMM epilogue (gemm_common.h); the bias
// gradient of a convolution (conv.cl) uses it to add its slices too.
#include "gemm_common.h"

// C[m, n] = act(the sum over `slices` of P[slice, m, n] + bias) (the options of the split
// launch: HAS_BIAS, ACT, C_IMAGE_COLS); P is slices x M x N, summed in slice order.
__kernel void sum_slices(const int M, const int N, const int slices,
                         __global const float* restrict P, const int p_off,
                         __global float* restrict C, const int c_off, const int ldc,
                         __global const float* restrict bias, const int bias_off)
{
    const int i = get_global_id(0);
    if (i >= M * N) return;
    float s = 0.0f;
    for (int z = 0; z < slices; z++) s += P[p_off + z * M * N + i];
    STORE(i / N, i % N, s);
}
