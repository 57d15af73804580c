// Activations, their gradients, the fused bias/activation backward, row-wise softmax, sums (an
// activation fused, forward and backward) and strided row copies.
// ACT (common.h) selects the activation, ACT_SLOPE LeakyReLU's negative slope.
//
// The kernels over every element of tensors (the activations, their gradients and the sums) take
// ELEMENTS elements a work-item, get_global_size(0) apart, and load all of them before they store
// any: on GPUs (the host gives 4) their loads are then in flight together, where a work-item a value
// left each work-group's few loads waiting. Their output may be one of their inputs: a work-item
// writes only the elements it has read. ELEMENTS_LOAD(u, p, o) loads a work-item's element u of the
// tensor at p + o (its last element where u's lies past n, for the store to leave out) and
// ELEMENTS_STORE(u, p, o, v) stores v as element u, if it is one of the n.
#ifndef ELEMENTS
#define ELEMENTS 1
#endif
#define ELEMENT(u) ((int)get_global_id(0) + (u) * (int)get_global_size(0))
// With one element a work-item (CPUs) a work-item past n returns at once (ELEMENTS_BEGIN): PoCL ran
// the adds 4.6x slower (2M elements, 2-core EPYC) with the clamped load and the guarded store.
#if ELEMENTS == 1
#define ELEMENTS_BEGIN if (ELEMENT(0) >= n) return;
#define ELEMENTS_LOAD(u, p, o) (p)[(o) + ELEMENT(u)]
#define ELEMENTS_STORE(u, p, o, v) (p)[(o) + ELEMENT(u)] = (v)
#else
#define ELEMENTS_BEGIN
#define ELEMENTS_LOAD(u, p, o) (p)[(o) + min(ELEMENT(u), n - 1)]
#define ELEMENTS_STORE(u, p, o, v) if (ELEMENT(u) < n) (p)[(o) + ELEMENT(u)] = (v)
#endif

// y = act(x) over n elements.
__kernel void activation_forward(const int n, __global const float* x, const int xo,
                                 __global float* y, const int yo)
{
    ELEMENTS_BEGIN
    float vx[ELEMENTS];
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++) vx[u] = ELEMENTS_LOAD(u, x, xo);
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++) ELEMENTS_STORE(u, y, yo, act_forward(vx[u]));
}

// dx = dy * act'(x), act' written with v: the output y (from_output), else the input x.
inline void activation_backward_elements(const int n, __global const float* v, const int vo,
                                         __global const float* dy, const int dyo,
                                         __global float* dx, const int dxo, const bool from_output)
{
    ELEMENTS_BEGIN
    float vv[ELEMENTS], vdy[ELEMENTS];
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++) {
        vv[u] = ELEMENTS_LOAD(u, v, vo);
        vdy[u] = ELEMENTS_LOAD(u, dy, dyo);
    }
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++)
        ELEMENTS_STORE(u, dx, dxo, vdy[u] * (from_output ? act_grad_from_output(vv[u]) : act_grad_from_input(vv[u])));
}

// dx = dy * act'(x), with act' written in terms of the output y.
__kernel void activation_backward(const int n, __global const float* y, const int yo,
                                  __global const float* dy, const int dyo,
                                  __global float* dx, const int dxo)
{
    activation_backward_elements(n, y, yo, dy, dyo, dx, dxo, true);
}

// dx = dy * act'(x), for activations whose derivative needs the input x (SiLU).
__kernel void activation_backward_from_input(const int n, __global const float* x, const int xo,
                                             __global const float* dy, const int dyo,
                                             __global float* dx, const int dxo)
{
    activation_backward_elements(n, x, xo, dy, dyo, dx, dxo, false);
}

// For a dense layer whose output y = act(x W^T + b) has shape rows x cols: dpre = dy * act'(y) and
// db[c] = sum over rows of dpre. Work-item (j, s) of a (cols / COLUMNS, S) grid sums slice s of the
// rows of the COLUMNS neighbouring columns from j * COLUMNS, in order, and writes them to
// sums[s * cols + c]: db itself when S = 1, else partial sums that sum_slices (sum_slices.cl) adds
// in a fixed order; deterministic either way, and neighbouring work-items read neighbouring
// addresses. The slices give a GPU work where a few hundred columns alone would keep two of its
// 132 compute units busy. Without an activation dpre is dy itself and is not written.
#ifndef COLUMNS
#define COLUMNS 1  // 16 on CPUs: a loop over 16 neighbouring columns, which the compiler vectorises
#endif             // (PoCL does not vectorise across work-items that each loop over the rows)
__kernel void bias_act_backward(const int rows, const int cols,
                                __global const float* dy, const int dyo,
                                __global const float* y, const int yo,
                                __global float* dpre, const int dpo,
                                __global float* sums, const int so)
{
    const int c0 = get_global_id(0) * COLUMNS, width = min(COLUMNS, cols - c0);
    if (width <= 0) return;
    const int slice = get_global_id(1), share = (rows + get_global_size(1) - 1) / get_global_size(1);
    const int first = slice * share, end = min(rows, first + share);
    float s[COLUMNS];
    for (int j = 0; j < COLUMNS; j++) s[j] = 0.0f;
#if ACT == ACT_NONE
#define COLUMN_STEP(j) s[j] += dy[dyo + at + (j)]
#else
#define COLUMN_STEP(j) { \
        const float g = dy[dyo + at + (j)] * act_grad_from_output(y[yo + at + (j)]); \
        dpre[dpo + at + (j)] = g; \
        s[j] += g; \
    }
