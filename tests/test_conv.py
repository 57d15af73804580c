"""Conv2D forward and gradients against float64 references, on awkward geometries; grouped and
depthwise convolutions against them and torch.nn.Conv2d(groups=...)."""

import copy
import importlib

import numpy as np
import pytest

import clnet
from clnet import layers as L
from clnet.ops import conv as conv_ops

from conftest import Slot, SlotPlan, execute, force_gemm_params, new_plan
from reference import forward, loss, numeric_gradients

GEOMETRIES = [  # (batch, in, height, width, out, kernel, stride, padding, dilation)
    (2, 3, 7, 5, 4, 3, 1, 0, 1),                   # non-square, no padding
    (1, 1, 6, 6, 2, 3, 2, 1, 1),                   # batch 1, one channel, stride 2, padding
    (3, 2, 9, 8, 5, (3, 2), (2, 1), (1, 0), (2, 1)),  # rectangular kernel, mixed stride, dilation
    (2, 3, 5, 6, 4, 4, 1, "same", 1),              # even kernel, "same" padding (asymmetric)
    (2, 5, 4, 4, 3, 1, 1, 0, 1),                   # 1x1 kernel
    (2, 2, 5, 5, 3, 2, 3, 0, 1),                   # stride larger than the kernel
    (1, 3, 3, 3, 17, 3, 1, 1, 1),                  # output channels beyond a tile's edge
    (2, 2, 4, 19, 3, 3, 1, 1, 1),                  # rows of 16+ pixels (vector loads on CPUs), padding
    (1, 2, 3, 18, 3, (1, 2), 1, 0, 1),             # the same without padding
    (2, 2, 3, 16, 3, 3, 1, 1, 1),                  # rows of 16: padding on both ends of a run
    (2, 3, 3, 8, 4, 3, 1, 1, 1),                   # rows of 8 (two to a run on CPUs), runs across images
    (2, 2, 3, 14, 3, (1, 3), 1, (0, 3), 1),        # output rows of 18 from input rows of 14
]


def _conv(geometry):
    n, c, h, w, o, k, s, p, d = geometry
    return n, (c, h, w), L.Conv2D(c, o, k, stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[f"g{i}" for i in range(len(GEOMETRIES))])
def test_forward_matches_reference(device, gemm_family, geometry):
    n, shape, conv = _conv(geometry)
    model = clnet.Sequential([conv, L.Tanh(), L.Flatten()], device=device, seed=1)
    x = np.random.default_rng(0).normal(size=(n, *shape))
    state = model.state_dict()
    expected = np.tanh(conv.reference(conv.arrays_in(state, 0), x))
    assert model.predict(x).shape == (n, expected[0].size)
    np.testing.assert_allclose(model.predict(x), expected.reshape(n, -1), rtol=1e-5, atol=1e-5)


GRADIENT_GEOMETRIES = (0, 1, 2, 3, 7, 10, 11)


@pytest.mark.parametrize("geometry", [GEOMETRIES[i] for i in GRADIENT_GEOMETRIES],
                         ids=[f"g{i}" for i in GRADIENT_GEOMETRIES])
def test_gradients_match_finite_differences(device, gemm_family, geometry):
    """A 1x1 convolution, the geometry's (whose input gradient it needs), a second one, then a
    dense classifier."""
    n, (c, h, w), first = _conv(geometry)
    out_shape = first.output_shape((c, h, w))
    second = L.Conv2D(out_shape[0], 2, 2, padding=1, bias=False)
    features = int(np.prod(second.output_shape(out_shape)))
    layers = [L.Conv2D(c, c, 1), L.Tanh(), first, L.ReLU(), second, L.Sigmoid(), L.Flatten(), L.Dense(features, 3)]
    _assert_step_matches_finite_differences(device, layers, (n, c, h, w))


def _assert_step_matches_finite_differences(device, layers, x_shape, scale=1.0):
    """One SGD step's loss against the float64 forward, its gradients against central differences."""
    model = clnet.Sequential(layers, device=device, seed=2)
    model.compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    rng = np.random.default_rng(1)
    x, y = scale * rng.normal(size=x_shape), rng.integers(0, 3, x_shape[0])
    state = model.state_dict()
    assert model.train_on_batch(x, y) == pytest.approx(
        loss("cross_entropy_logits", forward(layers, state, x), y), rel=1e-4)
    grads, expected = model.gradients(), numeric_gradients(layers, state, x, y, "cross_entropy_logits")
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=2e-3, atol=2e-5, err_msg=key)


