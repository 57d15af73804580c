"""Pooling (MaxPool2D, AvgPool2D, GlobalAvgPool2D, AdaptiveAvgPool2D) against the float64 numpy
references of the layers (forward) and of this file (backward); AdaptiveAvgPool2D's reference also
against PyTorch's, where it is installed.

Op level: every launcher on awkward geometries (batch 1 and 3, non-square and one-row images,
overlapping windows, stride larger than the kernel, padding, windows that do not divide the input)
and inputs (ties, all-equal, all-negative with padding), with tensors inside larger buffers as in
test_ops.py: inputs surrounded by NaN, outputs by a guard value, outputs starting as NaN (or an
impossible index), so an ignored offset, a stray write or a forgotten element is caught.

Network level: the layers inside Sequential models, with gradients against central finite
differences of the float64 twin of the network in reference.py; a test-only Unflatten lets a Dense
layer feed the pooling layer, so that its backward pass reaches trainable parameters.
"""

from math import prod

import numpy as np
import pytest
from conftest import Slot, execute, new_plan

import clnet
from clnet import layers as L
from clnet.errors import ShapeError
from clnet.layers.pool import (AdaptiveAvgPool2D, AvgPool2D, GlobalAvgPool2D, MaxPool2D, bin_matrix, window_index,
                               window_values)
from clnet.ops import int_pair
from clnet.ops import pool as pool_ops

from reference import forward, loss, numeric_gradients, softmax


# ------------------------------------------------------------------------------------ helpers

def maxpool_backward_ref(argmax, dy, h, w):
    """Scatter: each window adds its gradient to the input element it chose."""
    n, c = dy.shape[:2]
    dx = np.zeros((n, c, h * w))
    for i in range(n):
        for j in range(c):
            dx[i, j] = np.bincount(argmax[i, j].ravel(), weights=np.asarray(dy[i, j], np.float64).ravel(),
                                   minlength=h * w)
    return dx.reshape(n, c, h, w)


def avgpool_backward_ref(dy, h, w, kernel, stride, padding):
    """Scatter: each window spreads dy / (KH*KW) over its elements; what falls on padding is dropped."""
    index = window_index(h, w, kernel, stride, padding)
    k = index.shape[-1]
    n, c = dy.shape[:2]
    dx = np.zeros((n, c, h * w + 1))
    for i in range(n):
        for j in range(c):
            share = np.repeat(np.asarray(dy[i, j], np.float64).ravel() / k, k)
            dx[i, j] = np.bincount(index.ravel(), weights=share, minlength=h * w + 1)
    return dx[:, :, :h * w].reshape(n, c, h, w)


def make_input(kind, rng, shape):
    if kind == "normal":
        return rng.normal(size=shape).astype(np.float32)
    if kind == "ties":      # few distinct values: most windows hold their maximum several times
        return rng.integers(-1, 2, size=shape).astype(np.float32)
    if kind == "equal":
        return np.full(shape, 3.5, np.float32)
    if kind == "negative":  # padding (-inf for max, 0 for average) must be told apart from the image
        return -rng.uniform(1, 5, size=shape).astype(np.float32)
    raise ValueError(kind)


# (N, C, H, W, kernel, stride, padding); stride None means the default (the kernel size)
CASES = [
    (1, 1, 7, 5, 2, None, 0),                 # windows divide neither 7 nor 5: last row/column unused
    (3, 3, 7, 5, 3, 1, 1),                    # overlapping windows, padding
    (3, 5, 1, 9, (1, 3), (1, 2), (0, 1)),     # a one-row image, overlapping columns
    (1, 3, 9, 8, (3, 2), (2, 1), 1),          # rectangular kernel, overlap in both directions
    (3, 1, 8, 7, 2, 3, 0),                    # stride larger than the kernel: gaps get no gradient
    (1, 5, 6, 6, 3, 2, 1),                    # overlap with stride 2
    (3, 3, 5, 4, (3, 2), 4, 1),               # stride larger than the kernel, with padding
    (1, 2, 5, 5, 5, 1, 2),                    # a window as large as the image, padded
    (1, 1, 1, 1, 1, None, 0),                 # 1x1
    (2, 3, 6, 35, 2, None, 0),                # 2x2 at stride 2 (CPUs: eights, then a four): 8 + 8 + 1 a row
    (1, 2, 4, 30, 2, None, 0),                # ... 8 + 4 + 3
    (1, 2, 5, 16, 2, 2, 0),                   # ... one vector a row, the last row unused
]
CASE_IDS = ["-".join(str(v).replace(" ", "") for v in case) for case in CASES]


