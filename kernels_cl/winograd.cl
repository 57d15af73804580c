// Winograd F(m x m, 3x3), m = WINO_TILE (2 or 4): a 3x3 stride-1 convolution as n x n products of
// transformed operands, n = m + 2 (Lavin and Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2015). Each m x m tile of the output is A^T [ (G g G^T) . (B^T d B) ] A, summed over
// the input channels, where g is a channel pair's 3x3 kernel, d the n x n input tile that the
// output tile reads (its halo included) and "." the element-wise product: n^2 multiplications
// where the direct convolution has 9 m^2 (16 for 36 with F(2x2), 36 for 144 with F(4x4)).
// The sum over the channels of each of the n^2 elements e = n * row + col is a GEMM,
// M[e] (O x tiles) = U[e] (O x C) . V[e] (C x tiles), which ops/winograd.py records as one grouped
// gemm_tiled launch (GROUPS = n^2, gemm_common.h).
// F(2x2)'s transforms take only additions and halvings, so float32 keeps close to the direct
// convolution's accuracy; F(4x4)'s take factors up to 8 and fractions down to 1/24 (not exact in
// float32), and lose about a decimal digit more.
//
// Layouts: U is (n^2, O, C); V is (n^2, C, tiles) and M (n^2, O, tiles), a tile t counting
// (image, tile row, tile column) over WINO_TH x WINO_TW tiles per image.

#ifndef WINO_TILE
#define WINO_TILE 2  // output pixels per tile side: 2 or 4
#endif
#define WINO_N (WINO_TILE + 2)  // input pixels per tile side, and transformed elements
#define WINO_ELEMENTS (WINO_N * WINO_N)
// Every loop over a tile is unrolled: its private arrays are then indexed by constants and live in
// registers.

// The transforms along one dimension, over values `stride` apart in a (private) array: B^T a of n
// values in place (the input), G a of 3 values into n (the weight), A^T a of n values into m (the
// output).
#if WINO_TILE == 2
inline void input_1d(float* a, const int s)
{
    const float a0 = a[0], a1 = a[s], a2 = a[2 * s], a3 = a[3 * s];
    a[0] = a0 - a2; a[s] = a1 + a2; a[2 * s] = a2 - a1; a[3 * s] = a1 - a3;
}

inline void weight_1d(const float* a, const int s, float* r, const int rs)
{
    r[0] = a[0];
    r[rs] = 0.5f * (a[0] + a[s] + a[2 * s]);
    r[2 * rs] = 0.5f * (a[0] - a[s] + a[2 * s]);
    r[3 * rs] = a[2 * s];
}

inline void output_1d(const float* a, const int s, float* r, const int rs)
{
    r[0] = a[0] + a[s] + a[2 * s];
    r[rs] = a[s] - a[2 * s] - a[3 * s];
}
#elif WINO_TILE == 4
inline void input_1d(float* a, const int s)
{
    const float a0 = a[0], a1 = a[s], a2 = a[2 * s], a3 = a[3 * s], a4 = a[4 * s], a5 = a[5 * s];
    a[0] = 4.0f * a0 - 5.0f * a2 + a4;
    a[s] = a3 + a4 - 4.0f * (a1 + a2);
    a[2 * s] = a4 - a3 + 4.0f * (a1 - a2);
    a[3 * s] = a4 - a2 + 2.0f * (a3 - a1);
    a[4 * s] = a4 - a2 + 2.0f * (a1 - a3);
    a[5 * s] = 4.0f * a1 - 5.0f * a3 + a5;
}

inline void weight_1d(const float* a, const int s, float* r, const int rs)
{
    const float a0 = a[0], a1 = a[s], a2 = a[2 * s];
    r[0] = 0.25f * a0;
    r[rs] = (a0 + a1 + a2) * (-1.0f / 6.0f);
    r[2 * rs] = (a0 - a1 + a2) * (-1.0f / 6.0f);
    r[3 * rs] = a0 * (1.0f / 24.0f) + a1 * (1.0f / 12.0f) + a2 * (1.0f / 6.0f);
    r[4 * rs] = a0 * (1.0f / 24.0f) - a1 * (1.0f / 12.0f) + a2 * (1.0f / 6.0f);
    r[5 * rs] = a2;
}

inline void output_1d(const float* a, const int s, float* r, const int rs)
{
    const float a1 = a[s], a2 = a[2 * s], a3 = a[3 * s], a4 = a[4 * s];
    r[0] = a[0] + a1 + a2 + a3 + a4;
    r[rs] = a1 - a2 + 2.0f * (a3 - a4);
    r[2 * rs] = a1 + a2 + 4.0f * (a3 + a4);
    r[3 * rs] = a1 - a2 + 8.0f * (a3 - a4) + a[5 * s];
}
#else
#error "WINO_TILE is 2 or 4"
#endif

