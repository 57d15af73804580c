// Convolution as im2col + GEMM (gemm.cl). Geometry arguments, shared by im2col and col2im:
// input (C, H, W) per image, kernel KH x KW, output OH x OW, stride sh/sw, top/left padding ph/pw,
// dilation dh/dw. The column matrix has a row per (c, kh, kw) and a column per (image, oh, ow), with
// leading dimension ldcol; `images` consecutive images starting at the tensors' offsets.

#define GEOMETRY const int C, const int H, const int W, const int KH, const int KW, \
    const int OH, const int OW, const int sh, const int sw, const int ph, const int pw, \
    const int dh, const int dw

// One work-item per (column-matrix row k, image, output row oh) copies that output row's OW
// pixels: index arithmetic once per row, contiguous writes.
__kernel void im2col(const int images, GEOMETRY, const int ldcol,
                     __global const float* restrict x, const int xo,
                     __global float* restrict col, const int co)
{
    const int r = get_global_id(0), k = get_global_id(1);  // r = image * OH + oh
    if (r >= images * OH || k >= C * KH * KW) return;
    const int g = r / OH, oh = r % OH;
    const int kw = k % KW, kh = (k / KW) % KH, c = k / (KH * KW);
    const int ih = oh * sh - ph + kh * dh;
    __global float* out = col + co + k * ldcol + r * OW;  // column (image, oh, ow) = r * OW + ow
    if (ih < 0 || ih >= H) {
        for (int ow = 0; ow < OW; ow++) out[ow] = 0.0f;
        return;
    }
    __global const float* in = x + xo + ((g * C + c) * H + ih) * W;
    for (int ow = 0; ow < OW; ow++) {
        const int iw = ow * sw - pw + kw * dw;
        out[ow] = (iw >= 0 && iw < W) ? in[iw] : 0.0f;
    }
}

// The gradient of im2col as a gather: each input element sums the column entries it was copied to,
// in a fixed order (no atomics, the same result every run). One work-item per input row (image,
// channel, ih) walks its W pixels.
__kernel void col2im(const int images, GEOMETRY, const int ldcol,
                     __global const float* restrict col, const int co,
                     __global float* restrict dx, const int xo)
{
    const int r = get_global_id(0);  // r = (image * C + c) * H + ih
    if (r >= images * C * H) return;
    const int ih = r % H, c = (r / H) % C, g = r / (C * H);
    for (int iw = 0; iw < W; iw++) {
        float s = 0.0f;
        for (int kh = 0; kh < KH; kh++) {
            const int t = ih + ph - kh * dh, oh = t / sh;
            if (t < 0 || oh * sh != t || oh >= OH) continue;
            for (int kw = 0; kw < KW; kw++) {
                const int u = iw + pw - kw * dw, ow = u / sw;
                if (u < 0 || ow * sw != u || ow >= OW) continue;
                s += col[co + ((c * KH + kh) * KW + kw) * ldcol + (g * OH + oh) * OW + ow];
            }
        }
        dx[xo + r * W + iw] = s;
    }
}

#ifndef CONV_WG
#define CONV_WG 64  // work-group size of conv_bias_act_backward, a power of two
#endif

// For a convolution output y (B, C, P) = act(conv + bias): dpre = dy * act'(y) transposed to
// (C, B * P), the layout the weight- and input-gradient GEMMs read, and db[c] = sum of dpre[c, :].
// One work-group per channel, reduced in a fixed order.
__kernel __attribute__((reqd_work_group_size(CONV_WG, 1, 1)))
void conv_bias_act_backward(const int B, const int C, const int P,
                            __global const float* restrict dy, const int dyo,
                            __global const float* restrict y, const int yo,
                            __global float* restrict dpre, const int dpo,
                            __global float* restrict db, const int dbo)
{
    __local float part[CONV_WG];
    const int c = get_group_id(0), lid = get_local_id(0);
    float s = 0.0f;
    for (int i = lid; i < B * P; i += CONV_WG) {
        const int src = ((i / P) * C + c) * P + i % P;
        const float g = dy[dyo + src] * act_grad_from_output(y[yo + src]);
        dpre[dpo + c * B * P + i] = g;
        s += g;
    }
    part[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = CONV_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) part[lid] += part[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#ifdef HAS_BIAS
    if (lid == 0) db[dbo + c] = part[0];
#endif
}