def _geometry(case):
    n, c, h, w, kernel, stride, padding = case
    return (n, c, h, w), kernel, kernel if stride is None else stride, padding


# ----------------------------------------------------------------------------------- op level

@pytest.mark.parametrize("kind", ["normal", "ties", "equal", "negative"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_maxpool_op(device, gemm_family, case, kind):
    """Forward with and without the argmax, and the gather backward reading the forward's argmax."""
    rng = np.random.default_rng(CASES.index(case))
    shape, kernel, stride, padding = _geometry(case)
    x = make_input(kind, rng, shape)
    y_ref, argmax_ref = MaxPool2D(kernel, stride, padding).reference_with_argmax(x)
    dy = rng.normal(size=y_ref.shape).astype(np.float32)

    sx, sdy = Slot(device, x, 7), Slot(device, dy, 11)
    sy, sy_eval = Slot.output(device, y_ref.shape, 13), Slot.output(device, y_ref.shape, 3)
    sarg = Slot.output(device, y_ref.shape, 5, np.int32)
    sdx = Slot.output(device, shape, 9)
    plan = new_plan(device)
    pool_ops.maxpool_forward(plan, sx.tensor, sy.tensor, kernel, stride, padding, argmax=sarg.tensor)
    pool_ops.maxpool_forward(plan, sx.tensor, sy_eval.tensor, kernel, stride, padding)
    pool_ops.maxpool_backward(plan, sarg.tensor, sdy.tensor, sdx.tensor, kernel, stride, padding)
    execute(plan)

    np.testing.assert_array_equal(sy.read(), y_ref)
    np.testing.assert_array_equal(sy_eval.read(), y_ref)
    np.testing.assert_array_equal(sarg.read(), argmax_ref)
    np.testing.assert_allclose(sdx.read(), maxpool_backward_ref(argmax_ref, dy, *shape[2:]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sx.read(), x)
    np.testing.assert_array_equal(sdy.read(), dy)
    if kind == "negative":
        assert (y_ref < 0).all()  # padding that won (as 0 or as anything above the image) would show
    if kind in ("ties", "equal") and prod(int_pair(kernel)) > 1:
        # windows whose maximum occurs more than once: choosing any but the first would fail
        values = window_values(x.astype(np.float64), window_index(*shape[2:], kernel, stride, padding), -np.inf)
        assert ((values == y_ref[..., None]).sum(axis=-1) > 1).any()


@pytest.mark.parametrize("kind", ["normal", "negative"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_avgpool_op(device, case, kind):
    rng = np.random.default_rng(CASES.index(case) + 50)
    shape, kernel, stride, padding = _geometry(case)
    x = make_input(kind, rng, shape)
    y_ref = AvgPool2D(kernel, stride, padding).reference({}, x)
    dy = rng.normal(size=y_ref.shape).astype(np.float32)
    sx, sdy = Slot(device, x, 17), Slot(device, dy, 1)
    sy, sdx = Slot.output(device, y_ref.shape, 6), Slot.output(device, shape, 21)
    plan = new_plan(device)
    pool_ops.avgpool_forward(plan, sx.tensor, sy.tensor, kernel, stride, padding)
    pool_ops.avgpool_backward(plan, sdy.tensor, sdx.tensor, kernel, stride, padding)
    execute(plan)
    np.testing.assert_allclose(sy.read(), y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sdx.read(), avgpool_backward_ref(dy, *shape[2:], kernel, stride, padding),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sx.read(), x)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 5), (2, 3, 1, 9), (1, 2, 13, 11)])
def test_global_avgpool_op(device, shape):
    rng = np.random.default_rng(prod(shape))
    x = rng.normal(size=shape).astype(np.float32)
    y_ref = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    dy = rng.normal(size=y_ref.shape).astype(np.float32)
    sx, sdy = Slot(device, x, 3), Slot(device, dy, 30)
    sy, sdx = Slot.output(device, y_ref.shape, 8), Slot.output(device, shape, 2)
    plan = new_plan(device)
    pool_ops.global_avgpool_forward(plan, sx.tensor, sy.tensor)
    pool_ops.global_avgpool_backward(plan, sdy.tensor, sdx.tensor)
    execute(plan)
    np.testing.assert_allclose(sy.read(), y_ref, rtol=1e-6, atol=1e-6)
    dx_ref = np.broadcast_to(dy.astype(np.float64) / (shape[2] * shape[3]), shape)
    np.testing.assert_allclose(sdx.read(), dx_ref, rtol=1e-6, atol=1e-7)


# (N, C, H, W, OH, OW): pooling, overlapping bins, repetition, and a mix of them
ADAPTIVE_CASES = [
    (2, 3, 1, 1, 7, 7),       # a 1x1 image repeated (VGG's classifier on 32x32 images)
    (1, 2, 2, 2, 7, 7),       # 2 -> 7: bins of one and two rows (VGG at 64x64)
    (3, 2, 7, 5, 3, 2),       # overlapping bins of unequal sizes
    (1, 3, 8, 6, 4, 3),       # bins that divide the image: AvgPool2D(2)
    (2, 1, 3, 9, 5, 4),       # rows repeated, columns overlapping
    (1, 4, 5, 3, 1, 1),       # global
    (3, 1, 7, 7, 7, 7),       # the identity (VGG at 224x224)
]
ADAPTIVE_IDS = ["-".join(map(str, case)) for case in ADAPTIVE_CASES]


def adaptive_avgpool_backward_ref(dy, h, w):
    """Scatter: each bin spreads its gradient evenly over its elements, rows^T @ dy @ columns."""
    return bin_matrix(h, dy.shape[2]).T @ np.asarray(dy, np.float64) @ bin_matrix(w, dy.shape[3])


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=ADAPTIVE_IDS)
def test_adaptive_avgpool_op(device, case):
    n, c, h, w, oh, ow = case
    rng = np.random.default_rng(ADAPTIVE_CASES.index(case) + 70)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    y_ref = AdaptiveAvgPool2D((oh, ow)).reference({}, x)
    dy = rng.normal(size=y_ref.shape).astype(np.float32)
    sx, sdy = Slot(device, x, 5), Slot(device, dy, 14)
    sy, sdx = Slot.output(device, y_ref.shape, 9), Slot.output(device, x.shape, 2)
    plan = new_plan(device)
    pool_ops.adaptive_avgpool_forward(plan, sx.tensor, sy.tensor)
    pool_ops.adaptive_avgpool_backward(plan, sdy.tensor, sdx.tensor)
    execute(plan)
    np.testing.assert_allclose(sy.read(), y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sdx.read(), adaptive_avgpool_backward_ref(dy, h, w), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sx.read(), x)


def test_adaptive_bins_worked_example():
    """By hand: 2 rows into 7 bins ([0], [0], [0], [0, 1], [1], [1], [1]); 5 into 3 ([0, 1], [1, 2, 3], [3, 4])."""
    np.testing.assert_array_equal(bin_matrix(2, 7), [[1, 0], [1, 0], [1, 0], [0.5, 0.5], [0, 1], [0, 1], [0, 1]])
    np.testing.assert_allclose(bin_matrix(5, 3), [[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
                                                  [0, 0, 0, 1 / 2, 1 / 2]])
    np.testing.assert_array_equal(bin_matrix(6, 3), np.kron(np.eye(3), [[0.5, 0.5]]))


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=ADAPTIVE_IDS)
def test_adaptive_avgpool_reference_matches_pytorch(case):
    torch = pytest.importorskip("torch")
    n, c, h, w, oh, ow = case
    x = np.random.default_rng(ADAPTIVE_CASES.index(case)).normal(size=(n, c, h, w))
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (oh, ow)).numpy()
    np.testing.assert_allclose(AdaptiveAvgPool2D((oh, ow)).reference({}, x), expected, rtol=1e-12, atol=1e-12)


