// gemm_tiled, the GPU family's GEMM (semantics, operands and epilogue in gemm_common.h); the
// partial products of its K slices are added by sum_slices (sum_slices.cl).
#include "gemm_common.h"

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
#ifndef PREFETCH
#define PREFETCH 1  // 1: the next tiles are read from global memory while this one is multiplied;
#endif              // 2: and stored into a second pair of local tiles (one barrier per step)
#ifndef VECTOR
#define VECTOR 0    // 1: local tiles are read as float4 (WPT_M and WPT_N multiples of 4)
#endif
#ifndef VLOAD
#define VLOAD 0     // 1: plain (not gathered) operands are read from global memory in runs of 4
#endif              // along their rows, a float4 each where the operand is 16-byte aligned (an A
                    // of A_IMAGE_COLS where the images' pixels come in whole runs)
#define WG_M (TILE_M / WPT_M)
#define WG_N (TILE_N / WPT_N)
#define WG_SIZE (WG_M * WG_N)
#define A_LOADS ((TILE_K * TILE_M + WG_SIZE - 1) / WG_SIZE)  // tile elements per work-item
#define B_LOADS ((TILE_K * TILE_N + WG_SIZE - 1) / WG_SIZE)

// Element i of a tile (work-item tid takes i = tid + l * WG_SIZE, so that consecutive work-items
// read consecutive addresses of whichever layout A and B have): its place (kk, mm) or (kk, nn).
#if TRANS_A
#define A_PLACE(i) const int mm = (i) % TILE_M, kk = (i) / TILE_M
#else
#define A_PLACE(i) const int kk = (i) % TILE_K, mm = (i) / TILE_K
#endif
#if TRANS_B
#define B_PLACE(i) const int kk = (i) % TILE_K, nn = (i) / TILE_K
#elif (defined(CONV_B) || defined(CONV_DX)) && WG_SIZE % TILE_K == 0 && TILE_N % (WG_SIZE / TILE_K) == 0
// A gathered B: a work-item keeps one k of the tile for all its elements, so that the gather
// decomposes k once per tile; its columns are strided by B_ROW_ITEMS, the work-items of a row.
#define B_ROW_ITEMS (WG_SIZE / TILE_K)
#define B_PLACE(i) const int kk = tid / B_ROW_ITEMS, nn = tid % B_ROW_ITEMS + ((i) - tid) / WG_SIZE * B_ROW_ITEMS
#else
#define B_PLACE(i) const int nn = (i) % TILE_N, kk = (i) / TILE_N
#endif
#define A_VALUE(k0) ((m0 + mm < M && (k0) + kk < k_end) ? A_AT(m0 + mm, (k0) + kk) : 0.0f)
#define B_VALUE(k0) ((n0 + nn < N && (k0) + kk < k_end) ? B_AT((k0) + kk, n0 + nn) : 0.0f)
// (l, i) over this work-item's elements of a tile of `total`: a constant trip count, so that the
// compiler unrolls it and keeps a_next / b_next in registers.
#define FOR_ELEMENTS(l, i, loads, total) \
    for (int l = 0, i = tid; l < (loads); l++, i += WG_SIZE) if (i < (total))

// VLOAD: a work-item reads runs of 4 elements of a tile (i = 4 * (tid + l * WG_SIZE)) that lie
// along the operand's stored rows (its place's fast index: TILE_K, TILE_M and TILE_N are multiples
// of 4), as one float4 where all 4 are in range and the operand's offset and leading dimension
// are multiples of 4 (checked once per launch: the same for the whole work-group), else one by one.
// An A of A_IMAGE_COLS (a multiple of 4: a run, from a k that is one too, never crosses images)
// then has its runs at a_off + A_INDEX, aligned as the image stride lda and the offset are.
#if VLOAD && !defined(CONV_DX) && (!defined(A_IMAGE_COLS) || A_IMAGE_COLS % 4 == 0)
#define A_RUNS 1
#else
#define A_RUNS 0
#endif
#if VLOAD && !defined(CONV_B) && !defined(CONV_DX)
#define B_RUNS 1
#else
#define B_RUNS 0
#endif
#define FOR_RUNS(l, i, loads, total) \
    for (int l = 0, i = 4 * tid; l < (loads); l++, i += 4 * WG_SIZE) if (i < (total))
