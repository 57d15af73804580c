// Consecutive Dense layers in few launches, for the CPU family, where a launch costs tens of
// microseconds (PoCL on a 16-core Xeon: 36-41 us enqueued back to back), as much as products this
// small take: the forward pass of every layer in one launch (dense_chain), the backward pass in two
// (dense_chain_back, the gradients by rows; dense_chain_weights, the parameters' gradients). Every
// value is stored whole, as the layers' own launches would store it.
//
// CHAIN_LAYERS layers (2 to 4), layer i reading layer i - 1's output (the first x, M x CHAIN_K0):
// weight w_i (CHAIN_N{i} x CHAIN_K{i}, torch.nn.Linear's), a bias where CHAIN_BIAS{i}, activation
// CHAIN_ACT{i} with CHAIN_SLOPE{i} (common.h's codes), output y_i (M x CHAIN_N{i}); all row-major.
#include "register_block.h"

#define CHAIN_BLOCK 4  // rows and outputs of a block of a dense_chain layer: 16 float16 partial sums

// The 16 vectors' totals, lane i vector i's: each of four rounds adds the even lanes of each pair of
// vectors to their odd lanes (the pair's side by side), halving the vectors and each one's lanes.
inline float16 lane_totals(float16* v)
{
    _Pragma("unroll") for (int count = PANEL / 2; count >= 1; count /= 2)
        _Pragma("unroll") for (int i = 0; i < count; i++)
            v[i] = (float16)(v[2 * i].even, v[2 * i + 1].even) + (float16)(v[2 * i].odd, v[2 * i + 1].odd);
    return v[0];
}

#define CHAIN_PRODUCTS(acc, av, wv) \
    _Pragma("unroll") for (int r = 0; r < CHAIN_BLOCK; r++) \
        _Pragma("unroll") for (int o = 0; o < CHAIN_BLOCK; o++) \
            acc[r * CHAIN_BLOCK + o] = av[r] * wv[o] + acc[r * CHAIN_BLOCK + o];

// One Dense layer of dense_chain over rows row0 .. row1 - 1: C = act(A W^T + bias), A (M x K), the
// weight W (N x K) and C (M x N) row-major. Blocks of 4 rows by 4 outputs, each (row, output) pair's
// dot product summed in the 16 lanes of a float16 over K (rows of A and W read as they lie: no copy
// of W, which every work-item reads whole), the 16 pairs' lanes added at the end (lane_totals).
inline void chain_layer(const int row0, const int row1, __global const float* restrict A, const int K,
                        __global const float* restrict W, const int N, __global const float* restrict bias,
                        const int has_bias, const int act, const float slope, __global float* restrict C)
{
    for (int n0 = 0; n0 < N; n0 += CHAIN_BLOCK)  // a block of W's rows stays in cache over the rows
        for (int m0 = row0; m0 < row1; m0 += CHAIN_BLOCK) {
            __global const float* a[CHAIN_BLOCK];
            __global const float* w[CHAIN_BLOCK];
            _Pragma("unroll") for (int i = 0; i < CHAIN_BLOCK; i++) {
                a[i] = A + min(m0 + i, row1 - 1) * K;  // past the last row or output: the last one's,
                w[i] = W + min(n0 + i, N - 1) * K;     // not stored
            }
            float16 acc[CHAIN_BLOCK * CHAIN_BLOCK];  // acc[r * 4 + o]: row m0 + r, output n0 + o
            _Pragma("unroll") for (int i = 0; i < CHAIN_BLOCK * CHAIN_BLOCK; i++) acc[i] = (float16)(0.0f);
            const int whole = K / PANEL * PANEL;
            for (int k = 0; k < whole; k += PANEL) {
                float16 av[CHAIN_BLOCK], wv[CHAIN_BLOCK];
                _Pragma("unroll") for (int i = 0; i < CHAIN_BLOCK; i++) {
                    av[i] = load16(a[i] + k);
                    wv[i] = load16(w[i] + k);
                }
                CHAIN_PRODUCTS(acc, av, wv)
            }
            if (whole < K) {  // K's last values
                float16 av[CHAIN_BLOCK], wv[CHAIN_BLOCK];
                _Pragma("unroll") for (int i = 0; i < CHAIN_BLOCK; i++) {
                    av[i] = load_part16(a[i] + whole, K - whole);
                    wv[i] = load_part16(w[i] + whole, K - whole);
                }
                CHAIN_PRODUCTS(acc, av, wv)
            }
            __attribute__((aligned(64))) float out[PANEL];
            *(float16*)out = lane_totals(acc);
            for (int r = 0; r < CHAIN_BLOCK && m0 + r < row1; r++)
                for (int o = 0; o < CHAIN_BLOCK && n0 + o < N; o++)
                    C[(m0 + r) * N + n0 + o] = act_apply(out[r * CHAIN_BLOCK + o] + (has_bias ? bias[n0 + o] : 0.0f),
                                                         act, slope);
        }
}


