// Winograd F(2x2, 3x3): a 3x3 stride-1 convolution as 16 products of transformed operands
// (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015). Each 2x2 tile of the
// output is A^T [ (G g G^T) . (B^T d B) ] A, summed over the input channels, where g is a channel
// pair's 3x3 kernel, d the 4x4 input tile that the output tile reads (its halo included) and "."
// the element-wise product of 4x4 matrices: 16 multiplications where the direct convolution has 36.
// The sum over the channels of each of the 16 elements e = 4 * row + col is a GEMM,
// M[e] (O x tiles) = U[e] (O x C) . V[e] (C x tiles), which ops/winograd.py records as one grouped
// gemm_tiled launch (GROUPS=16, gemm_common.h). The transforms below take only additions and
// halvings, so float32 keeps close to the direct convolution's accuracy.
//
// Layouts: U is (16, O, C); V is (16, C, tiles) and M (16, O, tiles), a tile t counting
// (image, tile row, tile column) over WINO_TH x WINO_TW tiles per image.

// B^T a over 4 values: the input transform along one dimension.
#define WINO_BT(a0, a1, a2, a3, r0, r1, r2, r3) \
    do { r0 = (a0) - (a2); r1 = (a1) + (a2); r2 = (a2) - (a1); r3 = (a1) - (a3); } while (0)
// G a over 3 values (4 results): the weight transform along one dimension.
#define WINO_G(a0, a1, a2, r0, r1, r2, r3) \
    do { r0 = (a0); r1 = 0.5f * ((a0) + (a1) + (a2)); r2 = 0.5f * ((a0) - (a1) + (a2)); r3 = (a2); } while (0)
// A^T a over 4 values (2 results): the output transform along one dimension.
#define WINO_AT(a0, a1, a2, a3, r0, r1) do { r0 = (a0) + (a1) + (a2); r1 = (a1) - (a2) - (a3); } while (0)

// U[e, o, c] = (G g G^T)[e] for the weight w (WINO_O, WINO_C, 3, 3) as stored. With WINO_FLIP, the
// weight of the input gradient instead: U[e, c, o] from g[kh, kw] = w[o, c, 2 - kh, 2 - kw] (the
// convolution of dY, in and out swapped, with every kernel turned by 180 degrees).
// A work-item per (o, c), reading its 9 taps.
#ifdef WINO_O
#ifdef WINO_C
__kernel void winograd_weights(__global const float* restrict w, const int wo,
                               __global float* restrict u, const int uo)
{
    const int i = get_global_id(0);  // i = o * WINO_C + c
    if (i >= WINO_O * WINO_C) return;
    float g[3][3];
    for (int k = 0; k < 9; k++) {
#ifdef WINO_FLIP
        g[k / 3][k % 3] = w[wo + i * 9 + 8 - k];
#else
        g[k / 3][k % 3] = w[wo + i * 9 + k];
#endif
    }
    float gc[4][3];  // G g: each column transformed
    for (int col = 0; col < 3; col++)
        WINO_G(g[0][col], g[1][col], g[2][col], gc[0][col], gc[1][col], gc[2][col], gc[3][col]);
#ifdef WINO_FLIP
    const int o = i / WINO_C, c = i % WINO_C, at = uo + c * WINO_O + o;  // (16, C, O)
#else
    const int at = uo + i;                                                // (16, O, C)
#endif
    for (int row = 0; row < 4; row++) {  // (G g) G^T: each row transformed
        float r0, r1, r2, r3;
        WINO_G(gc[row][0], gc[row][1], gc[row][2], r0, r1, r2, r3);
        u[at + (4 * row + 0) * WINO_O * WINO_C] = r0;
        u[at + (4 * row + 1) * WINO_O * WINO_C] = r1;
        u[at + (4 * row + 2) * WINO_O * WINO_C] = r2;
        u[at + (4 * row + 3) * WINO_O * WINO_C] = r3;
    }
}
#endif
#endif