def _run_small(device, x, dy, kernel, stride, padding, max_pool=True):
    """(y, argmax, dx) of one plane set, computed on the device."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    sx, sdy = Slot(device, x, 4), Slot(device, dy, 4)
    sy, sarg, sdx = Slot.output(device, (n, c, oh, ow), 4), Slot.output(device, (n, c, oh, ow), 4, np.int32), \
        Slot.output(device, x.shape, 4)
    plan = new_plan(device)
    if max_pool:
        pool_ops.maxpool_forward(plan, sx.tensor, sy.tensor, kernel, stride, padding, sarg.tensor)
        pool_ops.maxpool_backward(plan, sarg.tensor, sdy.tensor, sdx.tensor, kernel, stride, padding)
    else:
        pool_ops.avgpool_forward(plan, sx.tensor, sy.tensor, kernel, stride, padding)
        pool_ops.avgpool_backward(plan, sdy.tensor, sdx.tensor, kernel, stride, padding)
    execute(plan)
    return sy.read(), sarg.read() if max_pool else None, sdx.read()


def test_maxpool_worked_examples(device, gemm_family):
    """Worked by hand (independent of the references above): overlapping windows sharing a maximum,
    ties going to the first maximum, a padded window of negatives."""
    x = np.array([[1, 2, 0], [4, 9, 3], [5, 6, 7]], np.float32).reshape(1, 1, 3, 3)
    dy = np.array([[1, 10], [100, 1000]], np.float32).reshape(1, 1, 2, 2)
    y, arg, dx = _run_small(device, x, dy, 2, 1, 0)
    np.testing.assert_array_equal(y.reshape(2, 2), [[9, 9], [9, 9]])
    np.testing.assert_array_equal(arg.reshape(2, 2), [[4, 4], [4, 4]])
    np.testing.assert_array_equal(dx.reshape(3, 3), [[0, 0, 0], [0, 1111, 0], [0, 0, 0]])

    x = np.array([[2, 5, 5], [5, 1, 5], [0, 5, 5]], np.float32).reshape(1, 1, 3, 3)
    y, arg, dx = _run_small(device, x, dy, 2, 1, 0)
    np.testing.assert_array_equal(y.reshape(2, 2), [[5, 5], [5, 5]])
    np.testing.assert_array_equal(arg.reshape(2, 2), [[1, 1], [3, 5]])  # first maximum, row by row
    np.testing.assert_array_equal(dx.reshape(3, 3), [[0, 11, 0], [100, 0, 1000], [0, 0, 0]])

    x = np.array([[-3, -2], [-4, -5]], np.float32).reshape(1, 1, 2, 2)
    dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    y, arg, dx = _run_small(device, x, dy, 2, 1, 1)
    np.testing.assert_array_equal(y.reshape(3, 3), [[-3, -2, -2], [-3, -2, -2], [-4, -4, -5]])
    np.testing.assert_array_equal(arg.reshape(3, 3), [[0, 1, 1], [0, 1, 1], [2, 2, 3]])
    np.testing.assert_array_equal(dx.reshape(2, 2), [[1 + 4, 2 + 3 + 5 + 6], [7 + 8, 9]])


def test_avgpool_worked_example(device):
    """Zero padding counts in the divisor (count_include_pad=True): corners average 1 of 4 values."""
    x = np.array([[4, 8], [12, 16]], np.float32).reshape(1, 1, 2, 2)
    dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    y, _, dx = _run_small(device, x, dy, 2, 1, 1, max_pool=False)
    np.testing.assert_allclose(y.reshape(3, 3), [[1, 3, 2], [4, 10, 6], [3, 7, 4]], rtol=1e-7)
    np.testing.assert_allclose(dx.reshape(2, 2), [[12 / 4, 16 / 4], [24 / 4, 28 / 4]], rtol=1e-7)


def test_maxpool_nan_propagates(device, gemm_family):
    """A NaN wins its windows, as in PyTorch, rather than being skipped by a comparison."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 2] = np.nan
    dy = np.ones((1, 1, 3, 3), np.float32)
    y, arg, dx = _run_small(device, x, dy, 2, 1, 0)
    covering = np.zeros((3, 3), bool)
    covering[0:2, 1:3] = True
    assert np.isnan(y.reshape(3, 3)[covering]).all() and not np.isnan(y.reshape(3, 3)[~covering]).any()
    assert (arg.reshape(3, 3)[covering] == 6).all()
    assert dx[0, 0, 1, 2] == 4


