// The elements of an implicit convolution's operands, read from the NCHW tensors as the GEMM
// kernels load them (gemm_common.h says which operand each is).

#if defined(CONV_B) || defined(CONV_DX)
#define CONV_TAPS (CONV_KH * CONV_KW)
#ifndef CONV_G
#define CONV_G 1
#endif
#define CONV_CG (CONV_C / CONV_G)  // the input channels of a group (CONV_C counts all of them)
#endif

#ifdef CONV_B
inline float conv_column(__global const float* restrict x, const int x_off, const int row, const int col)
{
    const int c = row / CONV_TAPS, kh = row / CONV_KW % CONV_KH, kw = row % CONV_KW;
    const int image = col / (CONV_OH * CONV_OW), oh = col / CONV_OW % CONV_OH, ow = col % CONV_OW;
    const int ih = oh * CONV_SH - CONV_PH + kh * CONV_DH, iw = ow * CONV_SW - CONV_PW + kw * CONV_DW;
    return (ih >= 0 && ih < CONV_H && iw >= 0 && iw < CONV_W)
        ? x[x_off + ((image * CONV_C + c) * CONV_H + ih) * CONV_W + iw] : 0.0f;
}
#endif

#ifdef CONV_DX
inline float conv_output_grad(__global const float* restrict dy, const int dy_off, const int ld,
                              const int k, const int col)
{
    const int o = k / CONV_TAPS, kh = k / CONV_KW % CONV_KH, kw = k % CONV_KW;
    const int image = col / (CONV_H * CONV_W), ih = col / CONV_W % CONV_H, iw = col % CONV_W;
    const int t = ih + CONV_PH - kh * CONV_DH, u = iw + CONV_PW - kw * CONV_DW;
    const int oh = t / CONV_SH, ow = u / CONV_SW;
    return (t >= 0 && u >= 0 && oh * CONV_SH == t && ow * CONV_SW == u && oh < CONV_OH && ow < CONV_OW)
        ? dy[dy_off + image * ld + (o * CONV_OH + oh) * CONV_OW + ow] : 0.0f;  // NCHW, ld between images
}
#endif
