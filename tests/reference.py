"""A float64 numpy twin of clnet's networks and losses, for checking the device's results."""

import numpy as np

from clnet import layers as L
from clnet.network import INPUT, Network


def softmax(z):
    """Row-wise softmax of (N, classes)."""
    return L.Softmax().reference({}, z)


def network_of(net):
    """A Network from a list of layers (a Sequential's chain) or a Network."""
    return net if isinstance(net, Network) else Network.chain(net)


def forward(net, state, x, training=False, dropout_keep=None, stats=None):
    """Output of the network (a list of layers, or a Network) on x (float64), as torch computes it:
    each node's layer's `reference` on the values it reads, in order.

    Evaluation (the default): BatchNorm uses the running statistics in `state`, Dropout is the
    identity. Training: BatchNorm uses the batch's statistics, recorded in `stats` when it is given
    ({node index: (mean, biased var, values per channel)}), and Dropout keeps the elements where
    dropout_keep(node index, layer, shape) is true, scaled by 1 / (1 - p)."""
    network = network_of(net)
    values = {INPUT: np.asarray(x, np.float64)}
    for i, node in enumerate(network.nodes):
        layer, inputs = node.layer, [values[name] for name in node.inputs]
        params = layer.arrays_in(state, node.name)
        if isinstance(layer, L.Dropout):
            keep = dropout_keep(i, layer, inputs[0].shape) if training and layer.p > 0 else None
            values[node.name] = layer.reference(params, inputs[0], training, keep)
            continue
        if training and stats is not None and isinstance(layer, (L.BatchNorm1D, L.BatchNorm2D)):
            stats[i] = layer.reference_statistics(inputs[0])
        values[node.name] = layer.reference(params, *inputs, training=training)
    return values[network.output]


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


def numeric_gradients(net, state, x, y, loss_name, eps=1e-6, **forward_options):
    """Central finite differences of the float64 loss with respect to every trainable parameter
    (buffers such as running statistics are not differentiated); forward_options go to `forward`."""
    layers = network_of(net)
    state = {k: v.astype(np.float64) for k, v in state.items()}
    trainable = {f"{node.name}.{name}" for node in layers.nodes for name in node.layer.param_shapes()}
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
