"""A float64 numpy twin of clnet's networks and losses, for checking the device's results."""

import numpy as np

from clnet import layers as L


def _act(kind, x):
    return {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
            "tanh": np.tanh, "softmax": softmax}[kind](x)


def softmax(z):
    """Row-wise softmax of (N, classes)."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kind(layer):
    return "softmax" if isinstance(layer, L.Softmax) else layer.kind


def conv2d(x, weight, bias, layer):
    """float64 NCHW convolution with PyTorch's semantics (padding="same" pads bottom/right more)."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    if layer.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
    else:
        pads = ((layer.padding[0],) * 2, (layer.padding[1],) * 2)
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((len(x), weight.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            y += np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j])
    return y if bias is None else y + bias[None, :, None, None]


def pair(value):
    """(h, w) from an int or a pair."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def windows(h, w, kernel, stride, padding):
    """Index of every window element in a plane flattened to h*w values plus one padding value at
    index h*w: shape (OH, OW, KH*KW), window elements in row-major order."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = (np.arange(oh) * sh - ph)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = (np.arange(ow) * sw - pw)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return np.where(inside, rows * w + cols, h * w).reshape(oh, ow, kh * kw)


def window_values(x, index, pad_value):
    """The values of x (N, C, H, W) at `index` (from `windows`), with pad_value on the padding:
    shape (N, C, OH, OW, KH*KW)."""
    n, c, h, w = x.shape
    planes = np.concatenate([x.reshape(n, c, h * w), np.full((n, c, 1), pad_value)], axis=2)
    return planes[:, :, index]


def maxpool2d(x, kernel, stride, padding):
    """(y, argmax) as torch.nn.functional.max_pool2d(..., return_indices=True): -inf padding, the
    first maximum of a window in row-major order; argmax is the flat index h*W+w in the plane."""
    x = np.asarray(x, np.float64)
    index = windows(*x.shape[2:], kernel, stride, padding)
    values = window_values(x, index, -np.inf)
    choice = np.argmax(values, axis=-1)[..., None]
    y = np.take_along_axis(values, choice, -1)[..., 0]
    argmax = np.take_along_axis(np.broadcast_to(index, values.shape), choice, -1)[..., 0]
    return y, argmax


def avgpool2d(x, kernel, stride, padding):
    """torch.nn.functional.avg_pool2d with count_include_pad=True: zero padding, divisor KH*KW."""
    x = np.asarray(x, np.float64)
    index = windows(*x.shape[2:], kernel, stride, padding)
    return window_values(x, index, 0.0).mean(axis=-1)


def batchnorm_train(x, n_valid, weight, bias, eps):
    """Training-mode batch norm of the first n_valid rows of x (N, C, ...): (y, mean, biased var,
    values per channel). weight and bias are None without affine."""
    x = np.asarray(x[:n_valid], np.float64)
    xr = x.reshape(n_valid, x.shape[1], -1)
    mean, var = xr.mean(axis=(0, 2)), xr.var(axis=(0, 2))
    y = (xr - mean[:, None]) / np.sqrt(var[:, None] + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)[:, None] + np.asarray(bias, np.float64)[:, None]
    return y.reshape(x.shape), mean, var, xr.shape[0] * xr.shape[2]


def batchnorm_eval(x, weight, bias, running_mean, running_var, eps):
    """Evaluation-mode batch norm of x (N, C, ...) with the running statistics."""
    x = np.asarray(x, np.float64)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)

    def per_channel(v):
        return np.asarray(v, np.float64).reshape(shape)

    y = (x - per_channel(running_mean)) / np.sqrt(per_channel(running_var) + eps)
    if weight is not None:
        y = y * per_channel(weight) + per_channel(bias)
    return y


