// gemm_packed's gather of an implicit convolution's B (CONV_B, given PANEL_K) into a panel of
// PANEL columns in local memory; included by gemm_packed.cl.

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

// 16 pixels in one output row, or with 8 to a row in two, read runs of consecutive input elements
// (load_pixels): the 16 columns of a panel (PANEL_RUNS) or, with TRANS_B, 16 rows (K_RUNS).
#define RUNS (CONV_SW == 1 && (CONV_OW >= PANEL ? CONV_W >= PANEL : CONV_OW == 8 && CONV_W >= 8))
#define PANEL_RUNS (RUNS && !TRANS_B)
#define K_RUNS (RUNS && TRANS_B)

#if RUNS
// The N elements x[at .. at + N - 1] (load_run16, load_run8), input row ih and columns iw .. iw + N - 1
// of an image: one vector load where none is padding, zeros for a row of padding, shifted in
// registers for one column of padding (a 3 x 3 window's), else read in order up to the edge. (16
// lanes as two halves of 8 were slower under PoCL.)
#if CONV_OW >= PANEL  // and CONV_W >= PANEL
inline float16 load_run16(__global const float* restrict x, const int at, const int ih, const int iw)
{
    if ((uint)ih >= CONV_H) return (float16)(0.0f);
    return load_window16(x + at - iw, iw, CONV_W);  // (register_block.h)
}
#else
inline float8 load_run8(__global const float* restrict x, const int at, const int ih, const int iw)
{
    if ((uint)ih >= CONV_H) return (float8)(0.0f);
    if ((uint)iw <= CONV_W - 8) return vload8(0, x + at);
    if (iw == -1) {
        const float8 v = vload8(0, x + at + 1);
        return (float8)(0.0f, v.s0123, v.s456);
    }
    if (iw == CONV_W - 7) {
        const float8 v = vload8(0, x + at - 1);
        return (float8)(v.s1234, v.s567, 0.0f);
    }
    __attribute__((aligned(32))) float run[8];
    for (int i = 0; i < 8; i++) run[i] = (uint)(iw + i) < CONV_W ? x[at + i] : 0.0f;
    return *(float8*)run;
}
#endif

// The 16 pixels from (ih, iw) at x[at]: one run, or with 8 to a row two in consecutive output rows
inline float16 load_pixels(__global const float* restrict x, const int at, const int ih, const int iw)
{
#if CONV_OW >= PANEL
    return load_run16(x, at, ih, iw);
#else
    return (float16)(load_run8(x, at, ih, iw), load_run8(x, at + CONV_SH * CONV_W, ih + CONV_SH, iw));
#endif
}

// Whether pixels n .. n + 15 are one output row's, or with 8 to a row, two rows of one image
inline int pixels_run(const int n)
{
    const int image = CONV_OH * CONV_OW;
    return CONV_OW >= PANEL ? n % CONV_OW + PANEL <= CONV_OW : n % CONV_OW == 0 && n / image == (n + PANEL - 1) / image;
}
#endif

// panel[k - k0] = the 16 values of row k of panel p of B (k0 <= k < k1), 0 in the padding and past
// column N. B is the im2col matrix of x: its columns are pixels and its rows (c, kh, kw), or the
// other way round with TRANS_B (the weight gradient's dY . cols^T). The parts of the 16 columns are
// found once; those of the rows are stepped along (c, kh, kw), or with TRANS_B found once per row.
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
#if TRANS_B
    for (int k = k0; k < k1; k++) {
        int ktop, kleft, kat;
        pixel_part(k, &ktop, &kleft, &kat);
        __local float* out = panel + (k - k0) * PANEL;
#if K_RUNS
        if (k + PANEL <= k1 && pixels_run(k)) {  // rows k .. k + 15 as one 16 x 16 block
            float16 block[PANEL];  // block[j] = column j over the 16 rows
            _Pragma("unroll") for (int j = 0; j < PANEL; j++)
                block[j] = load_pixels(x, at[j] + kat, top[j] + ktop, left[j] + kleft);
            transpose16(block);
            _Pragma("unroll") for (int i = 0; i < PANEL; i++) ((__local float16*)out)[i] = block[i];
            k += PANEL - 1;
            continue;
        }
#endif
        gather_row(out, x, top, left, at, ktop, kleft, kat);
    }
#else
#if PANEL_RUNS
    const int run = valid >= PANEL && pixels_run(p * PANEL);
#endif
    int kh = k0 / CONV_KW % CONV_KH, kw = k0 % CONV_KW, channel = k0 / CONV_TAPS * CONV_CHANNEL_STRIDE;
    for (int k = k0; k < k1; k++) {
        const int ktop = kh * CONV_DH, kleft = kw * CONV_DW, kat = channel + ktop * CONV_W + kleft;
#if PANEL_RUNS
        if (run)
            ((__local float16*)panel)[k - k0] = load_pixels(x, at[0] + kat, top[0] + ktop, left[0] + kleft);
        else
#endif
            gather_row(panel + (k - k0) * PANEL, x, top, left, at, ktop, kleft, kat);
        if (++kw == CONV_KW) {
            kw = 0;
            if (++kh == CONV_KH) {
                kh = 0;
                channel += CONV_CHANNEL_STRIDE;
            }
        }
    }
#endif
    if (valid < PANEL)
        for (int k = k0; k < k1; k++)
            for (int j = valid; j < PANEL; j++) panel[(k - k0) * PANEL + j] = 0.0f;
}
#endif