// U[e, o, c] = (G g G^T)[e] for the weight w (WINO_O, WINO_C, 3, 3) as stored. With WINO_FLIP, the
// weight of the input gradient instead: U[e, c, o] from g[kh, kw] = w[o, c, 2 - kh, 2 - kw] (the
// convolution of dY, in and out swapped, with every kernel turned by 180 degrees).
// A work-item per row of U[e] and column, (o, c) or with WINO_FLIP (c, o), so that the stores of
// neighbouring work-items are contiguous; each reads its 9 taps.
#ifdef WINO_O
#ifdef WINO_C
__kernel void winograd_weights(__global const float* restrict w, const int wo,
                               __global float* restrict u, const int uo)
{
    const int i = get_global_id(0);
    if (i >= WINO_O * WINO_C) return;
#ifdef WINO_FLIP
    const int c = i / WINO_O, o = i % WINO_O;
#else
    const int o = i / WINO_C, c = i % WINO_C;
#endif
    __global const float* taps = w + wo + (o * WINO_C + c) * 9;
    float g[9];
    #pragma unroll
    for (int k = 0; k < 9; k++) {
#ifdef WINO_FLIP
        g[k] = taps[8 - k];
#else
        g[k] = taps[k];
#endif
    }
    float gc[WINO_N * 3], ggt[WINO_ELEMENTS];
    #pragma unroll
    for (int col = 0; col < 3; col++)  // G g: each column transformed
        weight_1d(g + col, 3, gc + col, 3);
    #pragma unroll
    for (int row = 0; row < WINO_N; row++)  // (G g) G^T: each row transformed
        weight_1d(gc + 3 * row, 1, ggt + WINO_N * row, 1);
    #pragma unroll
    for (int e = 0; e < WINO_ELEMENTS; e++)
        u[uo + e * WINO_O * WINO_C + i] = ggt[e];
}
#endif
#endif

// V[e, c, t] = (B^T d B)[e] for the tiles d of the input x of WINO_C channels of WINO_H x WINO_W,
// NCHW (dY in the input gradient), padded by WINO_PH rows above and WINO_PW columns left (zeros
// outside the image: the bottom and right padding follow from the number of tiles). A work-item per
// (t, c) of a 2-D grid, t first, so that the stores of neighbouring work-items are contiguous.
#ifdef WINO_H
__kernel void winograd_input(const int images,
                             __global const float* restrict x, const int xo,
                             __global float* restrict v, const int vo)
{
    const int tiles = images * WINO_TH * WINO_TW, t = get_global_id(0), c = get_global_id(1);
    if (t >= tiles || c >= WINO_C) return;
    const int image = t / (WINO_TH * WINO_TW), ty = t / WINO_TW % WINO_TH, tx = t % WINO_TW;
    const int top = WINO_TILE * ty - WINO_PH, left = WINO_TILE * tx - WINO_PW;
    __global const float* plane = x + xo + (image * WINO_C + c) * (WINO_H * WINO_W);
    float d[WINO_ELEMENTS];
    #pragma unroll
    for (int r = 0; r < WINO_N; r++)
        #pragma unroll
        for (int col = 0; col < WINO_N; col++) {
            const int h = top + r, w = left + col;
            d[WINO_N * r + col] = h >= 0 && h < WINO_H && w >= 0 && w < WINO_W ? plane[h * WINO_W + w] : 0.0f;
        }
    #pragma unroll
    for (int col = 0; col < WINO_N; col++)  // B^T d: each column transformed
        input_1d(d + col, WINO_N);
    #pragma unroll
    for (int r = 0; r < WINO_N; r++)        // (B^T d) B: each row transformed
        input_1d(d + WINO_N * r, 1);
    #pragma unroll
    for (int e = 0; e < WINO_ELEMENTS; e++)
        v[vo + (e * WINO_C + c) * tiles + t] = d[e];
}
#endif

// y = act(A^T m A + bias) for every tile: y (images, WINO_O, WINO_OH, WINO_OW) NCHW, only the
// pixels inside it written (the last tile row or column is cut where the size is not a multiple of
// the tile's); bias[o] with HAS_BIAS; ACT (common.h), as the GEMM epilogue (gemm_common.h). A
// work-item per (t, o) of a 2-D grid.
#ifdef WINO_OH
__kernel void winograd_output(const int images,
                              __global const float* restrict m, const int mo,
                              __global const float* restrict bias, const int bias_off,
                              __global float* restrict y, const int yo)
{
    const int tiles = images * WINO_TH * WINO_TW, t = get_global_id(0), o = get_global_id(1);
    if (t >= tiles || o >= WINO_O) return;
    const int image = t / (WINO_TH * WINO_TW), ty = t / WINO_TW % WINO_TH, tx = t % WINO_TW;
    float p[WINO_ELEMENTS], am[WINO_TILE * WINO_N], out[WINO_TILE * WINO_TILE];
    #pragma unroll
    for (int e = 0; e < WINO_ELEMENTS; e++)
        p[e] = m[mo + (e * WINO_O + o) * tiles + t];
    #pragma unroll
    for (int col = 0; col < WINO_N; col++)  // A^T m: each column transformed
        output_1d(p + col, WINO_N, am + col, WINO_N);
    #pragma unroll
    for (int r = 0; r < WINO_TILE; r++)     // (A^T m) A: each row transformed
        output_1d(am + WINO_N * r, 1, out + WINO_TILE * r, 1);
#ifdef HAS_BIAS
    const float b = bias[bias_off + o];
#else
    const float b = 0.0f;
#endif
    __global float* plane = y + yo + (image * WINO_O + o) * (WINO_OH * WINO_OW);
    #pragma unroll
    for (int r = 0; r < WINO_TILE; r++)
        #pragma unroll
        for (int col = 0; col < WINO_TILE; col++) {
            const int h = WINO_TILE * ty + r, w = WINO_TILE * tx + col;
            if (h < WINO_OH && w < WINO_OW) plane[h * WINO_OW + w] = act_forward(out[WINO_TILE * r + col] + b);
        }
}
#endif
