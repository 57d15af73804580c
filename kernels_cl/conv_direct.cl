// A direct 3x3 stride-1 convolution for layers of few channels (the GPU family): a work-group
// computes DC_ROWS x DC_TW outputs of one image for all DC_O output channels, a work-item two
// neighbouring pixels of a row for every output channel. The input channels are taken DC_CC at a
// time: their tile of the input, halo included, and their weights are staged in local memory, and
// every work-item accumulates from there. An implicit GEMM of 16 output channels gathers its
// operand tile by tile for rows of 16 (resnet20's first stage); here a staged input value serves
// 9 taps x DC_O outputs and a staged weight DC_ROWS x DC_TW pixels.
//
// With DC_FLIP the weight is read as the input gradient's: w'[o][c][kh][kw] = w[c][o][2-kh][2-kw]
// (in and out swapped, the taps flipped), so that the input gradient of a convolution is this
// kernel over dY with the geometry `ops.conv.transposed` gives (padding 2 - the forward's).
//
// x (images, DC_C, DC_H, DC_W) and y (images, DC_O, DC_OH, DC_OW) NCHW; w (DC_O, DC_C, 3, 3) as
// stored, or (DC_C, DC_O, 3, 3) with DC_FLIP; bias[o] with HAS_BIAS, then ACT (common.h).
// Work-groups: (DC_TW / 2, DC_ROWS); grid: (columns of tiles, rows of tiles, images).

#define DC_TILE_H (DC_ROWS + 2)
#define DC_TILE_W (DC_TW + 2)

__kernel void conv3x3_direct(__global const float* restrict x, const int xo,
                             __global const float* restrict w, const int wo,
                             __global const float* restrict bias, const int bias_off,
                             __global float* restrict y, const int yo)
{
    __local float tile[DC_CC][DC_TILE_H][DC_TILE_W];
    __local float weights[DC_CC * 9][DC_O];  // a (channel, tap)'s weights of every output side by side
    const int image = get_group_id(2), oh0 = get_group_id(1) * DC_ROWS, ow0 = get_group_id(0) * DC_TW;
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int lid = ly * (DC_TW / 2) + lx, threads = (DC_TW / 2) * DC_ROWS;
    float acc[DC_O][2];
    #pragma unroll
    for (int o = 0; o < DC_O; o++)
        acc[o][0] = acc[o][1] = 0.0f;
    for (int c0 = 0; c0 < DC_C; c0 += DC_CC) {
        barrier(CLK_LOCAL_MEM_FENCE);  // the last chunk's values are read by every work-item
        for (int i = lid; i < DC_CC * DC_TILE_H * DC_TILE_W; i += threads) {
            const int cc = i / (DC_TILE_H * DC_TILE_W), r = i / DC_TILE_W % DC_TILE_H, col = i % DC_TILE_W;
            const int c = c0 + cc, ih = oh0 + r - DC_PH, iw = ow0 + col - DC_PW;
            tile[cc][r][col] = c < DC_C && ih >= 0 && ih < DC_H && iw >= 0 && iw < DC_W
                ? x[xo + ((image * DC_C + c) * DC_H + ih) * DC_W + iw] : 0.0f;
        }
        for (int i = lid; i < DC_CC * 9 * DC_O; i += threads) {
            const int o = i % DC_O, ct = i / DC_O, c = c0 + ct / 9, tap = ct % 9;
#ifdef DC_FLIP
            weights[ct][o] = c < DC_C ? w[wo + (c * DC_O + o) * 9 + 8 - tap] : 0.0f;
#else
            weights[ct][o] = c < DC_C ? w[wo + (o * DC_C + c) * 9 + tap] : 0.0f;
#endif
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        #pragma unroll 2
        for (int cc = 0; cc < DC_CC; cc++)
            #pragma unroll
            for (int kh = 0; kh < 3; kh++) {
                __local const float* row = tile[cc][ly + kh] + 2 * lx;
                const float in[4] = {row[0], row[1], row[2], row[3]};  // the pixels' 3 taps each
                #pragma unroll
                for (int kw = 0; kw < 3; kw++)
                    #pragma unroll
                    for (int o = 0; o < DC_O; o++) {
                        const float wv = weights[cc * 9 + kh * 3 + kw][o];
                        acc[o][0] = fma(wv, in[kw], acc[o][0]);
                        acc[o][1] = fma(wv, in[kw + 1], acc[o][1]);
                    }
            }
    }
    const int oh = oh0 + ly, ow = ow0 + 2 * lx;
    if (oh >= DC_OH)
        return;
    #pragma unroll
    for (int o = 0; o < DC_O; o++) {
#ifdef HAS_BIAS
        const float b = bias[bias_off + o];
#else
        const float b = 0.0f;
#endif
        __global float* out = y + yo + ((image * DC_O + o) * DC_OH + oh) * DC_OW + ow;
        if (ow < DC_OW) out[0] = act_forward(acc[o][0] + b);
        if (ow + 1 < DC_OW) out[1] = act_forward(acc[o][1] + b);
    }
}
