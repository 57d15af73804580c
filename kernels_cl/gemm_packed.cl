// The CPU family's GEMMs (semantics, operands and epilogue in gemm_common.h): gemm_packed with the
// copies of its operands into panels, and gemm_direct, for products too small for the copies to pay.
#include "gemm_common.h"

// gemm_packed multiplies operands copied into panels, so that it reads both sequentially: A in
// panels of CPU_ROWS rows (element (m, k) at ((m / CPU_ROWS) * K + k) * CPU_ROWS + m % CPU_ROWS) and
// B in panels of 16 columns (element (k, n) at ((n / 16) * K + k) * 16 + n % 16). pack_a and pack_b
// copy any layout into panels; the last panels are padded with zeros. An implicit convolution
// (CONV_B) instead gathers each panel of B into local memory, where it stays in cache while every
// panel of A is multiplied by it: the column matrix never goes through main memory.
#include "register_block.h"

// Global size (K, ceil(M / CPU_ROWS), GROUPS): the panels of each group's A (at a_off + g * GROUP_A)
// follow those of the group before.
__kernel void pack_a(const int M, const int K, __global const float* restrict A, int a_off,
                     const int lda, __global float* restrict P, const int p_off)
{
    const int k = get_global_id(0), q = get_global_id(1);
    if (k >= K) return;  // the grid is rounded up to whole work-groups
    a_off += GROUP_ID * GROUP_A;
    __global float* out = P + p_off + ((GROUP_ID * ((M + CPU_ROWS - 1) / CPU_ROWS) + q) * K + k) * CPU_ROWS;
    for (int r = 0; r < CPU_ROWS; r++) {
        const int m = q * CPU_ROWS + r;
        out[r] = m < M ? A_AT(m, k) : 0.0f;
    }
}

#ifndef PACK_RUN
#define PACK_RUN 256  // columns of A per work-item of pack_a_runs, a multiple of 16
#endif

// pack_a where A's rows run along K (neither TRANS_A nor CONV_FLIP), as the weight gradient's dY
// (with A_IMAGE_COLS a multiple of 16, in runs of 16 within an image: dY read in its NCHW layout):
// work-item (s, q, g) of an exact grid, work-groups of one, copies the columns
// [s * PACK_RUN, (s + 1) * PACK_RUN) of panel q (PoCL vectorises a work-item's fixed-length loops,
// not work-items that read rows apart), 16 at a time: a vector from each row, interleaved in
// registers, stored as one run of the panel.
__kernel void pack_a_runs(const int M, const int K, __global const float* restrict A, int a_off,
                          const int lda, __global float* restrict P, const int p_off)
{
    const int k0 = get_global_id(0) * PACK_RUN, q = get_global_id(1), k1 = min(k0 + PACK_RUN, K);
    a_off += GROUP_ID * GROUP_A;
    __global float* out = P + p_off + (GROUP_ID * ((M + CPU_ROWS - 1) / CPU_ROWS) + q) * K * CPU_ROWS;
    int k = k0;
    for (; k + PANEL <= k1; k += PANEL) {
        __attribute__((aligned(64))) float block[PANEL * CPU_ROWS];  // columns k .. k + 15 of the panel
        _Pragma("unroll") for (int r = 0; r < CPU_ROWS; r++) {
            const int m = q * CPU_ROWS + r;
            __attribute__((aligned(64))) float run[PANEL];  // no vstore16 (see store_block)
            *(float16*)run = m < M ? load16(A + a_off + A_INDEX(m, k)) : (float16)(0.0f);
            _Pragma("unroll") for (int j = 0; j < PANEL; j++) block[j * CPU_ROWS + r] = run[j];
        }
        for (int i = 0; i < PANEL * CPU_ROWS; i++) out[k * CPU_ROWS + i] = block[i];
    }
    for (; k < k1; k++)  // K's last columns
        for (int r = 0; r < CPU_ROWS; r++) {
            const int m = q * CPU_ROWS + r;
            out[k * CPU_ROWS + r] = m < M ? A_AT(m, k) : 0.0f;
        }
}