def test_maxpool_nans_win_as_in_pytorch(device, gemm_family):
    """Windows holding one NaN or two (torch takes the last of them: each NaN it meets wins) and
    NaN-free ones, 2 x 2 at stride 2 over rows of 26 (on CPUs eight outputs at a time, then four,
    then one)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 26)).astype(np.float32)
    x[0, 1, 0, 2] = x[0, 1, 1, 3] = x[0, 2, 0, 18] = x[0, 2, 1, 19] = np.nan   # two in a window
    x[1, 2, 3, 16] = x[1, 0, 0, 0] = x[1, 0, 2, 5] = x[1, 1, 1, 24] = np.nan
    y_torch, arg_torch = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    dy = np.ones(y_torch.shape, np.float32)
    y, arg, _ = _run_small(device, x, dy, 2, 2, 0)
    np.testing.assert_array_equal(y, y_torch.numpy())
    np.testing.assert_array_equal(arg, arg_torch.numpy())


@pytest.mark.parametrize("call", [
    lambda p, v: pool_ops.maxpool_forward(p, v((2, 3, 7, 5)), v((2, 3, 3, 3)), 2, 2),        # OW is 2
    lambda p, v: pool_ops.maxpool_forward(p, v((2, 3, 7, 5)), v((2, 3, 3, 2)), 2, 2, 0, v((2, 3, 2, 3))),
    lambda p, v: pool_ops.maxpool_forward(p, v((3, 7, 5)), v((3, 3, 2)), 2, 2),
    lambda p, v: pool_ops.maxpool_backward(p, v((1, 1, 2, 2)), v((1, 1, 2, 2)), v((1, 1, 6, 6)), 2, 2),
    lambda p, v: pool_ops.maxpool_forward(p, v((1, 1, 2, 2)), v((1, 1, 0, 0)), 3, 1),          # too large
    lambda p, v: pool_ops.avgpool_forward(p, v((1, 1, 4, 4)), v((1, 1, 4, 4)), 3, 1, 2),       # padding > k/2
    lambda p, v: pool_ops.avgpool_backward(p, v((1, 2, 3, 3)), v((1, 1, 6, 6)), 2, 2),
    lambda p, v: pool_ops.global_avgpool_forward(p, v((2, 3)), v((2, 3, 1, 1))),
    lambda p, v: pool_ops.global_avgpool_forward(p, v((2, 3, 4, 4)), v((2, 3))),
    lambda p, v: pool_ops.adaptive_avgpool_forward(p, v((2, 3, 4, 4)), v((2, 4, 7, 7))),
    lambda p, v: pool_ops.adaptive_avgpool_forward(p, v((2, 3, 4, 4)), v((2, 3, 0, 7))),
    lambda p, v: pool_ops.adaptive_avgpool_backward(p, v((2, 3, 7)), v((2, 3, 4, 4))),
    lambda p, v: pool_ops.adaptive_avgpool_backward(p, v((2, 3, 7, 7)), v((3, 4, 4))),
])
def test_launcher_shape_checks(call):
    plan = new_plan(None)  # nothing may be built or recorded: the check comes first
    with pytest.raises(ValueError, match="shapes|bad window"):
        call(plan, lambda shape: plan.value(shape, "t"))
    assert not plan.launches


# ----------------------------------------------------------------------- layers without a device

def test_repr():
    assert repr(MaxPool2D(2)) == "MaxPool2D(2)"
    assert repr(MaxPool2D(2, stride=2)) == "MaxPool2D(2)"
    assert repr(MaxPool2D((3, 2), stride=(2, 1), padding=1)) == "MaxPool2D((3, 2), stride=(2, 1), padding=1)"
    assert repr(AvgPool2D(3, stride=1, padding=(1, 0))) == "AvgPool2D(3, stride=1, padding=(1, 0))"
    assert repr(AvgPool2D([2, 2], stride=(3, 3))) == "AvgPool2D(2, stride=3)"
    assert repr(GlobalAvgPool2D()) == "GlobalAvgPool2D()"
    assert repr(AdaptiveAvgPool2D((7, 7))) == "AdaptiveAvgPool2D(7)"
    assert repr(AdaptiveAvgPool2D((3, 2))) == "AdaptiveAvgPool2D((3, 2))"


@pytest.mark.parametrize("make,match", [
    (lambda: MaxPool2D(3, padding=2), "half"),
    (lambda: MaxPool2D(2, padding=(0, 2)), "half"),
    (lambda: AvgPool2D(1, padding=1), "half"),
    (lambda: AvgPool2D((4, 1), padding=(2, 1)), "half"),
    (lambda: AvgPool2D((3, 4), padding=(2, 1)), "half"),
    (lambda: MaxPool2D(0), "kernel_size must be >= 1"),
    (lambda: MaxPool2D(2, stride=0), "stride must be >= 1"),
    (lambda: AvgPool2D(2, stride=(1, -1)), "stride must be >= 1"),
    (lambda: MaxPool2D(2, padding=-1), "padding must be >= 0"),
    (lambda: MaxPool2D((2, 2, 2)), "kernel_size must be an int or a pair"),
    (lambda: MaxPool2D(2.5), "kernel_size must be an int or a pair"),
    (lambda: AvgPool2D(True), "kernel_size must be an int or a pair"),
    (lambda: MaxPool2D(2, stride="2"), "stride must be an int or a pair"),
    (lambda: AdaptiveAvgPool2D(0), "output_size must be >= 1"),
    (lambda: AdaptiveAvgPool2D((7, None)), "output_size must be an int or a pair"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_largest_padding_allowed():
    assert MaxPool2D(3, padding=1).padding == (1, 1)
    assert AvgPool2D((5, 2), padding=(2, 1)).output_shape((3, 1, 1)) == (3, 1, 1)


@pytest.mark.parametrize("layer,shape,out", [
    (MaxPool2D(2), (3, 7, 5), (3, 3, 2)),
    (MaxPool2D(3, stride=1, padding=1), (5, 7, 5), (5, 7, 5)),
    (AvgPool2D((1, 3), stride=(1, 2), padding=(0, 1)), (5, 1, 9), (5, 1, 5)),
    (MaxPool2D((3, 2), stride=(2, 1), padding=1), (1, 9, 8), (1, 5, 9)),
    (AvgPool2D(2, stride=3), (1, 8, 7), (1, 3, 2)),
    (MaxPool2D(5, padding=2), (2, 1, 1), (2, 1, 1)),
    (GlobalAvgPool2D(), (5, 7, 3), (5, 1, 1)),
])
def test_output_shape(layer, shape, out):
    assert layer.output_shape(shape) == out
    window = shape[1:] if isinstance(layer, GlobalAvgPool2D) else layer.kernel_size
    assert layer.flops(shape) == prod(out) * prod(window)  # output elements x window size


@pytest.mark.parametrize("size,shape,out,flops", [
    (7, (5, 1, 1), (5, 7, 7), 5 * 7 * 7),                       # every output reads its one element
    ((2, 3), (3, 8, 6), (3, 2, 3), 3 * 8 * 6),                  # bins that divide the image read it once
    (3, (1, 5, 5), (1, 3, 3), (2 + 3 + 2) ** 2),                # overlapping bins read rows 1 and 3 twice
])
def test_adaptive_output_shape_and_flops(size, shape, out, flops):
    assert AdaptiveAvgPool2D(size).output_shape(shape) == out
    assert AdaptiveAvgPool2D(size).flops(shape) == flops


@pytest.mark.parametrize("layer,shape,match", [
    (MaxPool2D(3), (1, 2, 5), r"height >= 3.*3x3 window is larger than the 2x5 image"),
    (AvgPool2D((2, 4), padding=(1, 1)), (4, 3, 1), r"width >= 2.*padded to 5x3"),
    (MaxPool2D(2), (12,), r"\(channels, height, width\).*got \(12,\).*before Flatten"),
    (AvgPool2D(2), (1, 3, 4, 4), r"got \(1, 3, 4, 4\)"),
    (GlobalAvgPool2D(), (7,), r"got \(7,\).*before Flatten"),
    (GlobalAvgPool2D(), (2, 7), r"got \(2, 7\)"),
    (AdaptiveAvgPool2D(7), (512,), r"got \(512,\).*before Flatten"),
])
def test_shape_errors(layer, shape, match):
    with pytest.raises(ShapeError, match=match):
        layer.output_shape(shape)


# ------------------------------------------------------------------------------ network level

class Unflatten(L.Layer):
    """Test-only: (features,) -> (C, H, W), a view as torch.nn.Unflatten, so that a Dense layer can
    feed a pooling layer and the pooling backward pass reaches trainable parameters."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def output_shape(self, input_shape):
        if tuple(input_shape) != (prod(self.shape),):
            raise self.shape_error((prod(self.shape),), input_shape)
        return self.shape

    def forward(self, ctx, x):
        return x.view((x.shape[0], *self.shape))

    def backward(self, ctx, x, y, dy, need_dx):
        return dy.view(x.shape) if need_dx else None

    def reference(self, params, x, training=False):
        return x.reshape(len(x), *self.shape)


