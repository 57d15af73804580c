// C[M,N] = act(A[M,K] * B[K,N] + bias), row-major C with leading dimension ldc.
// TRANS_A: A is stored K x M (A[m,k] = a[k*lda + m]); TRANS_B: B is stored N x K (B[k,n] = b[n*ldb + k]).
// HAS_BIAS adds bias[n], or bias[m] with BIAS_PER_ROW; ACT (common.h) applies an activation.
// C_IMAGE_COLS=P stores column n as pixel n % P of image n / P of an NCHW tensor whose rows are
// channels: C[m,n] at c[(n / P) * ldc + m * P + n % P] (ldc is then the image stride).
// SPLIT_K: work-items z of a 3-D launch (work-groups one deep in z) sum their share of K into
// slice z of a (slices, M, ldc) buffer, which sum_slices then adds up and stores as above: for
// products with few output tiles and a long K, such as weight gradients and dense layers with many
// inputs.
// Two families share these semantics: gemm_tiled for GPUs (local-memory tiles) and
// gemm_packed for CPUs (register blocks over operands copied into panels, no local memory).
//
// Implicit convolution (the geometry of conv.cl in CONV_C, CONV_H, ... CONV_DW):
// CONV_B: B is the im2col matrix of the NCHW input b, gathered as it is read (by gemm_tiled as it
//   loads its tiles; by gemm_packed, given PANEL_K, into panels in local memory), never stored
//   whole: its element (row, col) with row = (c, kh, kw) and col = (image, oh, ow) is
//   b[image, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW], 0 in the padding. With TRANS_B the same
//   matrix is read transposed, for the weight gradient dY . cols^T. gemm_packed also gathers the
//   input gradient of a stride-1 convolution as a convolution of dY: CONV_IMAGE_STRIDE and
//   CONV_CHANNEL_STRIDE then give dY's (C, images, H, W) layout, and pack_a flips the weight's taps
//   (CONV_FLIP).
// CONV_DX (gemm_tiled only): the input gradient as one product over K = (o, kh, kw):
//   A[c, (o, kh, kw)] is the weight w[o, c, kh, kw] (a holds the weight as stored) and
//   B[(o, kh, kw), (image, ih, iw)] is dY[o, (image, oh, ow)] for the output pixel that read input
//   pixel (ih, iw) through tap (kh, kw), 0 if none; b holds dY as O rows of ldb.

#ifndef TRANS_A
#define TRANS_A 0
#endif
#ifndef TRANS_B
#define TRANS_B 0
#endif

#if defined(CONV_B) || defined(CONV_DX)
#define CONV_TAPS (CONV_KH * CONV_KW)
#endif

#ifdef CONV_B
inline float conv_column(__global const float* restrict x, const int x_off, const int row, const int col)
{
    const int c = row / CONV_TAPS, kh = row / CONV_KW % CONV_KH, kw = row % CONV_KW;
    const int image = col / (CONV_OH * CONV_OW), oh = col / CONV_OW % CONV_OH, ow = col % CONV_OW;
    const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH, iw = ow * CONV_SW - CONV_PW + kw * CONV_DW;
    return (ih >= 0 && ih < CONV_H && iw >= 0 && iw < CONV_W)
        ? x[x_off + ((image * CONV_C + c) * CONV_H + ih) * CONV_W + iw] : 0.0f;
}
#define B_STORED(row, col) conv_column(B, b_off, row, col)
#else
#define B_STORED(row, col) B[b_off + (row) * ldb + (col)]
#endif

#ifdef CONV_DX
inline float conv_output_grad(__global const float* restrict dy, const int dy_off, const int ld,
                              const int k, const int col)
{
    const int o = k / CONV_TAPS, kh = k / CONV_KW % CONV_KH, kw = k % CONV_KW;
    const int image = col / (CONV_H * CONV_W), ih = col / CONV_W % CONV_H, iw = col % CONV_W;
    const int t = ih + CONV_PH - kh * CONV_DH, u = iw + CONV_PW - kw * CONV_DW;
    const int oh = t / CONV_SH, ow = u / CONV_SW;
    return (t >= 0 && u >= 0 && oh * CONV_SH == t && ow * CONV_SW == u && oh < CONV_OH && ow < CONV_OW)
        ? dy[dy_off + o * ld + (image * CONV_OH + oh) * CONV_OW + ow] : 0.0f;
}
#define A_AT(m, k) A[a_off + ((k) / CONV_TAPS) * (CONV_C * CONV_TAPS) + (m) * CONV_TAPS + (k) % CONV_TAPS]
#define B_AT(k, n) conv_output_grad(B, b_off, ldb, k, n)
#else
#if defined(CONV_FLIP)
// pack_a of the CPU family's input gradient (the convolution of dY with the flipped weight):
// A[c, (o, t)] = w[o, c, CONV_FLIP - 1 - t] over the CONV_FLIP taps, a holding w as stored.
#define A_AT(m, k) A[a_off + ((k) / CONV_FLIP * M + (m)) * CONV_FLIP + CONV_FLIP - 1 - (k) % CONV_FLIP]
#elif TRANS_A
#define A_AT(m, k) A[a_off + (k) * lda + (m)]
#else
#define A_AT(m, k) A[a_off + (m) * lda + (k)]
#endif
#if TRANS_B
#define B_AT(k, n) B_STORED(n, k)
#else
#define B_AT(k, n) B_STORED(k, n)
#endif
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

