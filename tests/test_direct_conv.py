"""The direct 3x3 convolutions (ops/direct.py): the GPU family's (conv_direct.cl) and the CPU
family's (conv_rows.cl), each one's forward pass and input gradient against float64 references on
odd sizes, paddings and channel counts, the choice in ops.conv, a network's gradients by finite
differences, and resnet20 against its PyTorch twin."""

import pytest

from clnet import layers as L
from clnet.ops import conv as conv_ops
from clnet.ops import direct
from clnet.ops.conv import ConvGeometry

from conftest import SlotPlan
from test_winograd import check_forward, check_gradients_by_finite_differences, check_input_grad

CASES = {  # (batch, in, height, width, out, padding, bias, activation) of each family
    "tiled": [
        (1, 3, 5, 7, 4, 1, True, L.ReLU()),            # odd sizes: one work-group, its tile cut
        (3, 5, 6, 9, 7, 0, False, None),               # no padding: 4 x 7 outputs
        (2, 16, 32, 32, 16, 1, False, None),           # resnet20's first stage: 32 columns a work-group
        (2, 12, 17, 18, 9, 2, True, L.Tanh()),         # padding 2; channels in chunks of 8 and 4; rows cut
        (2, 32, 16, 16, 32, 1, True, L.LeakyReLU(0.1)),  # the most channels: 16 columns a work-group
        (2, 2, 1, 1, 3, 1, True, L.ReLU()),            # one pixel
    ],
    "cpu": [  # up to 16 channels in and out (each pass's outputs), rows of 16 outputs at least
        (2, 16, 32, 32, 16, 1, False, None),           # resnet20's first stage: two whole vectors a row
        (1, 3, 5, 17, 4, 1, True, L.ReLU()),           # a vector and one column
        (3, 5, 6, 19, 7, 0, False, None),              # no padding (the input gradient's: 2)
        (2, 12, 17, 18, 9, 2, True, L.Tanh()),         # padding 2: 20 columns
        (2, 4, 6, 16, 5, 2, True, None),               # rows of 16 inputs, 18 outputs
        (2, 13, 16, 16, 15, 1, True, L.LeakyReLU(0.1)),  # one vector a row
    ],
}
ATOL = 1e-6  # of the largest |value| expected: sums of at most 288 products in float32
KERNEL = {"tiled": "conv3x3_direct", "cpu": "conv3x3_rows"}


@pytest.fixture(params=["tiled", "cpu"])
def family(device, monkeypatch, request):
    """The test's device with the family's kernels and the direct convolution where it fits."""
    monkeypatch.setattr(device, "family", request.param)
    monkeypatch.setenv("CLNET_DIRECT_CONV", "1")
    monkeypatch.setenv("CLNET_WINOGRAD", "0")
    return device


def _one_launch(family):
    return lambda channels, size: [KERNEL[family]]


def _cases(family, *extra, suffix=""):
    return [pytest.param(family, case, *extra, id=f"{family}-c{i}{suffix}") for i, case in enumerate(CASES[family])]


FAMILY_CASES = _cases("tiled") + _cases("cpu")
# the input gradient from dY itself, and on the CPU family from dY transposed too (as
# `pre_activation_grad` leaves it there before an activation or a bias)
INPUT_GRAD_CASES = _cases("tiled", False) + _cases("cpu", False) + _cases("cpu", True, suffix="-transposed")


@pytest.mark.parametrize("family, case", FAMILY_CASES, indirect=["family"])
def test_forward_matches_reference(family, case):
    check_forward(family, case, _one_launch(family.family), ATOL)


@pytest.mark.parametrize("family, case, transposed", INPUT_GRAD_CASES, indirect=["family"])
def test_input_grad_matches_reference(family, case, transposed):
    check_input_grad(family, case, _one_launch(family.family), ATOL, transposed)


def test_the_choice_follows_the_geometry_the_family_and_clnet_direct_conv(device, monkeypatch):
    plan = SlotPlan(device)
    monkeypatch.setattr(device, "family", "tiled")

    def chosen(mode, c=16, o=16, kernel=3, stride=1, dilation=1, groups=1, padding=1, width=8):
        monkeypatch.setenv("CLNET_DIRECT_CONV", mode)
        size, columns = (side + 2 * padding - dilation * (kernel - 1) for side in (8, width))
        g = ConvGeometry(c, 8, width, kernel, kernel, size, columns, stride, stride, padding, padding, dilation,
                         dilation, groups)
        return conv_ops.direct_conv(plan, g, o)

    assert chosen("1") and not chosen("0") and chosen("1", c=32, o=32) and chosen("1", padding=2)
    assert not any(chosen("1", **other) for other in
                   ({"c": 33}, {"o": 33}, {"kernel": 5}, {"stride": 2}, {"dilation": 2}, {"groups": 2},
                    {"padding": 3}))
    monkeypatch.delenv("CLNET_DIRECT_CONV")
    assert conv_ops.direct_conv(plan, ConvGeometry(16, 8, 8, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1, 1), 16)  # the default
    with pytest.raises(ValueError, match="CLNET_DIRECT_CONV must be 0 or 1, not 'on'"):
        chosen("on")
    monkeypatch.setattr(device, "family", "cpu")  # up to 16 outputs, in rows of 16 at least
    assert not chosen("1") and chosen("1", width=16) and chosen("1", width=14, padding=2)
    assert chosen("1", width=16, c=32) and not chosen("1", width=16, c=33) and not chosen("1", width=16, o=17)
    assert not chosen("1", width=15) and not chosen("0", width=16)


def test_gradients_match_finite_differences(family, monkeypatch):
    """Both 3x3 layers (on the CPU family on rows of 18) run their forward pass and their input
    gradient on the direct kernel; their weight gradients are GEMMs."""
    passes = []
    launch = direct._launch
    monkeypatch.setattr(direct, "_launch", lambda *args, **kw: passes.append(kw["flip"]) or launch(*args, **kw))
    check_gradients_by_finite_differences(family, width=7 if family.family == "tiled" else 18)
    assert sorted(passes) == [False, False, True, True]


def test_cifar_resnet_matches_its_torch_twin(family):
    resnets = pytest.importorskip("test_resnets")
    resnets.test_cifar_resnet_matches_its_torch_twin(family, family.family, "resnet20", 3)