def check_network(device, layers, x, y, pool_index):
    """Gradients of one training step against finite differences; predict (in batches of 2, so the
    last is padded) against the reference; the training forward (its loss) against predict's."""
    model = clnet.Sequential(layers, device=device, seed=4)
    model.compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    logits = forward(layers, state, x)
    if isinstance(layers[pool_index], MaxPool2D) and pool_index > 0:
        # float32 on the device could choose differently from float64 between near-equal values
        a = forward(layers[:pool_index], state, x)
        layer = layers[pool_index]
        index = window_index(*a.shape[2:], layer.kernel_size, layer.stride, layer.padding)
        values = np.sort(window_values(a, index, -np.inf), axis=-1)
        gaps = values[..., -1] - values[..., -2]
        assert ((gaps > 1e-4) | (gaps == 0) & (values[..., -1] == 0)).all(), "near tie: change the seed"

    probs = model.predict(x, batch_size=2)
    np.testing.assert_allclose(probs, softmax(logits), rtol=1e-5, atol=1e-6)
    train_loss = model.train_on_batch(x, y)
    eval_loss = -np.mean(np.log(probs[np.arange(len(y)), y].astype(np.float64)))
    assert train_loss == pytest.approx(eval_loss, rel=1e-5, abs=1e-6)
    assert train_loss == pytest.approx(loss("cross_entropy_logits", logits, y), rel=1e-5, abs=1e-6)

    grads, expected = model.gradients(), numeric_gradients(layers, state, x, y, "cross_entropy_logits")
    assert grads.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=1e-3, atol=1e-5, err_msg=key)
    return grads