// STORE_AT(i, m, n, v): element (m, n) of the product, v, stored at C[i], i = C_AT(m, n).
#if defined(SPLIT_K)
#define C_AT(m, n) (c_off + get_global_id(2) * M * ldc + (m) * ldc + (n))
#define STORE_AT(i, m, n, v) C[i] = (v)
#else
#define C_AT(m, n) C_INDEX(m, n)
#define STORE_AT(i, m, n, v) C[i] = act_forward((v) + BIAS_AT(m, n))
#endif
#define STORE(m, n, v) STORE_AT(C_AT(m, n), m, n, v)
#if defined(C_IMAGE_COLS) && !defined(SPLIT_K)
#define C_RUN(n0, count) ((n0) / C_IMAGE_COLS == ((n0) + (count) - 1) / C_IMAGE_COLS)  // in one image
#else
#define C_RUN(n0, count) 1  // columns n0 .. n0 + count - 1 of a row lie at consecutive addresses
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
#ifndef PREFETCH
#define PREFETCH 1  // 1: the next tiles are read from global memory while this one is multiplied;
#endif              // 2: and stored into a second pair of local tiles (one barrier per step)
#ifndef VECTOR
#define VECTOR 0    // 1: local tiles are read as float4 (WPT_M and WPT_N multiples of 4)
#endif
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
// the global tiles at k0 into registers, registers into the local tiles of stage s, global
// tiles at k0 straight into the local tiles of stage s
#define FETCH(k0) \
    FOR_ELEMENTS(l, i, A_LOADS, TILE_K * TILE_M) { A_PLACE(i); a_next[l] = A_VALUE(k0); } \
    FOR_ELEMENTS(l, i, B_LOADS, TILE_K * TILE_N) { B_PLACE(i); b_next[l] = B_VALUE(k0); }
#define STAGE(s) \
    FOR_ELEMENTS(l, i, A_LOADS, TILE_K * TILE_M) { A_PLACE(i); As[s][kk][mm] = a_next[l]; } \
    FOR_ELEMENTS(l, i, B_LOADS, TILE_K * TILE_N) { B_PLACE(i); Bs[s][kk][nn] = b_next[l]; }
#define LOAD(s, k0) \
    FOR_ELEMENTS(l, i, A_LOADS, TILE_K * TILE_M) { A_PLACE(i); As[s][kk][mm] = A_VALUE(k0); } \
    FOR_ELEMENTS(l, i, B_LOADS, TILE_K * TILE_N) { B_PLACE(i); Bs[s][kk][nn] = B_VALUE(k0); }

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
#if PREFETCH == 2
    float a_next[A_LOADS], b_next[B_LOADS];
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
    float a_next[A_LOADS], b_next[B_LOADS];
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
            if (m < M && n < N) STORE(m, n, acc[i][j]);
        }
    }
}

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

// ---------------------------------------------------------------- CPU family
// gemm_packed multiplies operands copied into panels, so that it reads both sequentially: A in
// panels of CPU_ROWS rows (element (m, k) at ((m / CPU_ROWS) * K + k) * CPU_ROWS + m % CPU_ROWS) and
// B in panels of 16 columns (element (k, n) at ((n / 16) * K + k) * 16 + n % 16). pack_a and pack_b
// copy any layout into panels; the last panels are padded with zeros. An implicit convolution
// (CONV_B) instead gathers each panel of B into local memory, where it stays in cache while every
// panel of A is multiplied by it: the column matrix never goes through main memory.
#ifndef CPU_ROWS
#define CPU_ROWS 12  // rows of C per work-item: float16 accumulators kept in registers
#endif
#define PANEL 16     // columns of a B panel: one float16

