// Adaptive average pooling over NCHW images, forward and backward, as torch.nn.AdaptiveAvgPool2d.
//
// Every launch sees `planes` = batch x channels independent H x W input planes and their OH x OW
// output planes. Output row o averages input rows [floor(o*H/OH), ceil((o+1)*H/OH)) (likewise for
// columns): bins may overlap, and with OH > H rows repeat (a 1x1 image becomes OH x OW copies).
// The divisor is each bin's own size.
//
// The same rule with the roles of H and OH swapped gives the output rows whose bins hold input row
// i: [floor(i*OH/H), ceil((i+1)*OH/H)). The backward pass is a gather over them, one work-item per
// input element, in a fixed order: deterministic, no atomics.
//
// The sizes come as compile-time constants (POOL_H, POOL_W, POOL_OH, POOL_OW from the launcher), so
// that the divisions become multiplications.
#define POOL_GEOMETRY const int planes
#define POOL_CONSTANTS const int H = POOL_H, W = POOL_W, OH = POOL_OH, OW = POOL_OW

inline int bin_start(const int o, const int size, const int out) { return o * size / out; }
inline int bin_end(const int o, const int size, const int out) { return ((o + 1) * size + out - 1) / out; }

// y = the mean of each bin. One work-item per output element.
__kernel void adaptive_avgpool_forward(POOL_GEOMETRY,
                                       __global const float* x, const int xo,
                                       __global float* y, const int yo)
{
    POOL_CONSTANTS;
    const int gid = get_global_id(0);
    if (gid >= planes * OH * OW) return;
    const int ow = gid % OW, oh = gid / OW % OH;
    const int hs = bin_start(oh, H, OH), he = bin_end(oh, H, OH);
    const int ws = bin_start(ow, W, OW), we = bin_end(ow, W, OW);
    __global const float* xp = x + xo + gid / (OH * OW) * H * W;
    float s = 0.0f;
    for (int h = hs; h < he; h++)
        for (int w = ws; w < we; w++)
            s += xp[h * W + w];
    y[yo + gid] = s / (float)((he - hs) * (we - ws));
}

// dx = for each input element, the sum of dy / (bin size) over the bins that hold it.
// One work-item per input element.
__kernel void adaptive_avgpool_backward(POOL_GEOMETRY,
                                        __global const float* dy, const int dyo,
                                        __global float* dx, const int dxo)
{
    POOL_CONSTANTS;
    const int gid = get_global_id(0);
    if (gid >= planes * H * W) return;
    const int w = gid % W, h = gid / W % H;
    __global const float* g = dy + dyo + gid / (H * W) * OH * OW;
    float s = 0.0f;
    for (int oh = bin_start(h, OH, H); oh < bin_end(h, OH, H); oh++) {
        const int rows = bin_end(oh, H, OH) - bin_start(oh, H, OH);
        for (int ow = bin_start(w, OW, W); ow < bin_end(w, OW, W); ow++)
            s += g[oh * OW + ow] / (float)(rows * (bin_end(ow, W, OW) - bin_start(ow, W, OW)));
    }
    dx[dxo + gid] = s;
}
