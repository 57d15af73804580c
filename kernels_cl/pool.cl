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

// y = max over each window; if save_argmax, argmax = the flat index h*W+w of the chosen input
// element within its plane (the first maximum in row-major window order; a NaN wins, as PyTorch).
// One work-item per output element, or with POOL_ROWS (CPUs) per output row, read in order.
__kernel void maxpool_forward(POOL_GEOMETRY, const int save_argmax,
                              __global const float* x, const int xo,
                              __global float* y, const int yo,
                              __global int* argmax, const int ao)
{
    POOL_CONSTANTS;
#ifdef POOL_ROWS
    const int first = get_global_id(0) * OW, count = OW;
#else
    const int first = get_global_id(0), count = 1;
#endif
    if (first >= planes * OH * OW) return;
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
// cover the image once.
__kernel void maxpool_backward(POOL_GEOMETRY,
                               __global const int* argmax, const int ao,
                               __global const float* dy, const int dyo,
                               __global float* dx, const int dxo)
{
    POOL_CONSTANTS;
#ifdef POOL_CELLS
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