// Global size (K, ceil(N / 16), GROUPS), the groups' panels one after another as pack_a's.
__kernel void pack_b(const int K, const int N, __global const float* restrict B, int b_off,
                     const int ldb, __global float* restrict P, const int p_off)
{
    const int k = get_global_id(0), n0 = get_global_id(1) * PANEL;
    if (k >= K) return;  // the grid is rounded up to whole work-groups
    b_off += GROUP_ID * GROUP_B;
    __global float* out = P + p_off + ((GROUP_ID * ((N + PANEL - 1) / PANEL) + get_global_id(1)) * K + k) * PANEL;
    if (!TRANS_B && n0 + PANEL <= N) {
        *(__global float16*)out = load16(B + b_off + k * ldb + n0);  // panels are 64-byte aligned
        return;
    }
    for (int j = 0; j < PANEL; j++) out[j] = n0 + j < N ? B_AT(k, n0 + j) : 0.0f;
}

// Transposes the 16 x 16 block v[row][column] in registers: four rounds of unzipping pairs of rows,
// each of which rotates the 8 bits of an element's (row, column) index by one.
inline void transpose16(float16* v)
{
    _Pragma("unroll") for (int round = 0; round < 4; round++) {
        float16 t[PANEL];
        _Pragma("unroll") for (int i = 0; i < PANEL / 2; i++) {
            t[i] = (float16)(v[2 * i].even, v[2 * i + 1].even);
            t[i + PANEL / 2] = (float16)(v[2 * i].odd, v[2 * i + 1].odd);
        }
        _Pragma("unroll") for (int i = 0; i < PANEL; i++) v[i] = t[i];
    }
}

#include "conv_panel.h"

// Stores the block acc of rows m0 .. (of the group's M, starting at C's row row0) and columns n0 ..
// n0 + 15, with the epilogue (or into SPLIT_K's slice); rows past M and columns past N are left out.
inline void store_block(const float16* acc, const int m0, const int n0, const int row0, const int M, const int N,
                        __global float* restrict C, const int c_off, const int ldc,
                        __global const float* restrict bias, const int bias_off)
{
    for (int r = 0; r < CPU_ROWS && m0 + r < M; r++) {
        // A vector store into an aligned private array: PoCL 3.0's kernel cache loses kernels that
        // call vstore16.
        __attribute__((aligned(64))) float out[PANEL];
        *(float16*)out = acc[r];
        const int m = row0 + m0 + r;
        if (n0 + PANEL <= N && C_RUN(n0, PANEL)) {  // one run of addresses: vector stores
            const int at = C_AT(m, n0);
            for (int j = 0; j < PANEL; j++) STORE_AT(at + j, m, n0 + j, out[j]);
        } else {
            for (int j = 0; j < PANEL && n0 + j < N; j++) STORE(m, n0 + j, out[j]);
        }
    }
}

