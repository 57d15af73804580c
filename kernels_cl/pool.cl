// Max and average pooling over NCHW images, forward and backward, as torch.nn.MaxPool2d and
// torch.nn.AvgPool2d (ceil_mode=False, count_include_pad=True).
//
// Every launch sees `planes` = batch x channels independent H x W input planes and their
// OH x OW output planes. A window (oh, ow) covers padded rows oh*SH .. oh*SH+KH-1, that is input
// rows oh*SH-PH .. oh*SH-PH+KH-1 (likewise for columns). Padding is -inf for max pooling (it never
// wins: with PH <= KH/2 every window holds at least one input element) and 0 for average pooling,
// whose divisor is always KH*KW (with ceil_mode=False no window reaches past the padding).
//
// Backward passes are gathers: one work-item per input element sums the gradients of the output
// windows that cover it, in a fixed order, so results are deterministic and need no atomics.
//
// The geometry comes as compile-time constants (POOL_H, POOL_W, ... from the launcher), which turn
// the index arithmetic's divisions into multiplications: on CPUs, run-time divisions bounded it.
#define POOL_GEOMETRY const int planes
#define POOL_CONSTANTS const int H = POOL_H, W = POOL_W, OH = POOL_OH, OW = POOL_OW, KH = POOL_KH, \
    KW = POOL_KW, SH = POOL_SH, SW = POOL_SW, PH = POOL_PH, PW = POOL_PW

// The window rows [*lo, *hi) covering input coordinate i (0 <= i < size): windows o with
// o*s <= i+p < o*s+k, clipped to the out windows that exist.
inline void covering(const int i, const int k, const int s, const int p, const int out,
                     int* lo, int* hi)
{
    const int q = i + p;                       // position in the padded input, >= 0
    *lo = q < k ? 0 : (q - k) / s + 1;
    *hi = min(q / s + 1, out);
}

// The input window of output element gid = (plane, oh, ow), clipped to the image: rows [*hs, *he),
// columns [*ws, *we). Returns the offset of the plane's first input element.
inline int window(const int gid, const int H, const int W, const int OH, const int OW, const int KH, const int KW,
                  const int SH, const int SW, const int PH, const int PW, int* hs, int* he, int* ws, int* we)
{
    const int ow = gid % OW, oh = (gid / OW) % OH, plane = gid / (OW * OH);
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    *hs = max(h0, 0);
    *he = min(h0 + KH, H);
    *ws = max(w0, 0);
    *we = min(w0 + KW, W);
    return plane * H * W;
}

// A window's next candidate c (at flat index i) against the best so far, several windows at a
// time (intN: the comparisons' type): as the loop of maxpool_forward below (c != c: isnan).
#define PAIR_CANDIDATE(intN, c, i) { \
        const intN wins = (c > best) | (c != c); \
        best = select(best, c, wins); \
        best_at = select(best_at, i, wins); \
    }