# Conv2D's backward pass alone: (layer, input shape, batch, fused activation)
BACKWARD = [
    (L.Conv2D(3, 4, 3, padding=1, bias=False), (3, 5, 7), 2, None),      # a ResNet's: dY read where it lies
    (L.Conv2D(4, 6, 1, stride=2, bias=False), (4, 7, 8), 3, None),       # 1x1 stride 2 (a shortcut), P = 16
    (L.Conv2D(2, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1)), (2, 9, 8), 2, "relu"),
    (L.Conv2D(3, 4, 3, padding=1), (3, 4, 6), 1, None),                  # a bias alone, P = 24
    (L.Conv2D(6, 9, 3, padding=1, groups=3, bias=False), (6, 7, 5), 2, "relu6"),  # grouped, no bias
    (L.Conv2D(6, 9, 3, padding=1, groups=3, bias=False), (6, 7, 5), 2, None),  # grouped, dY read where it lies
    (L.Conv2D(4, 6, 3, padding=1, groups=2, bias=False), (4, 4, 8), 3, None),  # likewise, planes of 32: runs of 16
    (L.Conv2D(12, 8, (3, 2), stride=(2, 1), groups=4, bias=False), (12, 7, 9), 3, None),
    (L.Conv2D(5, 5, 3, stride=2, padding=1, groups=5, bias=False), (5, 9, 7), 2, None),  # depthwise
    (L.Conv2D(3, 6, 3, padding=1, groups=3), (3, 5, 6), 2, "relu6"),     # depthwise, multiplier 2
]
BACKWARD_IDS = [f"{layer!r}-{act}" for layer, _, _, act in BACKWARD]


