"""Launchers for activations, the fused bias/activation backward, row-wise softmax and sums."""

FILE = "elementwise.cl"
LOCAL = 64
ACTIVATIONS = {"none": 0, "relu": 1, "sigmoid": 2, "tanh": 3}  # codes of kernels_cl/common.h


def activation_forward(plan, act, x, y):
    k = plan.kernel(FILE, "activation_forward", ACT=ACTIVATIONS[act])
    return plan.launch(k, (x.size,), (LOCAL,), x.size, x, y)


def activation_backward(plan, act, y, dy, dx):
    k = plan.kernel(FILE, "activation_backward", ACT=ACTIVATIONS[act])
    return plan.launch(k, (y.size,), (LOCAL,), y.size, y, dy, dx)


def bias_act_backward(plan, act, dy, y, dpre, db):
    """dpre = dy * act'(y) (not written for "none"), db = column sums of dpre (skipped when db is None)."""
    rows, cols = dy.shape
    k = plan.kernel(FILE, "bias_act_backward", ACT=ACTIVATIONS[act], HAS_BIAS=db is not None)
    return plan.launch(k, (cols,), (LOCAL,), rows, cols, dy, y, dpre, db if db is not None else dpre)


def softmax_forward(plan, x, y):
    rows, cols = x.shape
    return plan.launch(plan.kernel(FILE, "softmax_forward"), (rows,), (LOCAL,), rows, cols, x, y)


def softmax_backward(plan, y, dy, dx):
    rows, cols = y.shape
    return plan.launch(plan.kernel(FILE, "softmax_backward"), (rows,), (LOCAL,), rows, cols, y, dy, dx)


def add(plan, a, b, out):
    """out = a + b over every element (tensors of one size, any shapes)."""
    if not a.size == b.size == out.size:
        raise ValueError(f"add of {a.shape} and {b.shape} into {out.shape}")
    return plan.launch(plan.kernel(FILE, "add_tensors"), (out.size,), (LOCAL,), out.size, a, b, out)