// Global size (K, ceil(M / CPU_ROWS)).
__kernel void pack_a(const int M, const int K, __global const float* restrict A, const int a_off,
                     const int lda, __global float* restrict P, const int p_off)
{
    const int k = get_global_id(0), q = get_global_id(1);
    if (k >= K) return;  // the grid is rounded up to whole work-groups
    __global float* out = P + p_off + (q * K + k) * CPU_ROWS;
    for (int r = 0; r < CPU_ROWS; r++) {
        const int m = q * CPU_ROWS + r;
        out[r] = m < M ? A_AT(m, k) : 0.0f;
    }
}

// Global size (K, ceil(N / 16)).
__kernel void pack_b(const int K, const int N, __global const float* restrict B, const int b_off,
                     const int ldb, __global float* restrict P, const int p_off)
{
    const int k = get_global_id(0), n0 = get_global_id(1) * PANEL;
    if (k >= K) return;  // the grid is rounded up to whole work-groups
    __global float* out = P + p_off + (get_global_id(1) * K + k) * PANEL;
    if (!TRANS_B && n0 + PANEL <= N) {
        *(__global float16*)out = load16(B + b_off + k * ldb + n0);  // panels are 64-byte aligned
        return;
    }
    for (int j = 0; j < PANEL; j++) out[j] = n0 + j < N ? B_AT(k, n0 + j) : 0.0f;
}

#ifdef PANEL_K  // (set with CONV_B for gemm_packed)
#ifndef CONV_IMAGE_STRIDE  // x is NCHW; the input gradient's dY is (C, images, H, W) instead
#define CONV_IMAGE_STRIDE (CONV_C * CONV_H * CONV_W)
#define CONV_CHANNEL_STRIDE (CONV_H * CONV_W)
#endif
// An element of the im2col matrix, x[image, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW], is
// x[ih * W + iw + base] with ih, iw and base each the sum of a part from its pixel (image, oh, ow)
// and a part from its row (c, kh, kw); `at` sums the three.
inline void pixel_part(const int pixel, int* top, int* left, int* at)
{
    *top = pixel / CONV_OW % CONV_OH * CONV_SH - CONV_PH;
    *left = pixel % CONV_OW * CONV_SW - CONV_PW;
    *at = *top * CONV_W + *left + pixel / (CONV_OH * CONV_OW) * CONV_IMAGE_STRIDE;
}

inline void row_part(const int row, int* top, int* left, int* at)
{
    *top = row / CONV_KW % CONV_KH * CONV_DH;
    *left = row % CONV_KW * CONV_DW;
    *at = *top * CONV_W + *left + row / CONV_TAPS * CONV_CHANNEL_STRIDE;
}

// out[j] = the element of row k and column j of a panel, from the 16 columns' parts and k's part.
inline void gather_row(__local float* out, __global const float* restrict x, const int* top,
                       const int* left, const int* at, const int ktop, const int kleft, const int kat)
{
    for (int j = 0; j < PANEL; j++) {
#if CONV_PH || CONV_PW
        // (unsigned: one comparison for each bound)
        const int inside = (uint)(top[j] + ktop) < CONV_H && (uint)(left[j] + kleft) < CONV_W;
        out[j] = inside ? x[at[j] + kat] : 0.0f;
#else
        out[j] = x[at[j] + kat];  // without padding, every window lies inside the image
#endif
    }
}

// Runs of 16 pixels in one output row read 16 consecutive input elements (load_run): the 16
// columns of a panel (PANEL_RUNS) or, with TRANS_B, 16 rows (K_RUNS).
#define RUNS (CONV_SW == 1 && CONV_OW >= PANEL && CONV_W >= PANEL)
#define PANEL_RUNS (RUNS && !TRANS_B)
#define K_RUNS (RUNS && TRANS_B)

#if RUNS
// The 16 elements x[at .. at + 15], input row ih and columns iw .. iw + 15 of an image: one vector
// load where none is padding, zeros for a row of padding, else read in order up to the edge.
inline float16 load_run(__global const float* restrict x, const int at, const int ih, const int iw)
{
    if ((uint)ih >= CONV_H) return (float16)(0.0f);
    if ((uint)iw <= CONV_W - PANEL) return load16(x + at);
    __attribute__((aligned(64))) float run[PANEL];
    for (int i = 0; i < PANEL; i++) run[i] = (uint)(iw + i) < CONV_W ? x[at + i] : 0.0f;
    return *(float16*)run;
}
#endif

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