def _backward_reference(layer, weight, x, dpre):
    """dX and dW in float64 for the output gradient dpre (before the activation): the adjoint of
    `Conv2D.reference`, tap by tap."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    (top, bottom), (left, right) = layer._padding_sides()
    n, c, h, w = x.shape
    groups, (oh, ow) = layer.groups, dpre.shape[2:]
    og = layer.out_channels // groups
    xp = np.pad(np.float64(x), ((0, 0), (0, 0), (top, bottom), (left, right)))
    xp = xp.reshape(n, groups, c // groups, *xp.shape[2:])
    d = np.float64(dpre).reshape(n, groups, og, oh, ow)
    wt = np.float64(weight).reshape(groups, og, c // groups, kh, kw)
    dxp, dwt = np.zeros_like(xp), np.zeros_like(wt)
    for i in range(kh):
        for j in range(kw):
            window = (..., slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
            dwt[..., i, j] = np.einsum("ngohw,ngchw->goc", d, xp[window])
            dxp[window] += np.einsum("ngohw,goc->ngchw", d, wt[..., i, j])
    return dxp[..., top:top + h, left:left + w].reshape(x.shape), dwt.reshape(weight.shape)


@pytest.mark.parametrize("case", BACKWARD, ids=BACKWARD_IDS)
def test_backward_at_odd_offsets(device, gemm_family, case, dy_offset=3):
    """Conv2D.backward recorded alone, its inputs (x, y, dY, the weight) at odd offsets amid NaN and
    every value it makes and gradient it writes in a guarded buffer, against the float64 adjoint of
    its reference: on the GPU family its GEMMs read dY (or dpre) in dY's NCHW layout, and where there
    is neither bias nor activation nothing runs before them; so on the CPU family too where the
    convolution has stride 1 and is not depthwise."""
    from clnet import ops
    layer, shape, batch, act = case
    rng = np.random.default_rng(8)
    params = {key: np.float32(rng.normal(size=s)) for key, s in layer.param_shapes().items()}
    x = np.float32(rng.normal(size=(batch, *shape)))
    pre = layer.reference(params, x)
    y = {None: pre, "relu": np.maximum(pre, 0), "relu6": np.clip(pre, 0, 6)}[act]
    dy = np.float32(rng.normal(size=pre.shape))
    dpre = dy * ((y > 0) & (y < 6) if act == "relu6" else y > 0 if act == "relu" else 1)
    plan = SlotPlan(device, aligned=gemm_family == "cpu")  # the GPU family's dpre, partial sums... at odd offsets
    sx, sy, sdy = Slot(device, x, 5), Slot(device, y, 9), Slot(device, dy, dy_offset)
    weights = {key: Slot(device, value, 7 + 4 * i) for i, (key, value) in enumerate(params.items())}
    grads = {key: Slot.output(device, value.shape, 11 + 2 * i) for i, (key, value) in enumerate(params.items())}
    ctx = L.LayerContext(plan, {key: slot.tensor for key, slot in weights.items()},
                         {key: slot.tensor for key, slot in grads.items()}, {},
                         act=ops.activation(act) if act else None, training=True)
    dx = layer.backward(ctx, sx.tensor, sy.tensor, sdy.tensor, need_dx=True)
    execute(plan)
    expected_dx, expected_dw = _backward_reference(layer, params["weight"], x, dpre)
    np.testing.assert_allclose(plan.read(dx), expected_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["weight"].read(), expected_dw, rtol=1e-5, atol=1e-5)
    if layer.bias:
        np.testing.assert_allclose(grads["bias"].read(), dpre.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    names = [launch.kernel.function_name for launch in plan.launches]
    fused = {"cpu": "conv_bias_act_backward_rows", "tiled": "conv_bias_act_backward"}[gemm_family]
    g = layer.geometry(shape)
    in_place = not layer.bias and act is None and (
        gemm_family == "tiled" or (conv_ops.transposed(g, layer.out_channels) and not conv_ops.depthwise(g)))
    assert (fused in names) != in_place


@pytest.mark.parametrize("dy_offset", [3, 8])
def test_backward_with_float4_loads_and_k_split(device, monkeypatch, dy_offset):
    """The GPU family's backward GEMMs with parameters clnet-tune may pick: float4 runs of dY's
    images (where its planes are multiples of 4: a 16-byte aligned dY at offset 8, one by one at
    offset 3) and K split in 3."""
    monkeypatch.setattr(device, "family", "tiled")
    gemm_module = importlib.import_module("clnet.ops.gemm")
    params = {**gemm_module.GEMM_TILED.big, "TILE_M": 32, "TILE_N": 32, "WPT_M": 4, "WPT_N": 4, "VECTOR": 1,
              "VLOAD": 1, "SLICES": 3}
    assert gemm_module.GEMM_TILED.valid(params)
    force_gemm_params(monkeypatch, params)
    for case in BACKWARD[:6]:
        test_backward_at_odd_offsets(device, "tiled", case, dy_offset)


@pytest.mark.parametrize("tile", [(32, 64, 8, 2, 4, 0, 0), (128, 128, 16, 8, 8, 1, 1), (16, 144, 16, 2, 9, 1, 0)])
def test_implicit_gemms_with_tuned_parameters(device, monkeypatch, tile):
    """The implicit convolutions with parameters clnet-tune may pick (other tiles, switches, float4
    runs of the plain operands, K split in 3) still match the reference, forward and gradients."""
    monkeypatch.setattr(device, "family", "tiled")
    tm, tn, tk, wm, wn, prefetch, vector = tile
    params = {"TILE_M": tm, "TILE_N": tn, "TILE_K": tk, "WPT_M": wm, "WPT_N": wn, "PREFETCH": prefetch,
              "VECTOR": vector, "VLOAD": vector, "SLICES": 3}
    gemm_module = importlib.import_module("clnet.ops.gemm")  # clnet.ops.gemm is also the function
    assert gemm_module.GEMM_TILED.valid(params)
    force_gemm_params(monkeypatch, params)
    test_forward_matches_reference(device, "tiled", GEOMETRIES[2])
    test_gradients_match_finite_differences(device, "tiled", GEOMETRIES[2])


@pytest.mark.parametrize("rows", [4, 12])
def test_gathered_panels_in_slices(device, monkeypatch, rows):
    """The CPU family's implicit convolutions with parameters clnet-tune may pick (rows per
    work-item, K split in 3), and with gathered panels capped at 5 rows of B (more slices), still
    match the reference, forward and gradients."""
    monkeypatch.setattr(device, "family", "cpu")
    gemm_module = importlib.import_module("clnet.ops.gemm")
    force_gemm_params(monkeypatch, {"CPU_ROWS": rows, "SLICES": 3})
    for cap in (gemm_module.CPU_GATHER_K, 5):
        monkeypatch.setattr(gemm_module, "CPU_GATHER_K", cap)
        for geometry in (GEOMETRIES[2], GEOMETRIES[7]):  # input gradients: col2im, and gathered
            test_forward_matches_reference(device, "cpu", geometry)
            test_gradients_match_finite_differences(device, "cpu", geometry)


def test_chunked_columns_give_the_same_results(device, monkeypatch):
    """A batch whose column gradients exceed the budget runs its input gradient in chunks (the last
    one partial): the CPU family's GEMM + col2im path, for strides other than 1."""
    monkeypatch.setattr(device, "family", "cpu")
    layers = lambda: [L.Conv2D(2, 3, 3, padding=1), L.ReLU(), L.Conv2D(3, 2, 3, stride=2), L.Flatten(),
                      L.Dense(2 * 2 * 2, 3)]
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 2, 6, 5)), rng.integers(0, 3, 7)
    results, chunks = [], []
    for budget in (conv_ops.COLUMNS, 3 * 27 * 4):  # everything at once, then 3 images per chunk
        monkeypatch.setattr(conv_ops, "COLUMNS", budget)
        model = clnet.Sequential(layers(), device=device, seed=3)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.1))
        model.train_on_batch(x, y)
        results.append((model.gradients(), model.predict(x)))
        plan = model._runner(7, (2, 6, 5), True, np.int32).plan
        chunks.append(sum(launch.kernel.function_name == "col2im" for launch in plan.launches))
    assert chunks == [1, 3]
    for key in results[0][0]:
        np.testing.assert_allclose(results[1][0][key], results[0][0][key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)


def test_padded_last_batch_trains_like_an_unpadded_one(device, gemm_family):
    """fit with batch 4 on 7 samples (the second batch padded) equals train_on_batch on the 4 and
    then the 3 (nothing padded): the convolutions' gradients, one of them read from dY where it lies
    on the GPU family (no bias, no activation: a BatchNorm follows), count the real rows alone."""
    layers = lambda: [L.Conv2D(2, 3, 3, padding=1, bias=False), L.BatchNorm2D(3), L.ReLU(), L.Conv2D(3, 4, 3, stride=2),
                      L.ReLU(), L.Flatten(), L.Dense(4 * 2 * 2, 3)]
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(7, 2, 6, 5)), rng.integers(0, 3, 7)
    models = []
    for _ in range(2):
        models.append(clnet.Sequential(layers(), device=device, seed=5))
        models[-1].compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
    models[0].fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    models[1].train_on_batch(x[:4], y[:4])
    models[1].train_on_batch(x[4:], y[4:])
    padded, unpadded = models[0].state_dict(), models[1].state_dict()
    for key in padded:
        np.testing.assert_allclose(padded[key], unpadded[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_shapes_are_checked_and_named(device):
    model = clnet.Sequential([L.Conv2D(3, 4, 3), L.Flatten(), L.Dense(4, 2)], device=device)
    with pytest.raises(clnet.ShapeError, match=r"layer 0 \(Conv2D\(3, 4, 3\)\) expects input \(3, height, width\)"):
        model.predict(np.zeros((1, 1, 8, 8)))
    with pytest.raises(clnet.ShapeError, match="too small for this kernel"):
        model.predict(np.zeros((1, 3, 2, 8)))
    with pytest.raises(clnet.ShapeError, match=r"layer 2 \(Dense\(4, 2\)\) expects input \(4,\).*\(16,\)"):
        model.predict(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="stride 1"):
        L.Conv2D(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="pair of ints"):
        L.Conv2D(1, 1, (3, 3, 3))


def test_weights_have_pytorch_layout(device):
    model = clnet.Sequential([L.Conv2D(3, 8, (5, 3), bias=False), L.ReLU(), L.Conv2D(8, 4, 1)], device=device)
    state = model.state_dict()
    assert list(state) == ["0.weight", "2.weight", "2.bias"]
    assert state["0.weight"].shape == (8, 3, 5, 3) and state["2.weight"].shape == (4, 8, 1, 1)
    assert np.abs(state["0.weight"]).max() == pytest.approx(np.sqrt(1 / (3 * 5 * 3)), rel=0.05)  # PyTorch's bound


@pytest.mark.parametrize("act", ["none", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch, channels, pixels", [
    (3, 2, 300), (1, 5, 7), (2, 64, 1100),  # planes of P % 16 values past the lanes, or fewer than 16
    (7, 1, 1024), (5, 3, 32), (9, 4, 1),    # one channel, odd batches (the CPU family's last slice
])                                          # short), planes that fill the lanes exactly, P = 1
def test_conv_bias_act_backward_in_slices(device, gemm_family, act, bias, batch, channels, pixels):
    """dpre (in dy's (B, C, P) layout on the GPU family, not written there without an activation;
    transposed to (C, B*P) on the CPU family) and the bias gradient, with each channel split into
    slices (partial sums added in a fixed order): on the GPU family when that gives the device more
    work-groups, on the CPU family when a channel has more rows than a slice (norm.slice_rows)."""
    from clnet import ops
    from clnet.ops.norm import slice_rows
    rng = np.random.default_rng(6)
    dy, y = rng.normal(size=(batch, channels, pixels)), np.abs(rng.normal(size=(batch, channels, pixels)))
    y[..., ::3] = 0.0  # ReLU's gradient is 0 there
    plan = new_plan(device)
    s_dy, s_y = Slot(device, dy, 3), Slot(device, y, 5)
    dpre_shape = (batch, channels, pixels) if gemm_family == "tiled" else (channels, batch * pixels)
    dpre, db = Slot.output(device, dpre_shape, 7), Slot.output(device, (channels,), 2)
    conv_ops.conv_bias_act_backward(plan, ops.activation(act), s_dy.tensor, s_y.tensor, dpre.tensor,
                                    db.tensor if bias else None)
    execute(plan)
    grad = dy * (y > 0) if act == "relu" else dy
    if gemm_family == "tiled" and act == "none":  # the GEMMs read dy itself: the kernel only sums the bias
        assert np.isnan(dpre.read()).all()
    else:
        expected = grad if gemm_family == "tiled" else grad.transpose(1, 0, 2).reshape(channels, -1)
        np.testing.assert_allclose(dpre.read(), expected, rtol=1e-6, atol=1e-6)
    if bias:
        # float32 sums of up to 2200 values: the error scales with the sum of their magnitudes
        np.testing.assert_allclose(db.read(), grad.sum(axis=(0, 2)), rtol=1e-5,
                                   atol=1e-6 * np.abs(grad).sum(axis=(0, 2)).max())
    else:
        assert np.isnan(db.read()).all()  # untouched
    slices = [l for l in plan.launches if l.kernel.function_name == "sum_slices"]
    if gemm_family == "tiled":
        split = batch * pixels >= 2 * conv_ops.SLICE_MIN and channels < 4 * device.info.compute_units
    else:
        split = batch > slice_rows(pixels)
    assert bool(slices) == (bias and split)


# Grouped and depthwise convolutions: (batch, in, height, width, out, kernel, stride, padding, dilation, groups)
GROUPED = [
    (2, 6, 7, 5, 9, 3, 1, 1, 1, 3),                  # groups dividing no tile size, 2 -> 3 channels a group
    (3, 12, 7, 9, 8, (3, 2), (2, 1), 0, 1, 4),        # 3 -> 2 channels a group, odd sizes, mixed stride
    (2, 4, 9, 8, 8, 3, 1, 2, 2, 2),                  # dilation with groups
    (1, 3, 5, 6, 6, (2, 3), 1, "same", 1, 3),        # depthwise, multiplier 2, asymmetric "same"
    (2, 5, 9, 21, 5, 3, 2, 1, 1, 5),                 # depthwise, stride 2 and padding (MobileNetV2's), 11 columns
    (2, 4, 9, 8, 8, 3, (2, 1), (1, 2), (2, 1), 4),   # depthwise, multiplier 2, dilation, mixed stride
    (2, 4, 4, 19, 4, 3, 1, 1, 1, 2),                 # rows of 16+ pixels (vector loads on CPUs)
]
GROUPED_IDS = [f"grouped{i}" for i in range(len(GROUPED))]


def _grouped(geometry):
    n, c, h, w, o, k, s, p, d, groups = geometry
    return n, (c, h, w), L.Conv2D(c, o, k, stride=s, padding=p, dilation=d, groups=groups)


@pytest.mark.parametrize("geometry", GROUPED, ids=GROUPED_IDS)
def test_grouped_forward_matches_reference(device, gemm_family, geometry):
    """With the bias and a fused ReLU6 (as MobileNetV2 follows its depthwise convolutions)."""
    n, shape, conv = _grouped(geometry)
    model = clnet.Sequential([conv, L.ReLU6(), L.Flatten()], device=device, seed=1)
    rng = np.random.default_rng(0)
    state = {key: value + rng.normal(0, 0.5, value.shape).astype(np.float32)
             for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    x = 3 * rng.normal(size=(n, *shape))
    expected = np.clip(conv.reference(conv.arrays_in(state, 0), x), 0, 6).reshape(n, -1)
    assert 0 < (expected == 6).sum() and 0 < (expected == 0).sum()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)


def _grouped_network(geometry):
    """A 1x1 convolution (so that the grouped one's input gradient counts), the grouped convolution
    and its fused ReLU6, a second convolution, then a dense classifier."""
    n, (c, h, w), grouped = _grouped(geometry)
    out_shape = grouped.output_shape((c, h, w))
    second = L.Conv2D(out_shape[0], 2, 2, padding=1, bias=False)
    features = int(np.prod(second.output_shape(out_shape)))
    return n, (c, h, w), [L.Conv2D(c, c, 1), L.Tanh(), grouped, L.ReLU6(), second, L.Sigmoid(), L.Flatten(),
                          L.Dense(features, 3)]


@pytest.mark.parametrize("geometry", GROUPED, ids=GROUPED_IDS)
def test_grouped_gradients_match_finite_differences(device, gemm_family, geometry):
    n, shape, layers = _grouped_network(geometry)
    _assert_step_matches_finite_differences(device, layers, (n, *shape), scale=2.0)


def test_grouped_products_split_over_k(device, monkeypatch, gemm_family):
    """The grouped GEMMs with K split in 3 (the slices of every group in one launch, then summed),
    as clnet-tune may pick them, and on the CPU family with gathered panels capped at 5 rows."""
    gemm_module = importlib.import_module("clnet.ops.gemm")
    params = {"CPU_ROWS": 4, "SLICES": 3} if gemm_family == "cpu" else {**gemm_module.GEMM_TILED.defaults, "SLICES": 3}
    force_gemm_params(monkeypatch, params)
    monkeypatch.setattr(gemm_module, "CPU_GATHER_K", 5)
    for geometry in GROUPED[:3]:
        test_grouped_forward_matches_reference(device, gemm_family, geometry)
        test_grouped_gradients_match_finite_differences(device, gemm_family, geometry)


def test_grouped_columns_in_chunks(device, monkeypatch):
    """The CPU family's input gradient of a strided grouped convolution: every group's column
    gradients in one matrix, in chunks of images when they exceed the budget."""
    monkeypatch.setattr(device, "family", "cpu")
    monkeypatch.setattr(conv_ops, "COLUMNS", 2 * 12 * 7 * 9)  # 2 images a chunk of GROUPED[1]'s 3
    test_grouped_gradients_match_finite_differences(device, "cpu", GROUPED[1])


def test_depthwise_weight_gradient_in_slices(device, gemm_family, monkeypatch):
    """A batch of many pixels per channel: the depthwise weight gradient in slices, summed in a
    fixed order (sum_slices), as finite differences say."""
    monkeypatch.setattr(conv_ops, "SLICE_MIN", 16)
    geometry = (3, 3, 11, 12, 6, 3, 1, 1, 1, 3)
    test_grouped_gradients_match_finite_differences(device, gemm_family, geometry)
    n, shape, layers = _grouped_network(geometry)
    plan = clnet.Sequential(layers, device=device).compile("cross_entropy", "sgd")._runner(
        n, shape, True, np.int32).plan
    names = [launch.kernel.function_name for launch in plan.launches]
    assert "depthwise_weight_grad" in names and "sum_slices" in names[names.index("depthwise_weight_grad"):]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's, about its own padded copy
@pytest.mark.parametrize("geometry", GROUPED, ids=GROUPED_IDS)
def test_grouped_convolution_matches_torch(device, gemm_family, geometry):
    """Outputs, loss and gradients (input, weight and bias of the grouped convolution, through the
    1x1 convolution before it) against torch.nn.Conv2d(groups=...) in float64, within ten times
    torch's own float32 error (or 1e-5)."""
    torch = pytest.importorskip("torch")
    n, (c, h, w), conv = _grouped(geometry)
    out_shape = conv.output_shape((c, h, w))
    layers = [L.Conv2D(c, c, 1), L.Tanh(), conv, L.ReLU6(), L.Flatten(), L.Dense(int(np.prod(out_shape)), 3)]
    model = clnet.Sequential(layers, device=device, seed=4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(c, c, 1), torch.nn.Tanh(),
        torch.nn.Conv2d(c, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                        conv.groups), torch.nn.ReLU6(), torch.nn.Flatten(), torch.nn.Linear(int(np.prod(out_shape)), 3))
    net.load_state_dict({key: torch.as_tensor(value) for key, value in model.state_dict().items()})
    rng = np.random.default_rng(5)
    x, y = 3 * rng.normal(size=(n, c, h, w)).astype(np.float32), rng.integers(0, 3, n)

    def torch_run(dtype):
        twin = copy.deepcopy(net).to(dtype)
        logits = twin(torch.from_numpy(x).to(dtype))
        loss_value = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
        loss_value.backward()
        return (logits.detach().double().numpy(), loss_value.item(),
                {key: p.grad.double().numpy() for key, p in twin.named_parameters()})

    exact, single = torch_run(torch.float64), torch_run(torch.float32)
    model.compile("mean_squared_error")  # predict returns the raw outputs
    outputs = [model.predict(x)]
    model.compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    outputs.append(model.train_on_batch(x, y))
    outputs.append(model.gradients())
    for what, got, want, float32 in zip(("outputs", "loss"), outputs, exact, single):
        error = np.abs(np.asarray(float32) - want).max() / np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=max(1e-5, 10 * error), atol=1e-6, err_msg=what)
    for key, want in exact[2].items():
        scale = np.abs(want).max()
        tolerance = max(1e-5, 10 * np.abs(single[2][key] - want).max() / scale)
        assert np.abs(outputs[2][key] - want).max() <= tolerance * scale, key


def test_groups_are_checked_and_kept(device, tmp_path):
    """groups must divide both channel counts (a one-line error); the weight is (out, in / groups,
    kh, kw) with PyTorch's fan_in; the layer's config, repr, FLOPs and model files keep it, and a
    file written before groups existed still loads."""
    for args in ((6, 8, 3), (8, 6, 3)):
        with pytest.raises(ValueError, match=r"groups=4 must divide both in_channels .* and out_channels"):
            L.Conv2D(*args, groups=4)
    for groups in (0, 1.5, True):
        with pytest.raises(ValueError, match="positive int"):
            L.Conv2D(4, 4, 3, groups=groups)
    conv = L.Conv2D(8, 16, 3, padding=1, groups=8, bias=False, init="torch")
    assert repr(conv) == "Conv2D(8, 16, 3, padding=(1, 1), groups=8, bias=False)"
    assert repr(L.Conv2D(8, 16, 3)) == "Conv2D(8, 16, 3)"
    assert L.Conv2D(**conv.config()).config() == conv.config() and conv.config()["groups"] == 8
    assert conv.flops((8, 10, 10)) == 2 * 16 * 9 * 100
    model = clnet.Sequential([conv, L.ReLU(), L.Conv2D(16, 4, 1, groups=2)], device=device, seed=0)
    state = model.state_dict()
    assert state["0.weight"].shape == (16, 1, 3, 3) and state["2.weight"].shape == (4, 8, 1, 1)
    assert np.abs(state["0.weight"]).max() == pytest.approx(1 / 3, rel=0.05)  # torch: 1 / sqrt(1 * 3 * 3)
    model.save(tmp_path / "grouped.clnet")
    loaded = clnet.load(tmp_path / "grouped.clnet", device=device)
    assert [layer.config() for layer in loaded.layers] == [layer.config() for layer in model.layers]
    old = L.Conv2D(3, 4, 3).config()
    del old["groups"]  # a model file written before groups existed
    assert L.Conv2D(**old).groups == 1