// V[e, c, t] = (B^T d B)[e] for the tiles d of the input x of WINO_C channels of WINO_H x WINO_W,
// channel c of image n at x[xo + n * WINO_IMAGE_STRIDE + c * WINO_CHANNEL_STRIDE] (NCHW, or dY's layout in the
// input gradient), padded by WINO_PH rows above and WINO_PW columns left (zeros outside the image:
// the bottom and right padding follow from the number of tiles). A work-item per (c, t), t fastest,
// so that the stores of neighbouring work-items are contiguous.
#ifdef WINO_IMAGE_STRIDE
__kernel void winograd_input(const int images,
                             __global const float* restrict x, const int xo,
                             __global float* restrict v, const int vo)
{
    const int tiles = images * WINO_TH * WINO_TW;
    const int i = get_global_id(0);  // i = c * tiles + t
    if (i >= WINO_C * tiles) return;
    const int c = i / tiles, t = i % tiles;
    const int image = t / (WINO_TH * WINO_TW), ty = t / WINO_TW % WINO_TH, tx = t % WINO_TW;
    const int top = 2 * ty - WINO_PH, left = 2 * tx - WINO_PW;
    __global const float* plane = x + xo + image * WINO_IMAGE_STRIDE + c * WINO_CHANNEL_STRIDE;
    float d[4][4];
    for (int r = 0; r < 4; r++)
        for (int col = 0; col < 4; col++) {
            const int h = top + r, w = left + col;
            d[r][col] = h >= 0 && h < WINO_H && w >= 0 && w < WINO_W ? plane[h * WINO_W + w] : 0.0f;
        }
    float bd[4][4];  // B^T d: each column transformed
    for (int col = 0; col < 4; col++)
        WINO_BT(d[0][col], d[1][col], d[2][col], d[3][col], bd[0][col], bd[1][col], bd[2][col], bd[3][col]);
    const int at = vo + c * tiles + t, plane_stride = WINO_C * tiles;
    for (int r = 0; r < 4; r++) {  // (B^T d) B: each row transformed
        float r0, r1, r2, r3;
        WINO_BT(bd[r][0], bd[r][1], bd[r][2], bd[r][3], r0, r1, r2, r3);
        v[at + (4 * r + 0) * plane_stride] = r0;
        v[at + (4 * r + 1) * plane_stride] = r1;
        v[at + (4 * r + 2) * plane_stride] = r2;
        v[at + (4 * r + 3) * plane_stride] = r3;
    }
}
#endif

// y = act(A^T m A + bias) for every tile: y (images, WINO_O, WINO_OH, WINO_OW) NCHW, only the
// pixels inside it written (the last tile row or column is cut where the size is odd); bias[o]
// with HAS_BIAS; ACT (common.h), as the GEMM epilogue (gemm_common.h). A work-item per (o, t).
#ifdef WINO_OH
__kernel void winograd_output(const int images,
                              __global const float* restrict m, const int mo,
                              __global const float* restrict bias, const int bias_off,
                              __global float* restrict y, const int yo)
{
    const int tiles = images * WINO_TH * WINO_TW;
    const int i = get_global_id(0);  // i = o * tiles + t
    if (i >= WINO_O * tiles) return;
    const int o = i / tiles, t = i % tiles;
    const int image = t / (WINO_TH * WINO_TW), ty = t / WINO_TW % WINO_TH, tx = t % WINO_TW;
    const int plane_stride = WINO_O * tiles;
    float am[2][4];  // A^T m: each column transformed
    for (int col = 0; col < 4; col++) {
        const int at = mo + col * plane_stride + i;
        WINO_AT(m[at], m[at + 4 * plane_stride], m[at + 8 * plane_stride], m[at + 12 * plane_stride],
                am[0][col], am[1][col]);
    }
#ifdef HAS_BIAS
    const float b = bias[bias_off + o];
#else
    const float b = 0.0f;
#endif
    __global float* out = y + yo + (image * WINO_O + o) * (WINO_OH * WINO_OW);
    for (int r = 0; r < 2; r++) {  // (A^T m) A: each row transformed
        const int h = 2 * ty + r, w = 2 * tx;
        float r0, r1;
        WINO_AT(am[r][0], am[r][1], am[r][2], am[r][3], r0, r1);
        if (h < WINO_OH) {
            out[h * WINO_OW + w] = act_forward(r0 + b);
            if (w + 1 < WINO_OW) out[h * WINO_OW + w + 1] = act_forward(r1 + b);
        }
    }
}
#endif