// N windows of a row of 2 x 2 windows, the first of them at column 2 * ow of the input rows at xp
// and xp + W (flat index row + 2 * ow in the plane), from a float(N2) of each row (N2 = 2N): the first
// candidate, then the other three in row-major order, stored at y[first] (and argmax[first]);
// `offsets` the windows' first columns from 2 * ow, (0, 2, ..., N2 - 2).
#define PAIR_WINDOWS(N, N2, offsets) { \
        const float##N2 top = vload##N2(0, xp + 2 * ow), bottom = vload##N2(0, xp + W + 2 * ow); \
        const int##N at = (int##N)(row + 2 * ow) + (int##N)offsets; \
        float##N best = top.even; \
        int##N best_at = at; \
        PAIR_CANDIDATE(int##N, top.odd, at + 1) \
        PAIR_CANDIDATE(int##N, bottom.even, at + W) \
        PAIR_CANDIDATE(int##N, bottom.odd, at + W + 1) \
        vstore##N(best, 0, y + yo + first); \
        if (save_argmax) vstore##N(best_at, 0, argmax + ao + first); \
    }

// y = max over each window; if save_argmax, argmax = the flat index h*W+w of the chosen input
// element within its plane (the first maximum in row-major window order; a NaN wins, as PyTorch).
// One work-item per output element, or with POOL_ROWS (CPUs) per output row, read in order; with
// POOL_PAIRS too (2 x 2 windows at stride 2 without padding) eight outputs at a time from a float16
// of each of their two input rows, then four, then the rest of the row one by one.
__kernel void maxpool_forward(POOL_GEOMETRY, const int save_argmax,
                              __global const float* x, const int xo,
                              __global float* y, const int yo,
                              __global int* argmax, const int ao)
{
    POOL_CONSTANTS;
#ifdef POOL_ROWS
    int first = get_global_id(0) * OW, count = OW;
#else
    const int first = get_global_id(0), count = 1;
#endif
    if (first >= planes * OH * OW) return;
#if defined(POOL_ROWS) && defined(POOL_PAIRS)
    const int row = 2 * (first / OW % OH) * W;  // the flat index of the window's first input row
    __global const float* xp = x + xo + first / (OH * OW) * H * W + row;
    int ow = 0;
    for (; ow + 8 <= OW; ow += 8, first += 8, count -= 8)
        PAIR_WINDOWS(8, 16, (0, 2, 4, 6, 8, 10, 12, 14))
    if (ow + 4 <= OW) {  // four more (rows of 12 outputs, as mnist-cnn's, in two steps)
        PAIR_WINDOWS(4, 8, (0, 2, 4, 6))
        first += 4;
        count -= 4;
    }
#endif
    for (int gid = first; gid < first + count; gid++) {
        const int h0 = gid / OW % OH * SH - PH, w0 = gid % OW * SW - PW;  // the window's first row, column
        __global const float* xp = x + xo + gid / (OH * OW) * H * W;
        float best = -INFINITY;
        int best_at = max(h0, 0) * W + max(w0, 0);
        // Constant trip counts (padding skipped), so that the loops unroll.
        for (int i = 0; i < KH; i++) {
            for (int j = 0; j < KW; j++) {
                const int h = h0 + i, w = w0 + j;
                if (h < 0 || h >= H || w < 0 || w >= W) continue;
                const float v = xp[h * W + w];
                const int wins = v > best || v != v;  // v != v: isnan, which PoCL does not inline
                best = wins ? v : best;
                best_at = wins ? h * W + w : best_at;
            }
        }
        y[yo + gid] = best;
        if (save_argmax) argmax[ao + gid] = best_at;
    }
}

// dx = for each input element, the sum of dy over the windows that cover it and chose it.
// One work-item per input element; with POOL_CELLS (CPUs, windows that do not overlap), one per
// output element, writing its cell of the input: rows oh*SH-PH .. (oh+1)*SH-PH-1 (from the image's
// edge for the first, to it for the last; likewise for columns), which holds its window. The cells
// cover the image once. With POOL_PAIRS (CPUs, 2 x 2 windows at stride 2 without padding), one per
// output row, writing the same cells: eight at a time as a float16 of each of their two rows, then
// four, then the rest of the row one by one, then the columns and (for the last output row) the
// rows that no window reaches.
__kernel void maxpool_backward(POOL_GEOMETRY,
                               __global const int* argmax, const int ao,
                               __global const float* dy, const int dyo,
                               __global float* dx, const int dxo)
{
    POOL_CONSTANTS;
#if defined(POOL_PAIRS)
    const int r = get_global_id(0);
    if (r >= planes * OH) return;
    const int oh = r % OH, row = 2 * oh * W;  // the flat index of the cells' first row in the plane
    __global float* top = dx + dxo + r / OH * H * W + row;
    __global const int* chosen = argmax + ao + r * OW;
    __global const float* g = dy + dyo + r * OW;
    int ow = 0;
    for (; ow + 8 <= OW; ow += 8) {
        const int8 c = vload8(0, chosen + ow);
        const float8 v = vload8(0, g + ow);
        const int16 twice = (int16)(c.s0, c.s0, c.s1, c.s1, c.s2, c.s2, c.s3, c.s3,
                                    c.s4, c.s4, c.s5, c.s5, c.s6, c.s6, c.s7, c.s7);
        const float16 value = (float16)(v.s0, v.s0, v.s1, v.s1, v.s2, v.s2, v.s3, v.s3,
                                        v.s4, v.s4, v.s5, v.s5, v.s6, v.s6, v.s7, v.s7);
        const int16 at = (int16)(row + 2 * ow) + (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        vstore16(select((float16)(0.0f), value, twice == at), 0, top + 2 * ow);
        vstore16(select((float16)(0.0f), value, twice == at + W), 0, top + W + 2 * ow);
    }
    if (ow + 4 <= OW) {
        const int4 c = vload4(0, chosen + ow);
        const float4 v = vload4(0, g + ow);
        const int8 twice = (int8)(c.s0, c.s0, c.s1, c.s1, c.s2, c.s2, c.s3, c.s3);
        const float8 value = (float8)(v.s0, v.s0, v.s1, v.s1, v.s2, v.s2, v.s3, v.s3);
        const int8 at = (int8)(row + 2 * ow) + (int8)(0, 1, 2, 3, 4, 5, 6, 7);
        vstore8(select((float8)(0.0f), value, twice == at), 0, top + 2 * ow);
        vstore8(select((float8)(0.0f), value, twice == at + W), 0, top + W + 2 * ow);
        ow += 4;
    }
    for (; ow < OW; ow++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                const int at = row + i * W + 2 * ow + j;
                top[i * W + 2 * ow + j] = chosen[ow] == at ? g[ow] : 0.0f;
            }
    for (int w = 2 * OW; w < W; w++) top[w] = top[W + w] = 0.0f;
    if (oh == OH - 1)
        for (int i = 2 * W; i < (H - 2 * oh) * W; i++) top[i] = 0.0f;
#elif defined(POOL_CELLS)
    const int o = get_global_id(0);
    if (o >= planes * OH * OW) return;
    const int ow = o % OW, oh = o / OW % OH;
    const int h0 = oh == 0 ? 0 : oh * SH - PH, h1 = oh == OH - 1 ? H : (oh + 1) * SH - PH;
    const int w0 = ow == 0 ? 0 : ow * SW - PW, w1 = ow == OW - 1 ? W : (ow + 1) * SW - PW;
    const int chosen = argmax[ao + o];
    const float g = dy[dyo + o];
    __global float* plane = dx + dxo + o / (OH * OW) * H * W;
    for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++) plane[h * W + w] = h * W + w == chosen ? g : 0.0f;
#else
    const int gid = get_global_id(0);
    if (gid >= planes * H * W) return;
    const int at = gid % (H * W);              // index of this element within its plane
    const int h = at / W, w = at % W;
    const int plane = gid / (H * W);
    const int base = plane * OH * OW;
#if POOL_SH >= POOL_KH && POOL_SW >= POOL_KW
    // Windows that do not overlap: at most one covers this element. Branch-free, so it vectorises.
    const int oh = (h + PH) / SH, ow = (w + PW) / SW, o = base + oh * OW + ow;
    const int covered = oh < OH && ow < OW && h + PH - oh * SH < KH && w + PW - ow * SW < KW;
    dx[dxo + gid] = covered && argmax[ao + o] == at ? dy[dyo + o] : 0.0f;
#else
    int oh0, oh1, ow0, ow1;
    covering(h, KH, SH, PH, OH, &oh0, &oh1);
    covering(w, KW, SW, PW, OW, &ow0, &ow1);
    float s = 0.0f;
    for (int oh = oh0; oh < oh1; oh++) {
        for (int ow = ow0; ow < ow1; ow++) {
            const int o = base + oh * OW + ow;
            if (argmax[ao + o] == at) s += dy[dyo + o];
        }
    }
    dx[dxo + gid] = s;
#endif
#endif
}

// y = the mean of each window, zero padding included (divisor KH*KW). One work-item per output.
__kernel void avgpool_forward(POOL_GEOMETRY,
                              __global const float* x, const int xo,
                              __global float* y, const int yo)
{
    POOL_CONSTANTS;
    const int gid = get_global_id(0);
    if (gid >= planes * OH * OW) return;
    int hs, he, ws, we;
    __global const float* xp = x + xo + window(gid, H, W, OH, OW, KH, KW, SH, SW, PH, PW, &hs, &he, &ws, &we);
    float s = 0.0f;
    for (int h = hs; h < he; h++)
        for (int w = ws; w < we; w++)
            s += xp[h * W + w];
    y[yo + gid] = s / (float)(KH * KW);
}

// dx = for each input element, the sum of dy / (KH*KW) over the windows that cover it.
// One work-item per input element.
__kernel void avgpool_backward(POOL_GEOMETRY,
                               __global const float* dy, const int dyo,
                               __global float* dx, const int dxo)
{
    POOL_CONSTANTS;
    const int gid = get_global_id(0);
    if (gid >= planes * H * W) return;
    const int at = gid % (H * W);
    const int h = at / W, w = at % W;
    const int plane = gid / (H * W);
    int oh0, oh1, ow0, ow1;
    covering(h, KH, SH, PH, OH, &oh0, &oh1);
    covering(w, KW, SW, PW, OW, &ow0, &ow1);
    __global const float* g = dy + dyo + plane * OH * OW;
    float s = 0.0f;
    for (int oh = oh0; oh < oh1; oh++)
        for (int ow = ow0; ow < ow1; ow++)
            s += g[oh * OW + ow];
    dx[dxo + gid] = s / (float)(KH * KW);
}