def forward(layers, state, x, training=False, dropout_keep=None, stats=None):
    """Output of the network on x (float64), as torch.nn.Sequential computes it.

    Evaluation (the default): BatchNorm uses the running statistics in `state`, Dropout is the
    identity. Training: BatchNorm uses the batch's statistics, recorded in `stats` when it is given
    ({layer index: (mean, biased var, values per channel)}), and Dropout keeps the elements where
    dropout_keep(layer index, layer, shape) is true, scaled by 1 / (1 - p). A test-only layer may
    bring its own float64 forward as a method `reference_forward(a)`."""
    a = np.asarray(x, np.float64)
    for i, layer in enumerate(layers):
        if hasattr(layer, "reference_forward"):
            a = layer.reference_forward(a)
        elif isinstance(layer, L.Flatten):
            a = a.reshape(len(a), -1)
        elif isinstance(layer, L.Conv2D):
            a = conv2d(a, state[f"{i}.weight"].astype(np.float64),
                       state[f"{i}.bias"].astype(np.float64) if layer.bias else None, layer)
        elif isinstance(layer, L.Dense):
            a = a @ state[f"{i}.weight"].astype(np.float64).T
            if layer.bias:
                a = a + state[f"{i}.bias"]
        elif isinstance(layer, L.MaxPool2D):
            a = maxpool2d(a, layer.kernel_size, layer.stride, layer.padding)[0]
        elif isinstance(layer, L.AvgPool2D):
            a = avgpool2d(a, layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, L.GlobalAvgPool2D):
            a = a.mean(axis=(2, 3), keepdims=True)
        elif isinstance(layer, (L.BatchNorm1d, L.BatchNorm2d)):
            w, b = (state[f"{i}.weight"], state[f"{i}.bias"]) if layer.affine else (None, None)
            if training:
                a, mean, var, m = batchnorm_train(a, len(a), w, b, layer.eps)
                if stats is not None:
                    stats[i] = (mean, var, m)
            else:
                a = batchnorm_eval(a, w, b, state[f"{i}.running_mean"], state[f"{i}.running_var"], layer.eps)
        elif isinstance(layer, L.Dropout):
            if training and layer.p > 0:
                a = a * dropout_keep(i, layer, a.shape) / (1 - layer.p)
        else:
            a = _act(_kind(layer), a)
    return a


def loss(name, out, y):
    """Mean loss of the model output `out` (after any final Softmax/Sigmoid layer) against y.

    cross_entropy and binary_cross_entropy take logits unless the network ended on the link."""
    n = len(out)
    if name == "cross_entropy_logits":
        out = softmax(out)
        name = "cross_entropy"
    if name == "cross_entropy":
        return -np.mean(np.log(out[np.arange(n), y]))
    if name == "binary_cross_entropy_logits":
        out = 1 / (1 + np.exp(-out))
        name = "binary_cross_entropy"
    if name == "binary_cross_entropy":
        t = np.asarray(y, np.float64).reshape(out.shape)
        return -np.mean(t * np.log(out) + (1 - t) * np.log(1 - out))
    if name == "mean_squared_error":
        t = np.asarray(y)
        if t.dtype.kind in "iu" and t.ndim == 1 and out.shape[1] > 1:
            t = np.eye(out.shape[1])[t]
        return np.mean((out - t.reshape(out.shape)) ** 2)
    raise ValueError(name)


def numeric_gradients(layers, state, x, y, loss_name, eps=1e-6, **forward_options):
    """Central finite differences of the float64 loss with respect to every trainable parameter
    (buffers such as running statistics are not differentiated); forward_options go to `forward`."""
    state = {k: v.astype(np.float64) for k, v in state.items()}
    trainable = {f"{i}.{name}" for i, layer in enumerate(layers) for name in layer.param_shapes()}
    grads = {}
    for key in [k for k in state if k in trainable]:
        value = state[key]
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            old = value[idx]
            value[idx] = old + eps
            up = loss(loss_name, forward(layers, state, x, **forward_options), y)
            value[idx] = old - eps
            down = loss(loss_name, forward(layers, state, x, **forward_options), y)
            value[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads[key] = g
    return grads


M32 = np.uint64(0xFFFFFFFF)
PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
PHILOX_W = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC 2011) over arrays of counters: (..., 4) uint64 words."""
    c = [np.asarray(v, np.uint64) for v in np.broadcast_arrays(*(np.asarray(v, np.uint64) for v in counter))]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(10):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & M32, (k1 + PHILOX_W[1]) & M32
        p0, p1 = PHILOX_M[0] * c[0], PHILOX_M[1] * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
    return np.stack(c, axis=-1)
