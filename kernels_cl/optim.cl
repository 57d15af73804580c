// Optimizer updates, each one launch over the flat parameter buffer (all layers at once).
// Semantics follow torch.optim: weight decay is added to the gradient (L2), except in AdamW.

// SGD with momentum (buffer v; v starts at zero, so its first value is the gradient) and Nesterov.
__kernel void sgd_step(const int n, __global float* restrict p, const int po,
                       __global const float* restrict g, const int go,
                       __global float* restrict v, const int vo, const float lr, const float momentum,
                       const float weight_decay, const int nesterov)
{
    const int i = get_global_id(0);
    if (i >= n) return;
    float d = g[go + i] + weight_decay * p[po + i];
    if (momentum != 0.0f) {
        const float b = momentum * v[vo + i] + d;
        v[vo + i] = b;
        d = nesterov ? d + momentum * b : b;
    }
    p[po + i] -= lr * d;
}

// Adam (decoupled == 0) and AdamW (decoupled == 1). bc1 = 1 - beta1^t, bc2 = 1 - beta2^t.
__kernel void adam_step(const int n, __global float* restrict p, const int po,
                        __global const float* restrict g, const int go,
                        __global float* restrict m, const int mo, __global float* restrict v, const int vo,
                        const float lr, const float beta1, const float beta2, const float eps,
                        const float weight_decay, const int decoupled, const float bc1, const float bc2)
{
    const int i = get_global_id(0);
    if (i >= n) return;
    float gi = g[go + i];
    float pi = p[po + i];
    if (decoupled) pi *= 1.0f - lr * weight_decay;
    else gi += weight_decay * pi;
    const float mi = beta1 * m[mo + i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[vo + i] + (1.0f - beta2) * gi * gi;
    m[mo + i] = mi;
    v[vo + i] = vi;
    p[po + i] = pi - lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
}