# Pooling layer first, on images: forward, eval vs training, the gradients of the Dense after it.
IMAGE_NETS = {
    "max-default-stride": (lambda: MaxPool2D(2), 3, (3, 7, 5), "normal"),
    "max-padding-negative": (lambda: MaxPool2D(3, stride=1, padding=1), 1, (1, 4, 5), "negative"),
    "max-rect-one-row": (lambda: MaxPool2D((3, 2), stride=(2, 1), padding=1), 3, (2, 1, 9), "normal"),
    "max-ties": (lambda: MaxPool2D(2, stride=1), 3, (3, 5, 4), "ties"),
    "avg-padding-negative": (lambda: AvgPool2D(3, stride=2, padding=1), 3, (3, 7, 5), "negative"),
    "avg-stride-over-kernel": (lambda: AvgPool2D(2, stride=3), 1, (1, 8, 7), "normal"),
    "global": (lambda: GlobalAvgPool2D(), 3, (5, 7, 5), "normal"),
    "global-one-row": (lambda: GlobalAvgPool2D(), 1, (3, 1, 9), "normal"),
    "adaptive-repeat": (lambda: AdaptiveAvgPool2D((3, 2)), 3, (2, 1, 1), "normal"),
}


@pytest.mark.parametrize("net", list(IMAGE_NETS))
def test_pooling_first_in_a_network(device, net):
    make, batch, shape, kind = IMAGE_NETS[net]
    rng = np.random.default_rng(len(net))
    pool = make()
    features = prod(pool.output_shape(shape))
    layers = [pool, L.Flatten(), L.Dense(features, 3)]
    check_network(device, layers, make_input(kind, rng, (batch, *shape)), rng.integers(0, 3, batch), 0)


