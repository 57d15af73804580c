"""A float64 numpy twin of clnet's dense networks and losses, for checking the device's results."""

import numpy as np

from clnet import layers as L


def _act(kind, x):
    return {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
            "tanh": np.tanh, "softmax": _softmax}[kind](x)


def _softmax(z):
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


def forward(layers, state, x):
    """Output of the network on x (float64), as torch.nn.Sequential computes it."""
    a = np.asarray(x, np.float64)
    for i, layer in enumerate(layers):
        if isinstance(layer, L.Flatten):
            a = a.reshape(len(a), -1)
        elif isinstance(layer, L.Conv2D):
            a = conv2d(a, state[f"{i}.weight"].astype(np.float64),
                       state[f"{i}.bias"].astype(np.float64) if layer.bias else None, layer)
        elif isinstance(layer, L.Dense):
            a = a @ state[f"{i}.weight"].astype(np.float64).T
            if layer.bias:
                a = a + state[f"{i}.bias"]
        else:
            a = _act(_kind(layer), a)
    return a


def loss(name, out, y):
    """Mean loss of the model output `out` (after any final Softmax/Sigmoid layer) against y.

    cross_entropy and binary_cross_entropy take logits unless the network ended on the link."""
    n = len(out)
    if name == "cross_entropy_logits":
        out = _softmax(out)
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


def numeric_gradients(layers, state, x, y, loss_name, eps=1e-6):
    """Central finite differences of the float64 loss with respect to every parameter."""
    state = {k: v.astype(np.float64) for k, v in state.items()}
    grads = {}
    for key, value in state.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            old = value[idx]
            value[idx] = old + eps
            up = loss(loss_name, forward(layers, state, x), y)
            value[idx] = old - eps
            down = loss(loss_name, forward(layers, state, x), y)
            value[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads[key] = g
    return grads
