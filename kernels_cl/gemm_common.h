// C[M,N] = act(A[M,K] * B[K,N] + bias), row-major C with leading dimension ldc.
// TRANS_A: A is stored K x M (A[m,k] = a[k*lda + m]); TRANS_B: B is stored N x K (B[k,n] = b[n*ldb + k]).
// HAS_BIAS adds bias[n], or bias[m] with BIAS_PER_ROW; ACT (common.h) applies an activation.
// C_IMAGE_COLS=P stores column n as pixel n % P of image n / P of an NCHW tensor whose rows are
// channels: C[m,n] at c[(n / P) * ldc + m * P + n % P] (ldc is then the image stride).
// A_IMAGE_COLS=P (gemm_tiled, A not transposed) reads A in the same layout: A[m,k] at
// a[(k / P) * lda + m * P + k % P], lda the image stride; the GPU family's convolution weight
// gradient so reads dY where it lies (NCHW), consecutive k at consecutive addresses within an image.
// SPLIT_K: work-items z of a 3-D launch (work-groups one deep in z) sum their share of K into
// slice z of a (slices, M, ldc) buffer, which sum_slices then adds up and stores as above: for
// products with few output tiles and a long K, such as weight gradients and dense layers with many
// inputs.
// GROUPS=G: G independent products in one launch, each (M, N, K) (the groups of a grouped
// convolution): product g reads A at a_off + g * GROUP_A and B at b_off + g * GROUP_B (elements;
// gemm_packed's packed panels of each group follow one another instead) and stores rows
// g * M .. g * M + M - 1 of a C of G * M rows (the bias per row likewise). Work-item z of the third
// dimension (work-groups one deep in z) works on group z % G of K slice z / G; SPLIT_K's slices are
// then (slices, G * M, ldc).
// Two families share these semantics: gemm_tiled for GPUs (local-memory tiles, gemm_tiled.cl) and
// gemm_packed for CPUs (register blocks over operands copied into panels, no local memory,
// gemm_packed.cl). This header, which both include (and sum_slices.cl), holds how they address
// their operands and store C, and their arguments.
//
// Implicit convolution (the geometry of conv.cl in CONV_C, CONV_H, ... CONV_DW; the gathers in
// conv_gather.h, and conv_panel.h for gemm_packed's panels):
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
//   B[(o, kh, kw), (image, ih, iw)] is dY[image, o, oh, ow] for the output pixel that read input
//   pixel (ih, iw) through tap (kh, kw), 0 if none; b holds dY in its NCHW layout, ldb the stride
//   between its images.
// A grouped convolution (CONV_G groups, with GROUPS = CONV_G) is a product per group: CONV_C still
// counts every input channel (x's layout), a group's rows of the column matrix are its CONV_CG =
// CONV_C / CONV_G channels, and GROUP_A / GROUP_B move the weight, x and dY to the group's own.

#ifndef TRANS_A
#define TRANS_A 0
#endif
#ifndef GROUPS
#define GROUPS 1
#endif
#ifndef GROUP_A
#define GROUP_A 0  // elements between the A operands of consecutive groups
#endif
#ifndef GROUP_B
#define GROUP_B 0  // ... and between their B operands
#endif
#define GROUP_ID ((int)get_global_id(2) % GROUPS)  // this work-item's group and K slice
#define SLICE_ID ((int)get_global_id(2) / GROUPS)
#define SLICE_COUNT ((int)get_global_size(2) / GROUPS)
#ifndef TRANS_B
#define TRANS_B 0
#endif

#include "conv_gather.h"

#ifdef CONV_B
#define B_STORED(row, col) conv_column(B, b_off, row, col)
#else
#define B_STORED(row, col) B[b_off + (row) * ldb + (col)]
#endif

// A_INDEX(m, k): where A[m,k] lies from a_off, for an A not transposed
#if defined(A_IMAGE_COLS) && (TRANS_A || defined(CONV_DX) || defined(CONV_FLIP))
#error "A_IMAGE_COLS is for an A not transposed"
#elif defined(A_IMAGE_COLS)
#define A_INDEX(m, k) (((k) / A_IMAGE_COLS) * lda + (m) * A_IMAGE_COLS + (k) % A_IMAGE_COLS)
#else
#define A_INDEX(m, k) ((m) * lda + (k))
#endif

#ifdef CONV_DX
#define A_AT(m, k) A[a_off + ((k) / CONV_TAPS) * (CONV_CG * CONV_TAPS) + (m) * CONV_TAPS + (k) % CONV_TAPS]
#define B_AT(k, n) conv_output_grad(B, b_off, ldb, k, n)
#else
#if defined(CONV_FLIP)
// pack_a of the CPU family's input gradient (the convolution of dY with the flipped weight):
// A[c, (o, t)] = w[o, c, CONV_FLIP - 1 - t] over the CONV_FLIP taps, a holding w as stored.
#define A_AT(m, k) A[a_off + ((k) / CONV_FLIP * M + (m)) * CONV_FLIP + CONV_FLIP - 1 - (k) % CONV_FLIP]
#elif TRANS_A
#define A_AT(m, k) A[a_off + (k) * lda + (m)]
#else
#define A_AT(m, k) A[a_off + A_INDEX(m, k)]
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

// STORE_AT(i, m, n, v): element (m, n) of the product, v, stored at C[i], i = C_AT(m, n); m counts
// the rows of every group (a group's row r is row GROUP_ID * M + r).
#if defined(SPLIT_K)
#define C_AT(m, n) (c_off + (SLICE_ID * GROUPS * M + (m)) * ldc + (n))
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
    __global const float* restrict A, int a_off, const int lda, \
    __global const float* restrict B, int b_off, const int ldb, \
    __global float* restrict C, const int c_off, const int ldc, \
    __global const float* restrict bias, const int bias_off