# Dense -> Unflatten -> [activation] -> pooling -> ...: the pooling backward pass feeds the first
# Dense layer's gradients, which are checked against finite differences.
HIDDEN_NETS = {
    "max-overlap-padding-tanh": ([L.Tanh(), MaxPool2D(3, stride=1, padding=1)], 3, (3, 7, 5)),
    "max-rect-relu": ([L.ReLU(), MaxPool2D((3, 2), stride=(2, 1), padding=1)], 1, (2, 6, 5)),
    "max-stride-over-kernel": ([MaxPool2D(2, stride=3)], 3, (1, 8, 7)),
    "avg-overlap-padding": ([AvgPool2D(3, stride=1, padding=1)], 3, (3, 5, 4)),
    "avg-rect-one-row": ([AvgPool2D((1, 3), stride=(1, 2), padding=(0, 1))], 1, (5, 1, 9)),
    "avg-stride-over-kernel": ([L.Tanh(), AvgPool2D(2, stride=3)], 3, (1, 8, 7)),
    "global": ([L.Tanh(), GlobalAvgPool2D()], 3, (5, 3, 4)),
    "max-then-avg": ([MaxPool2D(3, stride=1, padding=1), AvgPool2D(2)], 3, (2, 5, 6)),
    "max-then-global": ([MaxPool2D(2, stride=1), GlobalAvgPool2D()], 1, (4, 4, 3)),
    "adaptive-overlap": ([L.Tanh(), AdaptiveAvgPool2D((3, 2))], 3, (2, 7, 5)),
    "adaptive-repeat-and-overlap": ([AdaptiveAvgPool2D((5, 2))], 1, (3, 2, 3)),
}


