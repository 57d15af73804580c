// C[M,N] = act(A[M,K] * B[K,N] + bias), row-major C with leading dimension ldc.
// TRANS_A: A is stored K x M (A[m,k] = a[k*lda + m]); TRANS_B: B is stored N x K (B[k,n] = b[n*ldb + k]).
// HAS_BIAS adds bias[n], or bias[m] with BIAS_PER_ROW; ACT (common.h) applies an activation.
// C_IMAGE_COLS=P stores column n as pixel n % P of image n / P of an NCHW tensor whose rows are
// channels: C[m,n] at c[(n / P) * ldc + m * P + n % P] (ldc is then the image stride).
// ACCUMULATE adds the product to C instead (no bias, no activation).
// SPLIT_K (gemm_tiled only): work-group z of a 3-D launch sums its share of K into slice z of a
// (slices, M, ldc) buffer, which sum_slices then adds up: for products with few output tiles and
// a long K, such as weight gradients.
// Two families share these semantics: gemm_tiled for GPUs (local-memory tiles) and
// gemm_cpu / gemm_cpu_dot for CPUs (no local memory).

#ifndef TRANS_A
#define TRANS_A 0
#endif
#ifndef TRANS_B
#define TRANS_B 0
#endif

#if TRANS_A
#define A_AT(m, k) A[a_off + (k) * lda + (m)]
#else
#define A_AT(m, k) A[a_off + (m) * lda + (k)]
#endif
#if TRANS_B
#define B_AT(k, n) B[b_off + (n) * ldb + (k)]
#else
#define B_AT(k, n) B[b_off + (k) * ldb + (n)]
#endif

#if !defined(HAS_BIAS)
#define BIAS_AT(m, n) 0.0f
#elif defined(BIAS_PER_ROW)
#define BIAS_AT(m, n) bias[bias_off + (m)]
#else
#define BIAS_AT(m, n) bias[bias_off + (n)]
#endif

#ifdef C_IMAGE_COLS
#define C_INDEX(m, n) (c_off + ((n) / C_IMAGE_COLS) * ldc + (m) * C_IMAGE_COLS + (n) % C_IMAGE_COLS)
#else
#define C_INDEX(m, n) (c_off + (m) * ldc + (n))
#endif

#if defined(SPLIT_K)
#define STORE(m, n, v) C[c_off + get_group_id(2) * M * ldc + (m) * ldc + (n)] = (v)
#elif defined(ACCUMULATE)
#define STORE(m, n, v) C[C_INDEX(m, n)] += (v)
#else
#define STORE(m, n, v) C[C_INDEX(m, n)] = act_forward((v) + BIAS_AT(m, n))
#endif

#define GEMM_ARGS const int M, const int N, const int K, \
    __global const float* restrict A, const int a_off, const int lda, \
    __global const float* restrict B, const int b_off, const int ldb, \
    __global float* restrict C, const int c_off, const int ldc, \
    __global const float* restrict bias, const int bias_off

// ---------------------------------------------------------------- GPU family
#ifndef TILE_M
#define TILE_M 64   // rows of C per work-group
#endif
#ifndef TILE_N
#define TILE_N 64   // columns of C per work-group
#endif
#ifndef TILE_K
#define TILE_K 16   // depth of the tiles staged in local memory
#endif
#ifndef WPT_M
#define WPT_M 4     // rows of C per work-item
#endif
#ifndef WPT_N
#define WPT_N 4     // columns of C per work-item
#endif
#define WG_M (TILE_M / WPT_M)
#define WG_N (TILE_N / WPT_N)

// Work-group (WG_N, WG_M); each work-item owns a WPT_M x WPT_N grid of outputs strided by the
// work-group size, so that the loads from local memory and the stores to C are both coalesced.
__kernel __attribute__((reqd_work_group_size(WG_N, WG_M, 1)))
void gemm_tiled(GEMM_ARGS)
{
    // One float of padding per row: the stores below walk the tiles along k, and a row length
    // that is a multiple of the bank count would put them all in one local-memory bank.
    __local float As[TILE_K][TILE_M + 1];
    __local float Bs[TILE_K][TILE_N + 1];
    const int tn = get_local_id(0), tm = get_local_id(1);
    const int m0 = get_group_id(1) * TILE_M, n0 = get_group_id(0) * TILE_N;
    const int tid = tm * WG_N + tn;

    float acc[WPT_M][WPT_N];
    for (int i = 0; i < WPT_M; i++)
        for (int j = 0; j < WPT_N; j++)
            acc[i][j] = 0.0f;

#ifdef SPLIT_K
    const int slices = get_num_groups(2);
    const int share = (K + slices * TILE_K - 1) / (slices * TILE_K) * TILE_K;
    const int k_begin = get_group_id(2) * share, k_end = min(K, k_begin + share);
#else
    const int k_begin = 0, k_end = K;
#endif
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // Consecutive work-items read consecutive addresses of whichever layout A and B have.
        for (int i = tid; i < TILE_K * TILE_M; i += WG_M * WG_N) {
#if TRANS_A
            const int mm = i % TILE_M, kk = i / TILE_M;
#else
            const int kk = i % TILE_K, mm = i / TILE_K;
#endif
            const int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < k_end) ? A_AT(m, k) : 0.0f;
        }
        for (int i = tid; i < TILE_K * TILE_N; i += WG_M * WG_N) {
#if TRANS_B
            const int kk = i % TILE_K, nn = i / TILE_K;
#else
            const int nn = i % TILE_N, kk = i / TILE_N;
#endif
            const int n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < k_end) ? B_AT(k, n) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE_K; kk++) {
            float a[WPT_M], b[WPT_N];
            for (int i = 0; i < WPT_M; i++) a[i] = As[kk][tm + i * WG_M];
            for (int j = 0; j < WPT_N; j++) b[j] = Bs[kk][tn + j * WG_N];
            for (int i = 0; i < WPT_M; i++)
                for (int j = 0; j < WPT_N; j++)
                    acc[i][j] = a[i] * b[j] + acc[i][j];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    for (int i = 0; i < WPT_M; i++) {
        const int m = m0 + tm + i * WG_M;
        for (int j = 0; j < WPT_N; j++) {
            const int n = n0 + tn + j * WG_N;
            if (m < M && n < N) STORE(m, n, acc[i][j]);
        }
    }
}