#define RUN_LOADS(total) (((total) / 4 + WG_SIZE - 1) / WG_SIZE)

// p[at], ... p[at + 3], the first `count` of them (the others 0); `aligned`: at is a multiple of 4
inline float4 load_run(__global const float* restrict p, const int at, const int count, const int aligned)
{
    if (count >= 4 && aligned)
        return *(__global const float4*)(p + at);
    return (float4)(count > 0 ? p[at] : 0.0f, count > 1 ? p[at + 1] : 0.0f, count > 2 ? p[at + 2] : 0.0f,
                    count > 3 ? p[at + 3] : 0.0f);
}

// The global tiles at k0 into registers (FETCH_*), registers into the local tiles of stage s
// (STAGE_*), global tiles straight into the local tiles (LOAD_*), for A and for B.
#if A_RUNS
#if TRANS_A  // a run: 4 rows m of one k
#define A_RUN(k0) load_run(A, a_off + ((k0) + kk) * lda + m0 + mm, (k0) + kk < k_end ? M - m0 - mm : 0, a_aligned)
#define PUT_A(s, v) As[s][kk][mm] = (v).x; As[s][kk][mm + 1] = (v).y; As[s][kk][mm + 2] = (v).z; \
    As[s][kk][mm + 3] = (v).w
#else        // 4 k of one row m
#define A_RUN(k0) load_run(A, a_off + A_INDEX(m0 + mm, (k0) + kk), m0 + mm < M ? k_end - (k0) - kk : 0, a_aligned)
#define PUT_A(s, v) As[s][kk][mm] = (v).x; As[s][kk + 1][mm] = (v).y; As[s][kk + 2][mm] = (v).z; \
    As[s][kk + 3][mm] = (v).w
#endif
#define A_REGISTERS float4 a_next[RUN_LOADS(TILE_K * TILE_M)]
#define FETCH_A(k0) FOR_RUNS(l, i, RUN_LOADS(TILE_K * TILE_M), TILE_K * TILE_M) { A_PLACE(i); a_next[l] = A_RUN(k0); }
#define STAGE_A(s) FOR_RUNS(l, i, RUN_LOADS(TILE_K * TILE_M), TILE_K * TILE_M) { A_PLACE(i); PUT_A(s, a_next[l]); }
#define LOAD_A(s, k0) FOR_RUNS(l, i, RUN_LOADS(TILE_K * TILE_M), TILE_K * TILE_M) { \
    A_PLACE(i); const float4 v = A_RUN(k0); PUT_A(s, v); }
#else
#define A_REGISTERS float a_next[A_LOADS]
#define FETCH_A(k0) FOR_ELEMENTS(l, i, A_LOADS, TILE_K * TILE_M) { A_PLACE(i); a_next[l] = A_VALUE(k0); }
#define STAGE_A(s) FOR_ELEMENTS(l, i, A_LOADS, TILE_K * TILE_M) { A_PLACE(i); As[s][kk][mm] = a_next[l]; }
#define LOAD_A(s, k0) FOR_ELEMENTS(l, i, A_LOADS, TILE_K * TILE_M) { A_PLACE(i); As[s][kk][mm] = A_VALUE(k0); }
#endif
#if B_RUNS
#if TRANS_B  // a run: 4 k of one column n
#define B_RUN(k0) load_run(B, b_off + (n0 + nn) * ldb + (k0) + kk, n0 + nn < N ? k_end - (k0) - kk : 0, b_aligned)
#define PUT_B(s, v) Bs[s][kk][nn] = (v).x; Bs[s][kk + 1][nn] = (v).y; Bs[s][kk + 2][nn] = (v).z; \
    Bs[s][kk + 3][nn] = (v).w