// panel[k - k0] = the 16 values of row k of panel p of B (k0 <= k < k1), 0 in the padding and past
// column N. B is the im2col matrix of x: its columns are pixels and its rows (c, kh, kw), or the
// other way round with TRANS_B (the weight gradient's dY . cols^T). The parts of the 16 columns are
// found once, those of each k once.
inline void gather_panel(__local float* panel, __global const float* restrict x, const int N,
                         const int p, const int k0, const int k1)
{
    int top[PANEL], left[PANEL], at[PANEL];
    for (int j = 0; j < PANEL; j++) {
        const int n = min(p * PANEL + j, N - 1);  // columns past N are gathered as column N - 1
#if TRANS_B
        row_part(n, top + j, left + j, at + j);
#else
        pixel_part(n, top + j, left + j, at + j);
#endif
    }
    const int valid = N - p * PANEL;  // ... and then zeroed
#if PANEL_RUNS
    const int run = p * PANEL / CONV_OW == (p * PANEL + PANEL - 1) / CONV_OW && valid >= PANEL;
#endif
    for (int k = k0; k < k1; k++) {
        int ktop, kleft, kat;
#if TRANS_B
        pixel_part(k, &ktop, &kleft, &kat);
#else
        row_part(k, &ktop, &kleft, &kat);
#endif
        __local float* out = panel + (k - k0) * PANEL;
#if PANEL_RUNS
        if (run) {
            *(__local float16*)out = load_run(x, at[0] + kat, top[0] + ktop, left[0] + kleft);
            continue;
        }
#elif K_RUNS
        if (k + PANEL <= k1 && k % CONV_OW + PANEL <= CONV_OW) {  // rows k .. k + 15 as one 16 x 16 block
            float16 block[PANEL];  // block[j] = column j over the 16 rows
            _Pragma("unroll") for (int j = 0; j < PANEL; j++)
                block[j] = load_run(x, at[j] + kat, top[j] + ktop, left[j] + kleft);
            transpose16(block);
            _Pragma("unroll") for (int i = 0; i < PANEL; i++) ((__local float16*)out)[i] = block[i];
            k += PANEL - 1;
            continue;
        }
#endif
        gather_row(out, x, top, left, at, ktop, kleft, kat);
    }
    if (valid < PANEL)
        for (int k = k0; k < k1; k++)
            for (int j = valid; j < PANEL; j++) panel[(k - k0) * PANEL + j] = 0.0f;
}
#endif

// Work-item (p, q, z) multiplies panel q of A by panel p of B over slice z of K (all of it unless
// SPLIT_K) and stores its CPU_ROWS x 16 block of C. Global size (ceil(N / 16), ceil(M / CPU_ROWS),
// slices), except with CONV_B: (ceil(N / 16), 1, slices), one work-item per work-group multiplying
// every panel of A by its gathered panel of B (a slice of at most PANEL_K rows). A and B are panels:
// lda and ldb are unused.
__kernel void gemm_packed(GEMM_ARGS)
{
    const int p = get_global_id(0);
    if (p * PANEL >= N) return;  // the grid may be rounded up to whole work-groups
    const int share = (K + get_global_size(2) - 1) / get_global_size(2);
    const int k0 = get_global_id(2) * share, k1 = min(K, k0 + share);
#ifdef PANEL_K
    __local float16 panel[PANEL_K];
    gather_panel((__local float*)panel, B + b_off, N, p, k0, k1);
#define B_ROW(k) panel[(k) - k0]
    for (int q = 0; q * CPU_ROWS < M; q++) {
#else
    __global const float* b = B + b_off + p * K * PANEL;
#define B_ROW(k) load16(b + (k) * PANEL)
    {
        const int q = get_global_id(1);
#endif
        __global const float* a = A + a_off + q * K * CPU_ROWS;
        float16 acc[CPU_ROWS];
        // Unrolled, or the accumulators live in memory instead of registers (2-3x slower under PoCL).
        _Pragma("unroll") for (int r = 0; r < CPU_ROWS; r++) acc[r] = (float16)(0.0f);
        for (int k = k0; k < k1; k++) {
            const float16 bk = B_ROW(k);
            _Pragma("unroll") for (int r = 0; r < CPU_ROWS; r++) acc[r] = a[k * CPU_ROWS + r] * bk + acc[r];
        }
        const int m0 = q * CPU_ROWS, n0 = p * PANEL;
        for (int r = 0; r < CPU_ROWS && m0 + r < M; r++) {
            // A vector store into an aligned private array: PoCL 3.0's kernel cache loses kernels
            // that call vstore16.
            __attribute__((aligned(64))) float out[PANEL];
            *(float16*)out = acc[r];
            if (n0 + PANEL <= N && C_RUN(n0, PANEL)) {  // one run of addresses: vector stores
                const int at = C_AT(m0 + r, n0);
                for (int j = 0; j < PANEL; j++) STORE_AT(at + j, m0 + r, n0 + j, out[j]);
            } else {
                for (int j = 0; j < PANEL && n0 + j < N; j++) STORE(m0 + r, n0 + j, out[j]);
            }
        }
    }
}