// C[m, n] (+)= the sum over `slices` of P[slice, m, n] (P is slices x M x N), in slice order.
__kernel void sum_slices(const int M, const int N, const int slices,
                         __global const float* restrict P, const int p_off,
                         __global float* restrict C, const int c_off, const int ldc)
{
    const int i = get_global_id(0);
    if (i >= M * N) return;
    float s = 0.0f;
    for (int z = 0; z < slices; z++) s += P[p_off + z * M * N + i];
#ifdef ACCUMULATE
    C[c_off + (i / N) * ldc + i % N] += s;
#else
    C[c_off + (i / N) * ldc + i % N] = s;
#endif
}

// ---------------------------------------------------------------- CPU family
#ifndef CPU_ROWS
#define CPU_ROWS 8  // rows of C per work-item in gemm_cpu (register blocking)
#endif
#ifndef DOT_ROWS
#define DOT_ROWS 4  // rows of C per work-item in gemm_cpu_dot
#endif
#ifndef DOT_COLS
#define DOT_COLS 4  // columns of C per work-item in gemm_cpu_dot
#endif

inline float hsum16(float16 v)
{
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
}

// For B stored K x N (TRANS_B == 0): a work-item keeps CPU_ROWS rows x 16 columns of C in float16
// accumulators and streams rows of B as vectors. Global size (ceil(N/16), ceil(M/CPU_ROWS)).
__kernel void gemm_cpu(GEMM_ARGS)
{
    const int n0 = get_global_id(0) * 16, m0 = get_global_id(1) * CPU_ROWS;
    if (n0 >= N || m0 >= M) return;
    int mr[CPU_ROWS];  // rows past M re-read the last row; their results are not stored
    for (int r = 0; r < CPU_ROWS; r++) mr[r] = min(m0 + r, M - 1);

    if (n0 + 16 <= N) {
        float16 acc[CPU_ROWS];
        for (int r = 0; r < CPU_ROWS; r++) acc[r] = (float16)(0.0f);
        for (int k = 0; k < K; k++) {
            const float16 b = load16(B + b_off + k * ldb + n0);
            for (int r = 0; r < CPU_ROWS; r++) acc[r] = A_AT(mr[r], k) * b + acc[r];
        }
        for (int r = 0; r < CPU_ROWS && m0 + r < M; r++) {
            // A vector store into an aligned private array: PoCL 3.0's kernel cache loses
            // kernels that call vstore16.
            __attribute__((aligned(64))) float out[16];
            *(float16*)out = acc[r];
            for (int j = 0; j < 16; j++) STORE(m0 + r, n0 + j, out[j]);
        }
    } else {  // the last, partial block of columns
        for (int r = 0; r < CPU_ROWS && m0 + r < M; r++)
            for (int n = n0; n < N; n++) {
                float s = 0.0f;
                for (int k = 0; k < K; k++) s = A_AT(m0 + r, k) * B_AT(k, n) + s;
                STORE(m0 + r, n, s);
            }
    }
}

// For A stored M x K and B stored N x K (TRANS_A == 0, TRANS_B == 1): both operands are contiguous
// in k, so a work-item computes DOT_ROWS x DOT_COLS dot products with float16 partial sums.
// Global size (ceil(N/DOT_COLS), ceil(M/DOT_ROWS)).
__kernel void gemm_cpu_dot(GEMM_ARGS)
{
    const int n0 = get_global_id(0) * DOT_COLS, m0 = get_global_id(1) * DOT_ROWS;
    if (n0 >= N || m0 >= M) return;
    int mr[DOT_ROWS], nc[DOT_COLS];  // indices past the edge re-read the last row / column
    for (int r = 0; r < DOT_ROWS; r++) mr[r] = min(m0 + r, M - 1);
    for (int c = 0; c < DOT_COLS; c++) nc[c] = min(n0 + c, N - 1);

    float16 acc[DOT_ROWS][DOT_COLS];
    for (int r = 0; r < DOT_ROWS; r++)
        for (int c = 0; c < DOT_COLS; c++) acc[r][c] = (float16)(0.0f);
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        float16 a[DOT_ROWS];
        for (int r = 0; r < DOT_ROWS; r++) a[r] = load16(A + a_off + mr[r] * lda + k);
        for (int c = 0; c < DOT_COLS; c++) {
            const float16 b = load16(B + b_off + nc[c] * ldb + k);
            for (int r = 0; r < DOT_ROWS; r++) acc[r][c] = a[r] * b + acc[r][c];
        }
    }
    for (int r = 0; r < DOT_ROWS && m0 + r < M; r++)
        for (int c = 0; c < DOT_COLS && n0 + c < N; c++) {
            float s = hsum16(acc[r][c]);
            for (int kk = k; kk < K; kk++) s = A_AT(mr[r], kk) * B_AT(kk, nc[c]) + s;
            STORE(m0 + r, n0 + c, s);
        }
}