#else        // 4 columns n of one k
#define B_RUN(k0) load_run(B, b_off + ((k0) + kk) * ldb + n0 + nn, (k0) + kk < k_end ? N - n0 - nn : 0, b_aligned)
#define PUT_B(s, v) Bs[s][kk][nn] = (v).x; Bs[s][kk][nn + 1] = (v).y; Bs[s][kk][nn + 2] = (v).z; \
    Bs[s][kk][nn + 3] = (v).w
#endif
#define B_REGISTERS float4 b_next[RUN_LOADS(TILE_K * TILE_N)]
#define FETCH_B(k0) FOR_RUNS(l, i, RUN_LOADS(TILE_K * TILE_N), TILE_K * TILE_N) { B_PLACE(i); b_next[l] = B_RUN(k0); }
#define STAGE_B(s) FOR_RUNS(l, i, RUN_LOADS(TILE_K * TILE_N), TILE_K * TILE_N) { B_PLACE(i); PUT_B(s, b_next[l]); }
#define LOAD_B(s, k0) FOR_RUNS(l, i, RUN_LOADS(TILE_K * TILE_N), TILE_K * TILE_N) { \
    B_PLACE(i); const float4 v = B_RUN(k0); PUT_B(s, v); }
#else
#define B_REGISTERS float b_next[B_LOADS]
#define FETCH_B(k0) FOR_ELEMENTS(l, i, B_LOADS, TILE_K * TILE_N) { B_PLACE(i); b_next[l] = B_VALUE(k0); }
#define STAGE_B(s) FOR_ELEMENTS(l, i, B_LOADS, TILE_K * TILE_N) { B_PLACE(i); Bs[s][kk][nn] = b_next[l]; }
#define LOAD_B(s, k0) FOR_ELEMENTS(l, i, B_LOADS, TILE_K * TILE_N) { B_PLACE(i); Bs[s][kk][nn] = B_VALUE(k0); }
#endif

// Output i of a work-item's WPT_M rows (j of its WPT_N columns) is strided by the work-group size,
// so that the loads from local memory and the stores to C are both coalesced; with VECTOR, in runs
// of 4 adjacent ones (a float4 of the local tile) strided by 4 x the work-group size.
#if VECTOR
#define ROW_OF(t, i) (((i) / 4 * WG_M + (t)) * 4 + (i) % 4)
#define COL_OF(t, j) (((j) / 4 * WG_N + (t)) * 4 + (j) % 4)
#define PAD 4  // keeps every row of the local tiles 16-byte aligned
#else
#define ROW_OF(t, i) ((t) + (i) * WG_M)
#define COL_OF(t, j) ((t) + (j) * WG_N)
#define PAD 1
#endif

#define STAGES (PREFETCH == 2 ? 2 : 1)  // pairs of local tiles

// a[], b[]: row kk of the local tiles of stage s, this work-item's entries
#if VECTOR
#define READ_TILES(s, kk) \
    for (int i = 0; i < WPT_M; i += 4) { \
        const float4 v = *(__local const float4*)&As[s][kk][ROW_OF(tm, i)]; \
        a[i] = v.x; a[i + 1] = v.y; a[i + 2] = v.z; a[i + 3] = v.w; \
    } \
    for (int j = 0; j < WPT_N; j += 4) { \
        const float4 v = *(__local const float4*)&Bs[s][kk][COL_OF(tn, j)]; \
        b[j] = v.x; b[j + 1] = v.y; b[j + 2] = v.z; b[j + 3] = v.w; \
    }
