"""The VGG and MobileNetV2 presets against torchvision's twins: each loads torchvision's state_dict
(num_classes=10), has a node of the same name and kind for every module of torchvision's, and gives
the same outputs in evaluation and the same loss, gradients and running statistics in a training
step; each also plans its summary.

Dropout draws its masks from clnet's generator and torch's: the training steps compare both
networks with every Dropout at p = 0 (the masks are test_norm_dropout.py's concern). VGG's
classifier starts with a 25088 x 4096 Dense layer whatever the image size (100M parameters), so
the training step is compared on vgg11_bn only, at 32x32 (a 1x1 feature map that the adaptive pool
repeats 7x7) and batch 2, its evaluation also at 64x64 (a 2x2 map averaged into overlapping bins);
vgg16_bn, the same builder with more convolutions, by structure, weights and evaluation outputs.
MobileNetV2 (2.2M parameters) runs both: with the CIFAR stem at 32x32 and torchvision's at 64x64.
"""

import io

import numpy as np
import pytest

from clnet import layers as L
from clnet import models

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

from twin_comparison import CLASSES, assert_same_outputs, assert_twins, with_random_batchnorm  # noqa: E402

# clnet's layer for each kind of torch module these networks hold
LAYER_OF = {nn.Conv2d: L.Conv2D, nn.BatchNorm2d: L.BatchNorm2D, nn.ReLU: L.ReLU, nn.ReLU6: L.ReLU6,
            nn.MaxPool2d: L.MaxPool2D, nn.AdaptiveAvgPool2d: L.AdaptiveAvgPool2D, nn.Dropout: L.Dropout,
            nn.Linear: L.Dense}
# float32 rounding of MobileNetV2's activations, relative to the largest of their call: torch's own
# float32 drifts from float64 by up to 1.2e-4 before its last ReLU6s at batch 2 (BatchNorm over 8
# values a channel at 2x2), more than the ResNets' 4e-7 (twin_comparison.KINK)
MOBILENET_KINK = 1e-4


def pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def assert_same_modules(model, net):
    """Every module of `net` without children is a node of `model` with its name, of the same kind
    and with the same window: strides, padding, groups, pooling sizes and dropout rates (the
    state_dict checks the shapes of the weights)."""
    nodes = {node.name: node.layer for node in model.network.nodes}
    leaves = [(name, module) for name, module in net.named_modules() if not list(module.children())]
    for name, module in leaves:
        layer = nodes.get(name)
        assert isinstance(layer, LAYER_OF[type(module)]), f"{name}: {module} in torch, {layer!r} in clnet"
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            assert (layer.stride, layer.padding) == (pair(module.stride), pair(module.padding)), name
        if isinstance(module, nn.Conv2d):
            assert layer.groups == module.groups, name
        if isinstance(module, nn.MaxPool2d):
            assert layer.kernel_size == pair(module.kernel_size), name
        if isinstance(module, nn.AdaptiveAvgPool2d):
            assert layer.output_size == pair(module.output_size), name
        if isinstance(module, nn.Dropout):
            assert layer.p == module.p, name


def without_dropout(model, net):
    """`model` and `net` with every Dropout at p = 0: training steps that draw no masks."""
    for layer in model.network.layers:
        if isinstance(layer, L.Dropout):
            layer.p = 0.0
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def torchvision_twin(name, seed):
    """torchvision's network of `name` for 10 classes, its BatchNorm state random."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(num_classes=CLASSES)
    net.load_state_dict({key: torch.as_tensor(value) for key, value in
                         with_random_batchnorm(net.state_dict(), np.random.default_rng(seed)).items()})
    return net


def random_images(size, batch=2):
    return np.random.default_rng(size).normal(size=(batch, 3, size, size)).astype(np.float32)


def test_vgg11_bn_loads_torchvision_weights_and_matches(device):
    net = torchvision_twin("vgg11_bn", 11)
    model = models.vgg11_bn(device=device, input_shape=(3, 32, 32))
    model.load_state_dict(net.state_dict())  # torch tensors, num_batches_tracked int64
    assert model.state_dict()["features.1.num_batches_tracked"] == 7
    assert_same_modules(model, net)
    assert_same_outputs(model, net, random_images(64))  # a 2x2 map averaged into overlapping bins
    without_dropout(model, net)
    assert_twins(model, net, 32)  # a 1x1 map repeated 7x7
    summary = model.summary(batch_size=2, stream=io.StringIO())
    assert "avgpool: AdaptiveAvgPool2D(7)" in summary and "(512, 7, 7)" in summary
    assert "128,812,810 parameters" in summary and "training at batch size 2" in summary


def test_vgg16_bn_loads_torchvision_weights_and_matches_in_evaluation(device):
    net = torchvision_twin("vgg16_bn", 16)
    model = models.vgg16_bn(device=device, input_shape=(3, 32, 32))
    model.load_state_dict(net.state_dict())
    assert_same_modules(model, net)
    assert_same_outputs(model, net, random_images(32))
    summary = model.summary(batch_size=2, stream=io.StringIO())
    assert "features.43: MaxPool2D(2)" in summary and "134,309,962 parameters" in summary


@pytest.mark.parametrize("stem, size", [("cifar", 32), ("imagenet", 64)])
def test_mobilenet_v2_loads_torchvision_weights_and_matches(device, stem, size):
    net = torchvision_twin("mobilenet_v2", size)
    if stem == "cifar":
        net.features[0][0].stride = (1, 1)
    model = models.mobilenet_v2(device=device, input_shape=(3, size, size), stem=stem)
    model.load_state_dict(net.state_dict())
    assert_same_modules(model, net)
    without_dropout(model, net)
    assert_twins(model, net, size, kink=MOBILENET_KINK)
    summary = model.summary(batch_size=2, stream=io.StringIO())
    assert "2,236,682 parameters" in summary and "features.17.add" not in summary  # 160 -> 320 channels
    assert "features.16.add: Add() <- features.15.add, features.16.conv.3" in summary


def test_the_mobilenet_v2_stem_follows_the_image_size(device):
    def first_stride(size, **stem):
        model = models.mobilenet_v2(device=device, input_shape=(3, size, size), **stem)
        return next(node.layer.stride for node in model.network.nodes if node.name == "features.0.0")

    assert first_stride(32) == first_stride(64) == first_stride(224, stem="cifar") == (1, 1)
    assert first_stride(96) == first_stride(32, stem="imagenet") == (2, 2)
    with pytest.raises(ValueError, match="stem"):
        models.mobilenet_v2(device=device, stem="tiny")