#endif
    if (width == COLUMNS) {  // a fixed trip count
        for (int r = first, at = first * cols + c0; r < end; r++, at += cols)
            for (int j = 0; j < COLUMNS; j++) COLUMN_STEP(j);
    } else {
        for (int r = first, at = first * cols + c0; r < end; r++, at += cols)
            for (int j = 0; j < width; j++) COLUMN_STEP(j);
    }
#ifdef HAS_BIAS
    for (int j = 0; j < width; j++) sums[so + slice * cols + c0 + j] = s[j];
#endif
}

// Row-wise softmax of a rows x cols matrix, one work-item per row.
__kernel void softmax_forward(const int rows, const int cols, __global const float* x, const int xo,
                              __global float* y, const int yo)
{
    const int r = get_global_id(0);
    if (r >= rows) return;
    __global const float* xr = x + xo + r * cols;
    __global float* yr = y + yo + r * cols;
    float mx = xr[0];
    for (int c = 1; c < cols; c++) mx = fmax(mx, xr[c]);
    float s = 0.0f;
    for (int c = 0; c < cols; c++) s += exp(xr[c] - mx);
    const float inv = 1.0f / s;
    for (int c = 0; c < cols; c++) yr[c] = exp(xr[c] - mx) * inv;
}

// dx = y * (dy - sum(dy * y)) row by row.
__kernel void softmax_backward(const int rows, const int cols, __global const float* y, const int yo,
                               __global const float* dy, const int dyo, __global float* dx, const int dxo)
{
    const int r = get_global_id(0);
    if (r >= rows) return;
    const int base = r * cols;
    float dot = 0.0f;
    for (int c = 0; c < cols; c++) dot += dy[dyo + base + c] * y[yo + base + c];
    for (int c = 0; c < cols; c++) dx[dxo + base + c] = y[yo + base + c] * (dy[dyo + base + c] - dot);
}

// out = act(a + b), element by element (out may be a or b): an Add, its activation fused (ACT).
__kernel void add_tensors(const int n, __global const float* a, const int ao, __global const float* b, const int bo,
                          __global float* out, const int outo)
{
    ELEMENTS_BEGIN
    float va[ELEMENTS], vb[ELEMENTS];
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++) {
        va[u] = ELEMENTS_LOAD(u, a, ao);
        vb[u] = ELEMENTS_LOAD(u, b, bo);
    }
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++) ELEMENTS_STORE(u, out, outo, act_forward(va[u] + vb[u]));
}

// out = (a + b) * act'(x), act' written with the activation's output y (out may be a or b): the
// last two gradients of a value read by several stages added, and taken back through the
// activation that made the value, in one pass.
__kernel void add_act_backward(const int n, __global const float* a, const int ao,
                               __global const float* b, const int bo, __global const float* y, const int yo,
                               __global float* out, const int outo)
{
    ELEMENTS_BEGIN
    float va[ELEMENTS], vb[ELEMENTS], vy[ELEMENTS];
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++) {
        va[u] = ELEMENTS_LOAD(u, a, ao);
        vb[u] = ELEMENTS_LOAD(u, b, bo);
        vy[u] = ELEMENTS_LOAD(u, y, yo);
    }
    #pragma unroll
    for (int u = 0; u < ELEMENTS; u++)
        ELEMENTS_STORE(u, out, outo, (va[u] + vb[u]) * act_grad_from_output(vy[u]));
}

// Copies a block of rows x cols floats between strided layouts: dst[r * dst_stride + c] =
// src[r * src_stride + c]. A work-item per element on a (cols, rows) grid, so no index division.
// Concatenation along channels copies each input's images into their channel range of the output
// (forward) and each range of the output's gradient back out (backward).
__kernel void copy_rows(const int rows, const int cols, const int src_stride, const int dst_stride,
                        __global const float* src, const int srco, __global float* dst, const int dsto)
{
    const int c = get_global_id(0);
    const int r = get_global_id(1);
    if (c >= cols || r >= rows) return;
    dst[dsto + r * dst_stride + c] = src[srco + r * src_stride + c];
}
