"""The GPU family's direct 3x3 convolution (ops/direct.py, conv_direct.cl): the forward pass and the
input gradient against float64 references on odd sizes, paddings and channel counts, the choice in
ops.conv, and a network's gradients by finite differences."""

import numpy as np
import pytest

from clnet import layers as L
from clnet.ops import conv as conv_ops
from clnet.ops.conv import ConvGeometry

from conftest import Slot, SlotPlan, execute
from test_conv import _assert_step_matches_finite_differences
from test_winograd import _input_grad_reference

CASES = [  # (batch, in, height, width, out, padding, bias, activation)
    (1, 3, 5, 7, 4, 1, True, L.ReLU()),            # odd sizes: one work-group, its tile cut
    (3, 5, 6, 9, 7, 0, False, None),               # no padding: 4 x 7 outputs
    (2, 16, 32, 32, 16, 1, False, None),           # resnet20's first stage: 32 columns a work-group
    (2, 12, 17, 18, 9, 2, True, L.Tanh()),         # padding 2; channels in chunks of 8 and 4; rows cut
    (2, 32, 16, 16, 32, 1, True, L.LeakyReLU(0.1)),  # the most channels: 16 columns a work-group
    (2, 2, 1, 1, 3, 1, True, L.ReLU()),            # one pixel
]
IDS = [f"c{i}" for i in range(len(CASES))]
ATOL = 1e-6  # of the largest |value| expected: sums of at most 288 products in float32


@pytest.fixture
def tiled(device, monkeypatch):
    """The test's device with the GPU family's kernels and the direct convolution where it fits."""
    monkeypatch.setattr(device, "family", "tiled")
    monkeypatch.setenv("CLNET_DIRECT_CONV", "1")
    monkeypatch.setenv("CLNET_WINOGRAD", "0")
    return device


def _operands(case):
    n, c, h, w, o, p, bias = case[:7]
    conv = L.Conv2D(c, o, 3, padding=p, bias=bias)
    rng = np.random.default_rng(c * o)
    params = {key: value.astype(np.float64) for key, value in conv.init_params(rng).items()}
    return n, conv, conv.geometry((c, h, w)), params, rng.normal(size=(n, c, h, w))


def _kernels(plan):
    return [launch.kernel.function_name for launch in plan.launches]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(tiled, case):
    n, conv, g, params, x = _operands(case)
    act = case[7]
    plan = SlotPlan(tiled)
    s_x, s_w = Slot(tiled, x, 5), Slot(tiled, params["weight"].reshape(conv.out_channels, -1), 7)
    s_b = Slot(tiled, params["bias"], 3) if conv.bias else None
    s_y = Slot.output(tiled, (n, conv.out_channels, g.OH, g.OW), 9)
    conv_ops.forward(plan, g, n, s_x.tensor, s_w.tensor, s_y.tensor, s_b and s_b.tensor, act and act.kernel_options())
    assert _kernels(plan) == ["conv3x3_direct"]
    execute(plan)
    expected = conv.reference(params, x)
    expected = act.reference({}, expected) if act else expected
    np.testing.assert_allclose(s_y.read(), expected, rtol=0, atol=ATOL * np.abs(expected).max())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_input_grad_matches_reference(tiled, case):
    n, conv, g, params, _ = _operands(case)
    o = conv.out_channels
    dy = np.random.default_rng(1).normal(size=(n, o, g.OH, g.OW))
    plan = SlotPlan(tiled)
    s_w = Slot(tiled, params["weight"].reshape(o, -1), 7)
    s_dy = Slot(tiled, dy, 11)  # the GPU family's dpre: dY's NCHW layout
    s_dx = Slot.output(tiled, (n, g.C, g.H, g.W), 5)
    conv_ops.input_grad(plan, g, n, s_w.tensor, s_dy.tensor, s_dx.tensor)
    assert _kernels(plan) == ["conv3x3_direct"]
    execute(plan)
    expected = _input_grad_reference(params["weight"], dy, g.ph, (n, g.C, g.H, g.W))
    np.testing.assert_allclose(s_dx.read(), expected, rtol=0, atol=ATOL * np.abs(expected).max())


def test_the_choice_follows_the_geometry_the_family_and_clnet_direct_conv(device, monkeypatch):
    plan = SlotPlan(device)
    monkeypatch.setattr(device, "family", "tiled")

    def chosen(mode, c=16, o=16, kernel=3, stride=1, dilation=1, groups=1, padding=1):
        monkeypatch.setenv("CLNET_DIRECT_CONV", mode)
        size = 8 + 2 * padding - dilation * (kernel - 1)
        g = ConvGeometry(c, 8, 8, kernel, kernel, size, size, stride, stride, padding, padding, dilation, dilation,
                         groups)
        return conv_ops.direct_conv(plan, g, o)

    assert chosen("1") and not chosen("0") and chosen("1", c=32, o=32) and chosen("1", padding=2)
    assert not any(chosen("1", **other) for other in
                   ({"c": 33}, {"o": 33}, {"kernel": 5}, {"stride": 2}, {"dilation": 2}, {"groups": 2},
                    {"padding": 3}))
    monkeypatch.delenv("CLNET_DIRECT_CONV")
    assert not conv_ops.direct_conv(plan, ConvGeometry(16, 8, 8, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1, 1), 16)  # off
    with pytest.raises(ValueError, match="CLNET_DIRECT_CONV must be 0 or 1, not 'on'"):
        chosen("on")
    monkeypatch.setattr(device, "family", "cpu")
    assert not chosen("1")


def test_gradients_match_finite_differences(tiled):
    """Direct forward passes with padding 1 and 0, and their input gradients (paddings 1 and 2),
    between a 1x1 convolution and a dense classifier, on 5 x 7 images."""
    layers = [L.Conv2D(2, 3, 1), L.Tanh(), L.Conv2D(3, 4, 3, padding=1), L.ReLU(), L.Conv2D(4, 3, 3, bias=False),
              L.Sigmoid(), L.Flatten(), L.Dense(3 * 3 * 5, 3)]
    _assert_step_matches_finite_differences(tiled, layers, (2, 2, 5, 7))


def test_cifar_resnet_matches_its_torch_twin(tiled):
    resnets = pytest.importorskip("test_resnets")
    resnets.test_cifar_resnet_matches_its_torch_twin(tiled, "tiled", "resnet20", 3)