// Work-item (p, q, z) multiplies panel q of A by panel p of B over slice z of K (all of it unless
// SPLIT_K) and stores its CPU_ROWS x 16 block of C. Global size (ceil(N / 16), ceil(M / CPU_ROWS),
// slices), except with CONV_B: (ceil(N / 16), 1, slices), one work-item per work-group multiplying
// every panel of A by its gathered panel of B (a slice of at most PANEL_K rows). A and B are panels:
// lda and ldb are unused. With GROUPS, z runs over slices x groups (gemm_common.h).
__kernel void gemm_packed(GEMM_ARGS)
{
    const int p = get_global_id(0);
    if (p * PANEL >= N) return;  // the grid may be rounded up to whole work-groups
    const int share = (K + SLICE_COUNT - 1) / SLICE_COUNT;
    const int k0 = SLICE_ID * share, k1 = min(K, k0 + share);
    const int group = GROUP_ID, row0 = group * M, a_panels = (M + CPU_ROWS - 1) / CPU_ROWS;
#ifdef PANEL_K
    __local float16 panel[PANEL_K];
    gather_panel((__local float*)panel, B + b_off + group * GROUP_B, N, p, k0, k1);
#define B_ROW(k) panel[(k) - k0]
    for (int q = 0; q * CPU_ROWS < M; q++) {
#else
    __global const float* b = B + b_off + (group * ((N + PANEL - 1) / PANEL) + p) * K * PANEL;
#define B_ROW(k) load16(b + (k) * PANEL)
    {
        const int q = get_global_id(1);
#endif
        __global const float* a = A + a_off + (group * a_panels + q) * K * CPU_ROWS;
        float16 acc[CPU_ROWS];
#define A_PACKED(r, k) a[(k) * CPU_ROWS + (r)]
        MULTIPLY(acc, A_PACKED, B_ROW, k0, k1)
        store_block(acc, q * CPU_ROWS, p * PANEL, row0, M, N, C, c_off, ldc, bias, bias_off);
    }
}
#undef B_ROW

#ifdef DIRECT_K
// panel[k - k0] = row k of panel p of a B stored as it is (k0 <= k < k1), zeros past column N.
inline void load_panel(__local float16* panel, __global const float* restrict B, const int b_off, const int ldb,
                       const int N, const int p, const int k0, const int k1)
{
    const int n0 = p * PANEL, valid = N - n0;
#if TRANS_B  // B stored N x K: its columns are rows of b, read 16 x 16 at a time and transposed
    int at[PANEL];
    for (int j = 0; j < PANEL; j++) at[j] = b_off + min(n0 + j, N - 1) * ldb;  // past N: column N - 1
    int k = k0;
    for (; k + PANEL <= k1; k += PANEL) {
        float16 block[PANEL];
        _Pragma("unroll") for (int j = 0; j < PANEL; j++) block[j] = load16(B + at[j] + k);
        transpose16(block);
        _Pragma("unroll") for (int i = 0; i < PANEL; i++) panel[k - k0 + i] = block[i];
    }
    for (; k < k1; k++) {
        __attribute__((aligned(64))) float row[PANEL];
        for (int j = 0; j < PANEL; j++) row[j] = B[at[j] + k];
        panel[k - k0] = *(float16*)row;
    }
    if (valid < PANEL)  // ... then zeroed
        for (int k = k0; k < k1; k++)
            for (int j = valid; j < PANEL; j++) ((__local float*)panel)[(k - k0) * PANEL + j] = 0.0f;
#else
    if (valid >= PANEL) {
        for (int k = k0; k < k1; k++) panel[k - k0] = load16(B + b_off + k * ldb + n0);
        return;
    }
    for (int k = k0; k < k1; k++) panel[k - k0] = load_part16(B + b_off + k * ldb + n0, valid);
#endif
}

// gemm_direct, gemm_packed without the copies for products too small for them to pay: work-item
// (p, c, z) loads panel p of B (over slice z of K, DIRECT_K rows at most) into local memory, and
// multiplies by it A, read in place, in blocks of CPU_ROWS rows: chunk c of get_global_size(1)
// chunks of the blocks. Work-groups of one work-item, each with its own panel.
__kernel void gemm_direct(GEMM_ARGS)
{
    const int p = get_global_id(0);
    if (p * PANEL >= N) return;
    const int share = (K + SLICE_COUNT - 1) / SLICE_COUNT;
    const int k0 = SLICE_ID * share, k1 = min(K, k0 + share);
    __local float16 panel[DIRECT_K];
    load_panel(panel, B, b_off, ldb, N, p, k0, k1);
    const int blocks = (M + CPU_ROWS - 1) / CPU_ROWS, chunks = get_global_size(1);
    const int per = (blocks + chunks - 1) / chunks, last = min(blocks, ((int)get_global_id(1) + 1) * per);
#define B_LOCAL(k) panel[(k) - k0]
#define A_WHOLE(r, k) A_AT(m0 + (r), k)
#define A_EDGE(r, k) A_AT(min(m0 + (r), M - 1), k)  // rows past M read row M - 1, and are not stored
    for (int q = get_global_id(1) * per; q < last; q++) {
        const int m0 = q * CPU_ROWS;
        float16 acc[CPU_ROWS];
        if (m0 + CPU_ROWS <= M) {  // rows at fixed distances, without the clamp
            MULTIPLY(acc, A_WHOLE, B_LOCAL, k0, k1)
        } else {
            MULTIPLY(acc, A_EDGE, B_LOCAL, k0, k1)
        }
        store_block(acc, m0, p * PANEL, 0, M, N, C, c_off, ldc, bias, bias_off);
    }
}
#endif