@pytest.mark.parametrize("net", list(HIDDEN_NETS))
def test_pooling_backward_in_a_network(device, net):
    middle, batch, shape = HIDDEN_NETS[net]
    rng = np.random.default_rng(len(net) + 100)
    out = shape
    for layer in middle:
        out = layer.output_shape(out)
    layers = [L.Dense(3, prod(shape)), Unflatten(shape), *middle, L.Flatten(), L.Dense(prod(out), 3)]
    pool_index = next(i for i, layer in enumerate(layers)
                      if isinstance(layer, (MaxPool2D, AvgPool2D, GlobalAvgPool2D, AdaptiveAvgPool2D)))
    grads = check_network(device, layers, rng.normal(size=(batch, 3)), rng.integers(0, 3, batch), pool_index)
    # The first Dense layer's gradient is what the pooling backward pass produced: it must not vanish.
    assert np.abs(grads["0.weight"]).max() > 1e-3


def test_shape_error_names_the_layer(device):
    model = clnet.Sequential([MaxPool2D(3), L.Flatten(), L.Dense(1, 3)], device=device)
    model.compile("cross_entropy")
    x = np.zeros((2, 1, 2, 5), np.float32)
    for call in (lambda: model.predict(x), lambda: model.train_on_batch(x, [0, 1])):
        with pytest.raises(ShapeError, match=r"layer 0 \(MaxPool2D\(3\)\).*got \(1, 2, 5\).*larger than"):
            call()
    # nothing is lost: the model still works on images it fits
    assert model.predict(np.zeros((2, 1, 3, 3), np.float32)).shape == (2, 3)

    model = clnet.Sequential([L.Flatten(), AvgPool2D(2), L.Dense(4, 3)], device=device)
    with pytest.raises(ShapeError, match=r"layer 1 \(AvgPool2D\(2\)\).*before Flatten"):
        model.predict(np.zeros((1, 1, 4, 4), np.float32))
