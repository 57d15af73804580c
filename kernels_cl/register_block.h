// The CPU family's register blocks (gemm_packed.cl, dense_chain.cl): CPU_ROWS rows by 16 columns of a
// product in float16 accumulators, and the vector loads that feed them (conv_rows.cl's too).
#ifndef CPU_ROWS
#define CPU_ROWS 12  // rows of C per work-item: float16 accumulators kept in registers
#endif
#define PANEL 16     // columns of a B panel: one float16

// 16 consecutive floats from p, zeros past the first `count` (a panel's last, partial row).
inline float16 load_part16(__global const float* restrict p, const int count)
{
    __attribute__((aligned(64))) float v[PANEL];
    for (int j = 0; j < PANEL; j++) v[j] = j < count ? p[j] : 0.0f;
    return *(float16*)v;
}

// The 16 values of a row of `width` values (a compile-time constant) from column iw, zeros outside
// the row: one vector load inside it, shifted in registers for one column of padding on either side
// (a 3 x 3 window's), else read value by value (conv_panel.h's runs, conv_rows.cl's windows).
inline float16 load_window16(__global const float* restrict row, const int iw, const int width)
{
    if (iw >= 0 && iw <= width - PANEL) return load16(row + iw);
    if (width >= PANEL && iw == -1) {
        const float16 v = load16(row);
        return (float16)(0.0f, v.s0123, v.s4567, v.s89ab, v.scde);
    }
    if (width >= PANEL && iw == width - PANEL + 1) {
        const float16 v = load16(row + width - PANEL);
        return (float16)(v.s1234, v.s5678, v.s9abc, v.sdef, 0.0f);
    }
    __attribute__((aligned(64))) float v[PANEL];
    for (int j = 0; j < PANEL; j++) v[j] = (uint)(iw + j) < width ? row[iw + j] : 0.0f;
    return *(float16*)v;
}

// acc[r] = the sum over k0 <= k < k1, in order, of A_ELEM(r, k) * B_ROW(k): rows r of a CPU_ROWS x 16
// block of the product. Unrolled, or the accumulators live in memory instead of registers (2-3x
// slower under PoCL).
#define MULTIPLY(acc, A_ELEM, B_ROW, k0, k1) \
    _Pragma("unroll") for (int r = 0; r < CPU_ROWS; r++) acc[r] = (float16)(0.0f); \
    for (int k = k0; k < k1; k++) { \
        const float16 bk = B_ROW(k); \
        _Pragma("unroll") for (int r = 0; r < CPU_ROWS; r++) acc[r] = A_ELEM(r, k) * bk + acc[r]; \
    }