#else
#define READ_TILES(s, kk) \
    for (int i = 0; i < WPT_M; i++) a[i] = As[s][kk][ROW_OF(tm, i)]; \
    for (int j = 0; j < WPT_N; j++) b[j] = Bs[s][kk][COL_OF(tn, j)];
#endif
// acc += the product of the local tiles of stage s
#define MULTIPLY(s) \
    for (int kk = 0; kk < TILE_K; kk++) { \
        float a[WPT_M], b[WPT_N]; \
        READ_TILES(s, kk) \
        for (int i = 0; i < WPT_M; i++) \
            for (int j = 0; j < WPT_N; j++) \
                acc[i][j] = a[i] * b[j] + acc[i][j]; \
    }
#define FETCH(k0) FETCH_A(k0) FETCH_B(k0)
#define STAGE(s) STAGE_A(s) STAGE_B(s)
#define LOAD(s, k0) LOAD_A(s, k0) LOAD_B(s, k0)

// Work-group (WG_N, WG_M); each work-item owns WPT_M x WPT_N outputs (ROW_OF, COL_OF).
__kernel __attribute__((reqd_work_group_size(WG_N, WG_M, 1)))
void gemm_tiled(GEMM_ARGS)
{
    // Padded rows: the stores below walk the tiles along k, and a row length that is a multiple
    // of the bank count would put them all in one local-memory bank.
    __local float As[STAGES][TILE_K][TILE_M + PAD] __attribute__((aligned(16)));
    __local float Bs[STAGES][TILE_K][TILE_N + PAD] __attribute__((aligned(16)));
    const int tn = get_local_id(0), tm = get_local_id(1);
    const int m0 = get_group_id(1) * TILE_M, n0 = get_group_id(0) * TILE_N;
    const int tid = tm * WG_N + tn;
    const int row0 = GROUP_ID * M;  // this group's first row of C; its operands:
    a_off += GROUP_ID * GROUP_A;
    b_off += GROUP_ID * GROUP_B;
#if A_RUNS
    const int a_aligned = ((a_off | lda) & 3) == 0;
#endif
#if B_RUNS
    const int b_aligned = ((b_off | ldb) & 3) == 0;
#endif

    float acc[WPT_M][WPT_N];
    for (int i = 0; i < WPT_M; i++)
        for (int j = 0; j < WPT_N; j++)
            acc[i][j] = 0.0f;

#ifdef SPLIT_K
    const int slices = SLICE_COUNT;
    const int share = (K + slices * TILE_K - 1) / (slices * TILE_K) * TILE_K;
    const int k_begin = SLICE_ID * share, k_end = min(K, k_begin + share);
#else
    const int k_begin = 0, k_end = K;
#endif
#if PREFETCH == 2
    A_REGISTERS;
    B_REGISTERS;
    LOAD(0, k_begin)
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k0 = k_begin, s = 0; k0 < k_end; k0 += TILE_K, s ^= 1) {
        const int more = k0 + TILE_K < k_end;  // the same for the whole work-group
        if (more) { FETCH(k0 + TILE_K) }
        MULTIPLY(s)
        // the other stage was last read before the previous barrier; this one is read until the next
        if (more) { STAGE(s ^ 1) }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#elif PREFETCH == 1
    A_REGISTERS;
    B_REGISTERS;
    FETCH(k_begin)
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        STAGE(0)
        barrier(CLK_LOCAL_MEM_FENCE);
        if (k0 + TILE_K < k_end) { FETCH(k0 + TILE_K) }
        MULTIPLY(0)
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#else
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        LOAD(0, k0)
        barrier(CLK_LOCAL_MEM_FENCE);
        MULTIPLY(0)
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#endif

    for (int i = 0; i < WPT_M; i++) {
        const int m = m0 + ROW_OF(tm, i);
        for (int j = 0; j < WPT_N; j++) {
            const int n = n0 + COL_OF(tn, j);
            if (m < M && n < N) STORE(row0 + m, n, acc[i][j]);
        }
    }
}
