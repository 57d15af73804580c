"""The GPU family's direct 3x3 convolution (ops/direct.py, conv_direct.cl): the forward pass and the
input gradient against float64 references on odd sizes, paddings and channel counts, the choice in
ops.conv, a network's gradients by finite differences, and resnet20 against its PyTorch twin."""

import pytest

from clnet import layers as L
from clnet.ops import conv as conv_ops
from clnet.ops.conv import ConvGeometry

from conftest import SlotPlan
from test_winograd import check_forward, check_gradients_by_finite_differences, check_input_grad

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


def _one_launch(channels, size):
    return ["conv3x3_direct"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(tiled, case):
    check_forward(tiled, case, _one_launch, ATOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_input_grad_matches_reference(tiled, case):
    check_input_grad(tiled, case, _one_launch, ATOL)


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
    assert conv_ops.direct_conv(plan, ConvGeometry(16, 8, 8, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1, 1), 16)  # the default
    with pytest.raises(ValueError, match="CLNET_DIRECT_CONV must be 0 or 1, not 'on'"):
        chosen("on")
    monkeypatch.setattr(device, "family", "cpu")
    assert not chosen("1")


def test_gradients_match_finite_differences(tiled):
    check_gradients_by_finite_differences(tiled)


def test_cifar_resnet_matches_its_torch_twin(tiled):
    resnets = pytest.importorskip("test_resnets")
    resnets.test_cifar_resnet_matches_its_torch_twin(tiled, "tiled", "resnet20", 3)
