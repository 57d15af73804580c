// Losses fused with their output link (softmax / sigmoid / identity). One work-group handles the
// whole batch, so the batch loss is reduced without atomics and added to the running metrics in a
// fixed order: results are identical run to run.
//
// flags: LOSS_GRAD writes d(mean loss)/d(output) (rows from n_valid on get zero, so a padded last
// batch contributes nothing); LOSS_PROBS writes the link's output (predictions); LOSS_METRICS adds
// to metrics = {loss sum, its Kahan compensation, correct, rows}. LOSS_GRAD needs LOSS_METRICS' targets.

#ifndef LOSS_WG
#define LOSS_WG 256  // work-group size, a power of two
#endif

#define LOSS_GRAD 1
#define LOSS_PROBS 2
#define LOSS_METRICS 4

#define LOSS_ARGS const int rows, const int cols, const int n_valid, const int flags, const float scale, \
    __global const float* restrict z, const int zo, \
    __global float* restrict grad, const int go, \
    __global float* restrict probs, const int po, \
    __global float* restrict metrics, const int mo

// Sums the per-work-item loss and correct counts and adds them to metrics (work-item 0).
inline void add_to_metrics(float loss, float correct, const int n_valid, const int flags,
                           __global float* metrics, const int mo,
                           __local float* l_loss, __local float* l_correct)
{
    const int lid = get_local_id(0);
    l_loss[lid] = loss;
    l_correct[lid] = correct;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = LOSS_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) {
            l_loss[lid] += l_loss[lid + stride];
            l_correct[lid] += l_correct[lid + stride];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0 && (flags & LOSS_METRICS)) {
        const float y = l_loss[0] - metrics[mo + 1];  // Kahan summation over the epoch
        const float t = metrics[mo] + y;
        metrics[mo + 1] = (t - metrics[mo]) - y;
        metrics[mo] = t;
        metrics[mo + 2] += l_correct[0];
        metrics[mo + 3] += (float)n_valid;
    }
}

// Softmax cross-entropy on integer labels; z are logits, scale = 1 / n_valid. LABEL_SMOOTHING e
// spreads e of the target over all classes, as torch: q_c = (1 - e) [c == y] + e / cols.
#ifndef LABEL_SMOOTHING
#define LABEL_SMOOTHING 0.0f
#endif
__kernel __attribute__((reqd_work_group_size(LOSS_WG, 1, 1)))
void softmax_cross_entropy(LOSS_ARGS, __global const int* restrict labels, const int lo)
{
    __local float l_loss[LOSS_WG], l_correct[LOSS_WG];
    float loss = 0.0f, correct = 0.0f;
    for (int r = get_local_id(0); r < rows; r += LOSS_WG) {
        __global const float* zr = z + zo + r * cols;
        if (r >= n_valid) {
            if (flags & LOSS_GRAD)
                for (int c = 0; c < cols; c++) grad[go + r * cols + c] = 0.0f;
            continue;
        }
        float mx = zr[0];
        int best = 0;
        for (int c = 1; c < cols; c++)
            if (zr[c] > mx) { mx = zr[c]; best = c; }
        float s = 0.0f, zsum = 0.0f;
        for (int c = 0; c < cols; c++) {
            s += exp(zr[c] - mx);
            zsum += zr[c];
        }
        const float inv = 1.0f / s;
        if (flags & LOSS_PROBS)
            for (int c = 0; c < cols; c++) probs[po + r * cols + c] = exp(zr[c] - mx) * inv;
        if (flags & LOSS_METRICS) {
            const int y = labels[lo + r];
            loss += log(s) + mx - (1.0f - LABEL_SMOOTHING) * zr[y] - LABEL_SMOOTHING / cols * zsum;
            correct += (best == y) ? 1.0f : 0.0f;
            if (flags & LOSS_GRAD)
                for (int c = 0; c < cols; c++)
                    grad[go + r * cols + c] = (exp(zr[c] - mx) * inv - ((c == y ? 1.0f - LABEL_SMOOTHING : 0.0f)
                                                                      + LABEL_SMOOTHING / cols)) * scale;
        }
    }
    add_to_metrics(loss, correct, n_valid, flags, metrics, mo, l_loss, l_correct);
}

// Binary cross-entropy of sigmoid(z) against targets t in [0, 1], per element; a row's loss and
// accuracy are its mean over cols. scale = 1 / (n_valid * cols).
__kernel __attribute__((reqd_work_group_size(LOSS_WG, 1, 1)))
void binary_cross_entropy(LOSS_ARGS, __global const float* restrict t, const int to)
{
    __local float l_loss[LOSS_WG], l_correct[LOSS_WG];
    float loss = 0.0f, correct = 0.0f;
    for (int r = get_local_id(0); r < rows; r += LOSS_WG) {
        for (int c = 0; c < cols; c++) {
            const int i = r * cols + c;
            if (r >= n_valid) {
                if (flags & LOSS_GRAD) grad[go + i] = 0.0f;
                continue;
            }
            const float x = z[zo + i];
            if (flags & LOSS_PROBS) probs[po + i] = sigmoid(x);
            if (flags & LOSS_METRICS) {
                const float y = t[to + i];
                // log(1 + exp(-|x|)) form: finite for any logit
                loss += (fmax(x, 0.0f) - x * y + log1p(exp(-fabs(x)))) / cols;
                correct += ((x >= 0.0f) == (y >= 0.5f) ? 1.0f : 0.0f) / cols;
                if (flags & LOSS_GRAD) grad[go + i] = (sigmoid(x) - y) * scale;
            }
        }
    }
    add_to_metrics(loss, correct, n_valid, flags, metrics, mo, l_loss, l_correct);
}

// Mean squared error against float targets of the output's shape, or against integer labels
// one-hot encoded here (INT_LABELS). Accuracy compares the argmax of each row with the target's.
// scale = 1 / (n_valid * cols).
#ifdef INT_LABELS
#define TARGET_TYPE int
#define TARGET_AT(r, c) ((t[to + (r)] == (c)) ? 1.0f : 0.0f)
#else
#define TARGET_TYPE float
#define TARGET_AT(r, c) t[to + (r) * cols + (c)]
#endif
__kernel __attribute__((reqd_work_group_size(LOSS_WG, 1, 1)))
void mean_squared_error(LOSS_ARGS, __global const TARGET_TYPE* restrict t, const int to)
{
    __local float l_loss[LOSS_WG], l_correct[LOSS_WG];
    float loss = 0.0f, correct = 0.0f;
    for (int r = get_local_id(0); r < rows; r += LOSS_WG) {
        int best = 0, best_t = 0;
        float row_loss = 0.0f;
        for (int c = 0; c < cols; c++) {
            const int i = r * cols + c;
            if (r >= n_valid) {
                if (flags & LOSS_GRAD) grad[go + i] = 0.0f;
                continue;
            }
            const float x = z[zo + i];
            if (flags & LOSS_PROBS) probs[po + i] = x;
            if (flags & LOSS_METRICS) {
                const float d = x - TARGET_AT(r, c);
                row_loss += d * d;
                if (x > z[zo + r * cols + best]) best = c;
                if (TARGET_AT(r, c) > TARGET_AT(r, best_t)) best_t = c;
                if (flags & LOSS_GRAD) grad[go + i] = 2.0f * d * scale;
            }
        }
        if (r < n_valid) {
            loss += row_loss / cols;
            correct += (best == best_t) ? 1.0f : 0.0f;
        }
    }
    add_to_metrics(loss, correct, n_valid, flags, metrics, mo, l_loss, l_correct);
}
