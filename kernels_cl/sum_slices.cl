// The sum of split-K partial products, stored with the GEMM epilogue (gemm_common.h); the bias
// gradient of a convolution (conv.cl) uses it to add its slices too.
#include "gemm_common.h"

// SUM_LANES work-items share each output (the second dimension of a work-group of SUM_LOCAL x
// SUM_LANES): lane l adds the slices l, l + SUM_LANES, ... in order, and lane 0 then adds the lanes'
// sums in lane order. An output of few elements and many slices (a weight gradient of 144 x 16
// values in 212 slices) so has as many loads in flight as a large one, where a work-item that walked
// every slice would wait on one load after another. The order of the adds depends on `slices` and
// SUM_LANES only: the sums are deterministic. SUM_VECTOR (1 or 4): outputs a work-item takes,
// consecutive ones of a row (N a multiple of SUM_VECTOR).
#ifndef SUM_LANES
#define SUM_LANES 1
#endif
#ifndef SUM_LOCAL
#define SUM_LOCAL 64
#endif
#ifndef SUM_VECTOR
#define SUM_VECTOR 1
#endif
#if SUM_VECTOR == 4
typedef float4 sum_t;
#define SUM_LOAD(i) vload4(0, P + (i))
#elif SUM_VECTOR == 1
typedef float sum_t;
#define SUM_LOAD(i) P[i]
#else
#error "SUM_VECTOR is 1 or 4"
#endif

// C[m, n] = act(the sum over `slices` of P[slice, m, n] + bias) (the options of the split
// launch: HAS_BIAS, ACT, C_IMAGE_COLS); P is slices x M x N.
__kernel void sum_slices(const int M, const int N, const int slices,
                         __global const float* restrict P, const int p_off,
                         __global float* restrict C, const int c_off, const int ldc,
                         __global const float* restrict bias, const int bias_off)
{
    const int i = get_global_id(0) * SUM_VECTOR, count = M * N;
    sum_t s = 0.0f;
    if (i < count)
        for (int z = (int)get_local_id(1); z < slices; z += SUM_LANES) s += SUM_LOAD(p_off + z * count + i);
#if SUM_LANES > 1
    __local sum_t lanes[SUM_LANES - 1][SUM_LOCAL];  // lanes 1 .. SUM_LANES - 1
    const int x = get_local_id(0), lane = get_local_id(1);
    if (lane > 0) lanes[lane - 1][x] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane > 0) return;
    for (int l = 0; l < SUM_LANES - 1; l++) s += lanes[l][x];
#endif
    if (i >= count) return;
    const int row = i / N, col = i - row * N;
#if SUM_VECTOR == 4
    STORE(row, col, s.x);
    STORE(row, col + 1, s.y);
    STORE(row, col + 2, s.z);
    STORE(row, col + 3, s.w);
#else
    STORE(row, col, s);
#endif
}
