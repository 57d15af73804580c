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