// out[r][c0 + j] = the sum over t < T, in order, of a[r][t * step] * b[t * ldb + c0 + j]: a CPU_ROWS x 16
// block, a's CPU_ROWS runs broadcast, 16 of each of b's rows as they lie (past column C: zeros), rows r
// < rows and columns c0 + j < C stored (out's rows C apart).
inline void block_product(__global const float** a, const int step, const int T, __global const float* b,
                          const int ldb, const int c0, const int C, const int rows, __global float* out)
{
    float16 acc[CPU_ROWS];
#define A_RUN(r, t) a[r][(t) * step]
#define B_RUN(t) load16(b + (t) * ldb + c0)
#define B_PART(t) load_part16(b + (t) * ldb + c0, C - c0)
    if (c0 + PANEL <= C) {
        MULTIPLY(acc, A_RUN, B_RUN, 0, T)
    } else {
        MULTIPLY(acc, A_RUN, B_PART, 0, T)
    }
#undef A_RUN
#undef B_RUN
#undef B_PART
    for (int r = 0; r < rows; r++) {
        __attribute__((aligned(64))) float sums[PANEL];
        *(float16*)sums = acc[r];
        for (int j = 0; j < PANEL && c0 + j < C; j++) out[r * C + c0 + j] = sums[j];
    }
}

// The input gradient of a layer by rows (dense_chain_back): g (M x K) = d (M x N) w (N x K), rows of d
// broadcast (block_product).
inline void input_grad(const int row0, const int row1, __global const float* d, __global const float* w,
                       const int N, const int K, __global float* g)
{
    for (int k0 = 0; k0 < K; k0 += PANEL)
        for (int m0 = row0; m0 < row1; m0 += CPU_ROWS) {
            __global const float* rows[CPU_ROWS];
            _Pragma("unroll") for (int r = 0; r < CPU_ROWS; r++)
                rows[r] = d + min(m0 + r, row1 - 1) * N;  // past row1: the last row, not stored
            block_product(rows, 1, N, w, K, k0, K, min(CPU_ROWS, row1 - m0), g + m0 * K);
        }
}

// Block `block` of a layer's parameter gradients (dense_chain_weights): dw (N x K) = d^T x, in
// CPU_ROWS x 16 blocks (block_product: columns of d broadcast), then (with a bias) db = d's column
// sums, 16 a block; each summed over the M rows in order. -1 once done, else the blocks left past
// this layer's.
inline int param_grads(int block, const int M, __global const float* d, __global const float* x, const int N,
                       const int K, const int has_bias, __global float* dw, __global float* db)
{
    const int panels = (K + PANEL - 1) / PANEL, weight_blocks = (N + CPU_ROWS - 1) / CPU_ROWS * panels;
    if (block < weight_blocks) {
        const int n0 = block / panels * CPU_ROWS, k0 = block % panels * PANEL;
        __global const float* cols[CPU_ROWS];  // d's column n0 + r (past N: the last, not stored)
        _Pragma("unroll") for (int r = 0; r < CPU_ROWS; r++) cols[r] = d + min(n0 + r, N - 1);
        block_product(cols, N, M, x, K, k0, K, min(CPU_ROWS, N - n0), dw + n0 * K);
        return -1;
    }
    block -= weight_blocks;
    const int bias_blocks = has_bias ? (N + PANEL - 1) / PANEL : 0;
    if (block < bias_blocks) {
        const int n0 = block * PANEL;
        float16 sum = (float16)(0.0f);
        for (int m = 0; m < M; m++) sum += load_part16(d + m * N + n0, N - n0);
        __attribute__((aligned(64))) float out[PANEL];
        *(float16*)out = sum;
        for (int j = 0; j < PANEL && n0 + j < N; j++) db[n0 + j] = out[j];
        return -1;
    }
    return block - bias_blocks;
}

// The kernels' steps are written out layer by layer (CHAIN_EACH, CHAIN_EACH_BACK), so that each
// step's sizes and activation are compile-time constants.
#if CHAIN_LAYERS == 2
#define CHAIN_EACH(F) F(0) F(1)
#define CHAIN_EACH_BACK(F) F(1) F(0)
#elif CHAIN_LAYERS == 3
#define CHAIN_EACH(F) F(0) F(1) F(2)
#define CHAIN_EACH_BACK(F) F(2) F(1) F(0)
#elif CHAIN_LAYERS == 4
#define CHAIN_EACH(F) F(0) F(1) F(2) F(3)
#define CHAIN_EACH_BACK(F) F(3) F(2) F(1) F(0)
#else
#error "a chain has 2 to 4 layers"
#endif
#define CHAIN_ARG(name, i) , __global float* name##i, const int name##i##_off
#define AT(name, i) (name##i + name##i##_off)
#define CHAIN_Y(i) , AT(y, i)
#define CHAIN_G(i) AT(g, i),

