"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (ops/winograd.py, winograd.cl): the forward pass and the
input gradient against float64 references on odd sizes and offsets, the choice in ops.conv, a
network's gradients by finite differences, a ResNet against its PyTorch twin with every 3x3
stride-1 layer on it, and the transformed operands in the plan. (The whole of test_conv.py and
test_resnets.py runs on Winograd with CLNET_WINOGRAD=all CLNET_GEMM=tiled.)"""

import dataclasses
import os
import re

import numpy as np
import pytest

import clnet
from clnet import layers as L
from clnet.compiler import Target
from clnet.datasets.feed import InputSpec
from clnet.errors import OutOfDeviceMemoryError
from clnet.ops import conv as conv_ops
from clnet.ops import winograd
from clnet.ops.conv import ConvGeometry

from conftest import Slot, SlotPlan, execute
from test_conv import _assert_step_matches_finite_differences

WINOGRAD_LAUNCHES = ["winograd_weights", "winograd_input", "gemm_tiled", "winograd_output"]

CASES = [  # (batch, in, height, width, out, padding, bias, activation, images per chunk)
    (1, 3, 5, 7, 4, 1, True, L.ReLU(), 1),            # batch 1, odd sizes: cut tiles at the bottom and right
    (3, 5, 6, 9, 7, 0, False, None, 2),               # no padding: 4 x 7 outputs; chunks of 2 and 1 images
    (2, 4, 1, 1, 3, 1, True, L.LeakyReLU(0.1), 2),    # one pixel, one cut tile
    (2, 6, 8, 8, 5, 2, True, L.Tanh(), 2),            # padding 2: the input gradient's of padding 0
    (2, 33, 9, 10, 35, 1, True, L.ReLU(), 1),         # channels beyond the GEMM's tiles; a chunk per image
]
IDS = [f"c{i}" for i in range(len(CASES))]
# the errors allowed, of the largest |value| expected, by the output tile's side: measured on PoCL
# at most 2.3e-7 in these cases with F(2x2) (the implicit GEMMs' 3.7e-7; at 256 channels 7e-7
# against their 2e-6: Winograd's sums over the channels are 9x shorter), 3.7e-6 with F(4x4) (1.4e-5
# at 256 channels)
ATOL = {2: 1e-6, 4: 1e-5}


@pytest.fixture(params=[2, 4], ids=["F2", "F4"])
def tiled(device, monkeypatch, request):
    """The test's device with the GPU family's kernels and Winograd F(2x2, 3x3), then F(4x4, 3x3),
    on every layer it can run."""
    monkeypatch.setattr(device, "family", "tiled")
    monkeypatch.setenv("CLNET_WINOGRAD", "all")
    monkeypatch.setenv("CLNET_WINOGRAD_TILE", str(request.param))
    return device


def _operands(case):
    n, c, h, w, o, p, bias = case[:7]
    conv = L.Conv2D(c, o, 3, padding=p, bias=bias)
    rng = np.random.default_rng(c * o)
    params = {key: value.astype(np.float64) for key, value in conv.init_params(rng).items()}
    return n, conv, conv.geometry((c, h, w)), params, rng.normal(size=(n, c, h, w))


def _tile():
    return int(os.environ["CLNET_WINOGRAD_TILE"])


def _kernels(plan):
    return [launch.kernel.function_name for launch in plan.launches]


def _in_chunks(monkeypatch, case, channels, size):
    """Let CHUNK hold the case's images per chunk of a convolution of `channels` at most to `size`
    outputs; the launches it then records."""
    n, per, m = case[0], case[-1], _tile()
    monkeypatch.setattr(winograd, "CHUNK", per * (m + 2) ** 2 * channels * -(-size[0] // m) * -(-size[1] // m))
    return WINOGRAD_LAUNCHES[:1] + WINOGRAD_LAUNCHES[1:] * -(-n // per)


def _input_grad_reference(weight, dy, padding, shape):
    """dx (float64) of a 3x3 stride-1 convolution with this padding: each tap's share of dy, added
    at the inputs that the tap read."""
    n, c, h, w = shape
    oh, ow = dy.shape[2:]
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    for kh in range(3):
        for kw in range(3):
            padded[:, :, kh:kh + oh, kw:kw + ow] += np.einsum("nohw,oc->nchw", dy, weight[:, :, kh, kw])
    return padded[:, :, padding:padding + h, padding:padding + w]


def check_forward(device, case, launches, atol):
    """A 3x3 convolution's forward pass on the device's family against its float64 reference: the
    kernels `launches` (given the case's channels and output size), errors within `atol` of the
    largest |value|."""
    n, conv, g, params, x = _operands(case)
    act = case[7]
    plan = SlotPlan(device)
    s_x, s_w = Slot(device, x, 5), Slot(device, params["weight"].reshape(conv.out_channels, -1), 7)
    s_b = Slot(device, params["bias"], 3) if conv.bias else None
    s_y = Slot.output(device, (n, conv.out_channels, g.OH, g.OW), 9)
    expected_launches = launches(max(g.C, conv.out_channels), (g.OH, g.OW))
    conv_ops.forward(plan, g, n, s_x.tensor, s_w.tensor, s_y.tensor, s_b and s_b.tensor,
                     act and act.kernel_options())
    assert _kernels(plan) == expected_launches
    execute(plan)
    expected = conv.reference(params, x)
    expected = act.reference({}, expected) if act else expected
    np.testing.assert_allclose(s_y.read(), expected, rtol=0, atol=atol * np.abs(expected).max())


def check_input_grad(device, case, launches, atol, transposed=False):
    """Likewise the input gradient, from dY as `pre_activation_grad` leaves it: NCHW, or with
    `transposed` (the CPU family's, where it transposes) (O, batch * OH * OW)."""
    n, conv, g, params, _ = _operands(case)
    o = conv.out_channels
    dy = np.random.default_rng(1).normal(size=(n, o, g.OH, g.OW))
    plan = SlotPlan(device)
    s_w = Slot(device, params["weight"].reshape(o, -1), 7)
    s_dy = Slot(device, dy.transpose(1, 0, 2, 3).reshape(o, -1) if transposed else dy, 11)
    s_dx = Slot.output(device, (n, g.C, g.H, g.W), 5)
    expected_launches = launches(max(g.C, o), (g.H, g.W))
    conv_ops.input_grad(plan, g, n, s_w.tensor, s_dy.tensor, s_dx.tensor)
    assert _kernels(plan) == expected_launches
    execute(plan)
    expected = _input_grad_reference(params["weight"], dy, g.ph, (n, g.C, g.H, g.W))
    np.testing.assert_allclose(s_dx.read(), expected, rtol=0, atol=atol * np.abs(expected).max())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(tiled, monkeypatch, case):
    check_forward(tiled, case, lambda channels, size: _in_chunks(monkeypatch, case, channels, size), ATOL[_tile()])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_input_grad_matches_reference(tiled, monkeypatch, case):
    check_input_grad(tiled, case, lambda channels, size: _in_chunks(monkeypatch, case, channels, size), ATOL[_tile()])


def test_the_choice_follows_the_geometry_the_family_and_clnet_winograd(device, monkeypatch):
    plan = SlotPlan(device)
    monkeypatch.setattr(device, "family", "tiled")
    monkeypatch.delenv("CLNET_WINOGRAD_TILE", raising=False)

    wide = conv_ops.WINOGRAD_CHANNELS

    def chosen(mode, c=wide, o=wide, kernel=3, stride=1, dilation=1, groups=1):
        monkeypatch.setenv("CLNET_WINOGRAD", mode)
        size = 8 - dilation * (kernel - 1)
        g = ConvGeometry(c, 8, 8, kernel, kernel, size, size, stride, stride, 0, 0, dilation, dilation, groups)
        return conv_ops.winograd_tile(plan, g, o)

    assert chosen("1") == chosen("all") == 2 and chosen("0") is None
    assert not chosen("1", c=wide - 1) and not chosen("1", o=wide - 1) and chosen("all", c=1, o=1)
    assert not any(chosen("all", **other) for other in
                   ({"kernel": 5}, {"kernel": 1}, {"stride": 2}, {"dilation": 2}, {"groups": 2}))
    with pytest.raises(ValueError, match="CLNET_WINOGRAD must be 0, 1 or all, not 'on'"):
        chosen("on")
    for default in (False, True):  # unset: as "1" where WINOGRAD is on, else as "0"
        monkeypatch.setattr(conv_ops, "WINOGRAD", default)
        assert chosen("") == (2 if default else None)
    monkeypatch.setenv("CLNET_WINOGRAD_TILE", "4")
    assert chosen("1") == 4
    monkeypatch.setenv("CLNET_WINOGRAD_TILE", "3")
    with pytest.raises(ValueError, match="CLNET_WINOGRAD_TILE must be 2 or 4, not '3'"):
        chosen("1")
    monkeypatch.delenv("CLNET_WINOGRAD_TILE")
    monkeypatch.setattr(device, "family", "cpu")
    assert chosen("all") is None


def test_padding_beyond_the_kernel_keeps_the_implicit_input_gradient(tiled):
    """Padding 3: the input gradient is no convolution of dY (its padding would be -1); the forward
    pass still runs Winograd."""
    g = L.Conv2D(2, 3, 3, padding=3).geometry((2, 5, 5))
    plan = SlotPlan(tiled)
    weight, dy = plan.value((3, 18), "weight"), plan.value((3, 2 * g.pixels), "dy")
    conv_ops.input_grad(plan, g, 2, weight, dy, plan.value((2, 2, 5, 5), "dx"))
    assert _kernels(plan) == ["gemm_tiled"]
    conv_ops.forward(plan, g, 2, plan.value((2, 2, 5, 5), "x"), weight, plan.value((2, 3, 9, 9), "y"), None, None)
    assert _kernels(plan)[1:] == WINOGRAD_LAUNCHES


def check_gradients_by_finite_differences(device, width=7):
    """3x3 forward passes with padding 1 and 0, and their input gradients (paddings 1 and 2), between
    a 1x1 convolution and a dense classifier, on images of 5 rows and `width` columns."""
    layers = [L.Conv2D(2, 3, 1), L.Tanh(), L.Conv2D(3, 4, 3, padding=1), L.ReLU(), L.Conv2D(4, 3, 3, bias=False),
              L.Sigmoid(), L.Flatten(), L.Dense(3 * 3 * (width - 2), 3)]
    _assert_step_matches_finite_differences(device, layers, (2, 2, 5, width))


def test_gradients_match_finite_differences(tiled):
    check_gradients_by_finite_differences(tiled)


def test_cifar_resnet_matches_its_torch_twin(tiled):
    resnets = pytest.importorskip("test_resnets")
    resnets.test_cifar_resnet_matches_its_torch_twin(tiled, "tiled", "resnet20", 3)


def test_the_transformed_operands_are_planned_and_counted_in_what_fits(tiled, monkeypatch):
    """U, V and M are plan values: the arena holds them (V and M, (n^2, 32, tiles), live together),
    and a device too small for a batch names one that fits."""
    shape = (32, 15, 15)
    model = clnet.Sequential([L.Conv2D(32, 32, 3, padding=1), L.ReLU(), L.Conv2D(32, 32, 3, padding=1),
                              L.Flatten()], device=tiled).compile("cross_entropy", "sgd")

    def arena(mode, batch, training):
        monkeypatch.setenv("CLNET_WINOGRAD", mode)
        target = Target(batch, shape, training, "<i4" if training else None, InputSpec("uint8"))
        return model._compile(target, allocate=False).plan.place()

    m = _tile()
    elements, tiles = (m + 2) ** 2, 4 * -(-15 // m) ** 2
    assert arena("all", 4, True) >= 2 * elements * 32 * tiles and arena("all", 4, True) > arena("0", 4, True)
    room = arena("all", 16, False) * 4 + 16 * 32 * 15 * 15 * 2  # and two uint8 staging slots
    params = 4 * model.param_store.params.nbytes
    monkeypatch.setattr(tiled, "info", dataclasses.replace(tiled.info, global_mem=params + room))
    with pytest.raises(OutOfDeviceMemoryError, match="use a batch size of") as error:
        model.check_fits(shape, batch_size=64)
    fits = int(re.search(r"use a batch size of (\d+)", str(error.value))[1])
    assert 8 <= fits < 16
    model.check_fits(shape, batch_size=fits)