// Work-item i of a launch by rows takes rows row0 = i * per_item .. row1 - 1 through every layer:
// the rows of each value it makes are its own, written before it reads them, so it needs no other
// work-item's. Work-groups of one work-item. (No argument is restrict-qualified: the backward
// kernels' may alias.)
#define CHAIN_ROW_RANGE \
    const int row0 = get_global_id(0) * per_item, row1 = min(M, row0 + per_item); \
    if (row0 >= M) return;

#define FORWARD_ARGS(i) CHAIN_ARG(w, i) CHAIN_ARG(b, i) CHAIN_ARG(y, i)
#define FORWARD(i) chain_layer(row0, row1, inputs[i], CHAIN_K##i, AT(w, i), CHAIN_N##i, AT(b, i), CHAIN_BIAS##i, \
                               CHAIN_ACT##i, CHAIN_SLOPE##i, AT(y, i));
#ifdef CHAIN_GATHER  // the chain takes the input stage's gather into its launch
#include "gather.h"
#define CHAIN_GATHER_ARGS , GATHER_ARGS TARGET_ARGS
#else
#define CHAIN_GATHER_ARGS
#endif
// The forward pass: y_i = act_i(y_{i-1} w_i^T + b_i), by rows (chain_layer). With CHAIN_GATHER the
// work-item first gathers its rows of x (and of the targets) as gather_batch would (gather.h): the
// plan's first launch is then this one, a launch fewer a step.
__kernel void dense_chain(const int M, const int per_item, __global float* x, const int x_off
                          CHAIN_EACH(FORWARD_ARGS) CHAIN_GATHER_ARGS)
{
    CHAIN_ROW_RANGE
#ifdef CHAIN_GATHER
    for (int b = row0; b < row1; b++)
        gather_image(b, n_valid, start, C, H, W, scale, crop, flip, seed_lo, seed_hi, step, first_row, order + oo,
                     src + so, norm + no, x + x_off);
#if TARGETS
    for (int b = row0; b < row1; b++)
        for (int j = 0; j < width; j++) GATHER_TARGET(b, j)
#endif
#endif
    __global const float* inputs[] = {x + x_off CHAIN_EACH(CHAIN_Y)};  // layer i's
    CHAIN_EACH(FORWARD)
}

#define BACK_ARGS(i) CHAIN_ARG(w, i) CHAIN_ARG(y, i) CHAIN_ARG(d, i) CHAIN_ARG(g, i)
#define BACK(i) \
    if (CHAIN_ACT##i != ACT_NONE) \
        for (int e = row0 * CHAIN_N##i; e < row1 * CHAIN_N##i; e++) \
            AT(d, i)[e] = output_grads[i + 1][e] * act_grad_apply(AT(y, i)[e], CHAIN_ACT##i, CHAIN_SLOPE##i); \
    if (i > 0 || need_dx) input_grad(row0, row1, AT(d, i), AT(w, i), CHAIN_N##i, CHAIN_K##i, AT(g, i));
// The gradients by rows, from the last layer's output gradient dy back: layer i's pre-activation
// gradient d_i = (gradient of y_i) * act_i'(y_i) (the host passes that gradient itself as d_i where
// the layer has no activation: nothing is written), and the gradient of its input g_i = d_i w_i
// (input_grad), which is layer i - 1's output gradient (g_0, the chain's input gradient, only where
// need_dx).
__kernel void dense_chain_back(const int M, const int per_item, const int need_dx, __global const float* dy,
                               const int dy_off CHAIN_EACH(BACK_ARGS))
{
    CHAIN_ROW_RANGE
    __global const float* output_grads[] = {CHAIN_EACH(CHAIN_G) dy + dy_off};  // y_i's at i + 1
    CHAIN_EACH_BACK(BACK)
}

#define WEIGHT_ARGS(i) CHAIN_ARG(y, i) CHAIN_ARG(d, i) CHAIN_ARG(dw, i) CHAIN_ARG(db, i)
#define WEIGHTS(i) \
    if (block >= 0) \
        block = param_grads(block, M, AT(d, i), inputs[i], CHAIN_N##i, CHAIN_K##i, CHAIN_BIAS##i, AT(dw, i), AT(db, i));
// The parameters' gradients from dense_chain_back's d_i: work-items over every layer's blocks, one
// layer after another (param_grads).
__kernel void dense_chain_weights(const int M, __global const float* x, const int x_off CHAIN_EACH(WEIGHT_ARGS))
{
    __global const float* inputs[] = {x + x_off CHAIN_EACH(CHAIN_Y)};  // layer i's
    int block = get_global_id(0);
    CHAIN_EACH(WEIGHTS)
}
