"""Preset networks: ARCHITECTURE.md's reference networks, LeNet-5, ResNets, VGGs and MobileNetV2.

Each takes the per-sample `input_shape` (C, H, W) and the number of classes; the defaults are the
reference ones (28x28 grey images for mlp, mnist-cnn and lenet5, 32x32 RGB for cifar-cnn and the
CIFAR ResNets, 224x224 RGB for the torchvision networks, 10 classes). The first Dense layer of the
others is sized for the input; the ResNets and MobileNetV2 pool globally and the VGGs
adaptively, so any image size works (at least 32 pixels a side for the VGGs). `device` and `seed`
are those of `clnet.Model` (a list of devices makes replicas). `PRESETS` names them as clnet-train does.

The torchvision networks (ResNets, VGGs, MobileNetV2) are functional graphs (`clnet.Model`) whose
nodes carry torchvision's module names ("conv1", "layer1.0.bn2", "layer2.0.downsample.0", "fc",
"features.0", "features.2.conv.1.0", "classifier.6", ...), so their state_dict keys and shapes
are those of torchvision's `resnet18()`, `vgg11_bn()`, `mobilenet_v2()` and their relatives;
convolutions start He-uniform, and have no bias before a BatchNorm where torchvision's have none.

Example:
    >>> model = clnet.models.lenet5(seed=1)
    >>> model.compile("cross_entropy", "adam").fit(x, y, epochs=5)
    >>> clnet.models.cifar_cnn(input_shape=(3, 64, 64), classes=100)   # Dense 16384->512 first
    >>> clnet.models.PRESETS["mnist-cnn"](device=clnet.device(device="cpu"))
    >>> clnet.models.mlp(device=[clnet.device(device=0), clnet.device(device=1)])   # two replicas
    >>> net = clnet.models.resnet18(input_shape=(3, 32, 32))            # the CIFAR stem, chosen by size
    >>> net.load_state_dict(torchvision.models.resnet18(num_classes=10).state_dict())
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from .device import Device
from .layers import (AdaptiveAvgPool2D, Add, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, Input,
                     MaxPool2D, ReLU, ReLU6)
from .model import Model, Sequential


def _flat(features, input_shape):
    """The number of values the convolutional part turns one input into."""
    shape = tuple(input_shape)
    for layer in features:
        shape = layer.output_shape(shape)
    return prod(shape)


def _classifier(features, input_shape, hidden, classes, device, seed):
    head, width = [Flatten()], _flat(features, input_shape)
    for units in hidden:
        head += [Dense(width, units), ReLU()]
        width = units
    return Sequential(features + head + [Dense(width, classes)], device=device, seed=seed)


def mlp(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (1, 28, 28),
        classes: int = 10) -> Sequential:
    """Flatten, Dense 784->256, ReLU, Dense 256->128, ReLU, Dense 128->10."""
    return _classifier([], input_shape, (256, 128), classes, device, seed)


def mnist_cnn(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (1, 28, 28),
              classes: int = 10) -> Sequential:
    """PyTorch's MNIST example without dropout: Conv2D 1->32 k3, ReLU, Conv2D 32->64 k3, ReLU,
    MaxPool 2, Flatten, Dense 9216->128, ReLU, Dense 128->10."""
    c = input_shape[0]
    features = [Conv2D(c, 32, 3), ReLU(), Conv2D(32, 64, 3), ReLU(), MaxPool2D(2)]
    return _classifier(features, input_shape, (128,), classes, device, seed)


def cifar_cnn(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 32, 32),
              classes: int = 10) -> Sequential:
    """Two blocks of two 3x3 convolutions (32, then 64 channels, padding 1) with ReLU and a 2x2
    max-pool, then Dense 4096->512, ReLU, Dense 512->10."""
    c = input_shape[0]
    features = [Conv2D(c, 32, 3, padding=1), ReLU(), Conv2D(32, 32, 3, padding=1), ReLU(), MaxPool2D(2),
                Conv2D(32, 64, 3, padding=1), ReLU(), Conv2D(64, 64, 3, padding=1), ReLU(), MaxPool2D(2)]
    return _classifier(features, input_shape, (512,), classes, device, seed)


def lenet5(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (1, 28, 28),
           classes: int = 10) -> Sequential:
    """LeNet-5 with ReLU and max-pooling: Conv2D 1->6 k5 p2, pool, Conv2D 6->16 k5, pool, Dense
    400->120->84->10."""
    c = input_shape[0]
    features = [Conv2D(c, 6, 5, padding=2), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5), ReLU(), MaxPool2D(2)]
    return _classifier(features, input_shape, (120, 84), classes, device, seed)


def _conv_bn(x, in_channels, out_channels, kernel, stride, conv_name, bn_name):
    """A convolution padded to keep the size at stride 1, and its BatchNorm; no bias, as the
    BatchNorm's shift takes its place."""
    conv = Conv2D(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False, init="he")
    x = conv(x, name=conv_name)
    return BatchNorm2D(out_channels)(x, name=bn_name)


def _residual_block(x, in_channels, width, stride, bottleneck, name):
    """torchvision's BasicBlock (3x3, 3x3 convolutions of `width` channels) or Bottleneck (1x1 of
    `width`, 3x3 of `width` with the stride, 1x1 of 4 `width`), each convolution with a BatchNorm,
    added to the input, then ReLU. Where the shape changes the input passes through a projection,
    a strided 1x1 convolution and BatchNorm ("downsample"). Returns the output and its channels."""
    if bottleneck:
        kernels, strides, widths = (1, 3, 1), (1, stride, 1), (width, width, 4 * width)
    else:
        kernels, strides, widths = (3, 3), (stride, 1), (width, width)
    h, channels = x, in_channels
    for i, (kernel, step, out_channels) in enumerate(zip(kernels, strides, widths), 1):
        if i > 1:
            h = ReLU()(h, name=f"{name}.relu{i - 1}")
        h = _conv_bn(h, channels, out_channels, kernel, step, f"{name}.conv{i}", f"{name}.bn{i}")
        channels = out_channels
    shortcut = x
    if stride != 1 or in_channels != channels:
        shortcut = _conv_bn(x, in_channels, channels, 1, stride, f"{name}.downsample.0", f"{name}.downsample.1")
    return ReLU()(Add()([h, shortcut], name=f"{name}.add"), name=f"{name}.relu{len(kernels)}"), channels


def _resnet(stem, blocks, widths, bottleneck, input_shape, classes, device, seed):
    """A ResNet named as torchvision's: the stem ("imagenet": conv1 7x7 stride 2 to 64 channels,
    bn1, relu, maxpool 3x3 stride 2 padding 1; "cifar": conv1 3x3 stride 1 to widths[0], bn1,
    relu), then stages layer1, layer2, ... of `blocks[i]` residual blocks of `widths[i]`, the first
    of each stage after the first with stride 2, then avgpool (global), flatten and fc."""
    x = Input(input_shape)
    if stem == "imagenet":
        h = ReLU()(_conv_bn(x, input_shape[0], 64, 7, 2, "conv1", "bn1"), name="relu")
        h, channels = MaxPool2D(3, 2, padding=1)(h, name="maxpool"), 64
    else:
        h = ReLU()(_conv_bn(x, input_shape[0], widths[0], 3, 1, "conv1", "bn1"), name="relu")
        channels = widths[0]
    for stage, (count, width) in enumerate(zip(blocks, widths)):
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            h, channels = _residual_block(h, channels, width, stride, bottleneck, f"layer{stage + 1}.{block}")
    h = Flatten()(GlobalAvgPool2D()(h, name="avgpool"), name="flatten")
    return Model(x, Dense(channels, classes)(h, name="fc"), device=device, seed=seed)


def _cifar_resnet(n, input_shape, classes, device, seed):
    return _resnet("cifar", (n, n, n), (16, 32, 64), False, input_shape, classes, device, seed)


def resnet20(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 32, 32),
             classes: int = 10) -> Model:
    """The CIFAR ResNet-20 of He et al. (2016): a 3x3 convolution to 16 channels, BatchNorm and
    ReLU; three stages of 3 basic blocks (two 3x3 convolutions with BatchNorm) of 16, 32 and 64
    channels, the second and third starting with stride 2; global average pooling; Dense 64->10.
    Where a block changes the shape, its shortcut is a projection (1x1 convolution with stride 2
    and BatchNorm, the paper's option B), elsewhere the identity. 0.27M parameters."""
    return _cifar_resnet(3, input_shape, classes, device, seed)


def resnet32(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 32, 32),
             classes: int = 10) -> Model:
    """The CIFAR ResNet-32 of He et al. (2016): resnet20 with 5 blocks per stage. 0.47M parameters."""
    return _cifar_resnet(5, input_shape, classes, device, seed)


def resnet56(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 32, 32),
             classes: int = 10) -> Model:
    """The CIFAR ResNet-56 of He et al. (2016): resnet20 with 9 blocks per stage. 0.86M parameters."""
    return _cifar_resnet(9, input_shape, classes, device, seed)


def _choose_stem(stem, input_shape):
    """ "imagenet" or "cifar"; "auto" chooses "cifar" for images of at most 64 pixels a side."""
    if stem == "auto":
        stem = "cifar" if max(input_shape[1:]) <= 64 else "imagenet"
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f'stem must be "auto", "imagenet" or "cifar", not {stem!r}')
    return stem


def _imagenet_resnet(blocks, bottleneck, input_shape, classes, stem, device, seed):
    stem = _choose_stem(stem, input_shape)
    return _resnet(stem, blocks, (64, 128, 256, 512), bottleneck, input_shape, classes, device, seed)


def resnet18(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 224, 224),
             classes: int = 10, stem: str = "auto") -> Model:
    """torchvision's ResNet-18: the stem, four stages of 2 basic blocks (two 3x3 convolutions with
    BatchNorm) of 64, 128, 256 and 512 channels, each stage after the first starting with stride 2
    and a projection shortcut (1x1 convolution with stride 2 and BatchNorm), global average
    pooling, Dense 512->classes. 11.2M parameters for 10 classes. The state_dict is
    torchvision.models.resnet18(num_classes=classes)'s: keys, shapes and layouts.

    Args:
        stem: "imagenet" (torchvision's: a 7x7 convolution with stride 2, BatchNorm, ReLU and a
            3x3 max-pool with stride 2 and padding 1, so the last stage sees 1/32 of the image),
            "cifar" (a 3x3 convolution with stride 1, BatchNorm and ReLU, no max-pool, as commonly
            used for 32x32 images: the last stage sees 1/8), or "auto": "cifar" for images of at
            most 64 pixels a side, "imagenet" for larger ones. Both have the same state_dict keys;
            conv1.weight is 7x7 or 3x3.
        device, seed, input_shape, classes: as for the other presets.

    Example:
        >>> model = clnet.models.resnet18(input_shape=(3, 32, 32))   # the CIFAR stem
        >>> model.load_state_dict(torchvision.models.resnet18(num_classes=10).state_dict())
    """
    return _imagenet_resnet((2, 2, 2, 2), False, input_shape, classes, stem, device, seed)


def resnet18_cifar(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 32, 32),
                   classes: int = 10) -> Model:
    """ResNet-18 with the CIFAR stem whatever the image size (`resnet18(stem="cifar")`): the
    network that the CIFAR-10 results of ResNet-18 usually mean, 32x32 images by default.

    Example:
        >>> model = clnet.models.resnet18_cifar()   # 11.17M parameters, the last stage at 4x4
    """
    return resnet18(device, seed, input_shape, classes, stem="cifar")


def resnet34(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 224, 224),
             classes: int = 10, stem: str = "auto") -> Model:
    """torchvision's ResNet-34: resnet18 with 3, 4, 6 and 3 basic blocks per stage. 21.3M
    parameters for 10 classes. `stem` and the other arguments as for resnet18."""
    return _imagenet_resnet((3, 4, 6, 3), False, input_shape, classes, stem, device, seed)


def resnet50(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 224, 224),
             classes: int = 10, stem: str = "auto") -> Model:
    """torchvision's ResNet-50 (v1.5): 3, 4, 6 and 3 bottleneck blocks per stage (1x1, 3x3 with
    the stage's stride, 1x1 to 4 times the stage's 64, 128, 256 or 512 channels, each with
    BatchNorm), a projection shortcut at the first block of every stage, Dense 2048->classes.
    23.5M parameters for 10 classes. `stem` and the other arguments as for resnet18."""
    return _imagenet_resnet((3, 4, 6, 3), True, input_shape, classes, stem, device, seed)


def _sequential(h, modules, prefix):
    """h through `modules` in turn, each node named as the child of a torch.nn.Sequential
    (f"{prefix}.{i}"); a list stands for a nested nn.Sequential, its children numbered under it."""
    for i, module in enumerate(modules):
        name = f"{prefix}.{i}"
        h = _sequential(h, module, name) if isinstance(module, list) else module(h, name=name)
    return h


# torchvision's VGG configurations: the output channels of each 3x3 convolution, "M" a 2x2 max-pool
VGG_FEATURES = {11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
                16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")}


def _vgg_bn(depth, input_shape, classes, device, seed):
    """torchvision's VGG with BatchNorm, its nodes named as its modules: `features` (each 3x3
    convolution, with a bias, then BatchNorm and ReLU; the 2x2 max-pools), avgpool (adaptive, to
    7x7), flatten and `classifier` (Dense to 4096, ReLU, Dropout(0.5), Dense to 4096, ReLU,
    Dropout(0.5), Dense to `classes`)."""
    features, channels = [], input_shape[0]
    for item in VGG_FEATURES[depth]:
        if item == "M":
            features.append(MaxPool2D(2))
        else:
            features += [Conv2D(channels, item, 3, padding=1, init="he"), BatchNorm2D(item), ReLU()]
            channels = item
    x = Input(input_shape)
    h = _sequential(x, features, "features")
    h = Flatten()(AdaptiveAvgPool2D(7)(h, name="avgpool"), name="flatten")
    classifier = [Dense(channels * 7 * 7, 4096), ReLU(), Dropout(0.5), Dense(4096, 4096), ReLU(), Dropout(0.5),
                  Dense(4096, classes)]
    return Model(x, _sequential(h, classifier, "classifier"), device=device, seed=seed)


def vgg11_bn(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 224, 224),
             classes: int = 10) -> Model:
    """torchvision's VGG-11 with BatchNorm (configuration "A" of Simonyan and Zisserman): 3x3
    convolutions of 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M channels (M: a 2x2
    max-pool), each with BatchNorm and ReLU; adaptive average pooling to 7x7; Dense 25088->4096,
    ReLU, Dropout(0.5), Dense 4096->4096, ReLU, Dropout(0.5), Dense 4096->classes. 128.8M
    parameters for 10 classes, 102.8M of them in the first Dense layer. The state_dict is
    torchvision.models.vgg11_bn(num_classes=classes)'s: keys, shapes and layouts.

    Images of any size of at least 32 pixels a side work without a special stem: the adaptive pool
    averages the last feature map (7x7 at 224x224) into the 7x7 grid the classifier takes, or, for
    smaller maps, repeats it (32x32 images leave a 1x1 map, copied 49 times), as torchvision does.
    Convolutions start He-uniform (they feed a ReLU through BatchNorm), with a zero bias, as the
    ResNets'; the Dense layers as PyTorch's reset_parameters, clnet's default (torchvision's VGG
    draws from normal distributions instead; load its weights to start from them).

    Args:
        device, seed, input_shape, classes: as for the other presets.

    Example:
        >>> model = clnet.models.vgg11_bn(input_shape=(3, 32, 32))
        >>> model.load_state_dict(torchvision.models.vgg11_bn(num_classes=10).state_dict())
    """
    return _vgg_bn(11, input_shape, classes, device, seed)


def vgg16_bn(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 224, 224),
             classes: int = 10) -> Model:
    """torchvision's VGG-16 with BatchNorm (configuration "D"): vgg11_bn with 13 convolutions, of
    64, 64, M, 128, 128, M, 256 x 3, M, 512 x 3, M, 512 x 3, M channels. 134.3M parameters for 10
    classes. The arguments, the state_dict and the initialisation are as for vgg11_bn."""
    return _vgg_bn(16, input_shape, classes, device, seed)


# torchvision's MobileNetV2 of width 1.0, stage by stage: (expansion ratio, output channels, blocks,
# stride of the first block)
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))


def _conv_bn_relu6(in_channels, out_channels, kernel, stride=1, groups=1):
    """torchvision's Conv2dNormActivation as MobileNetV2 uses it: a convolution without bias, padded
    to keep the size at stride 1, BatchNorm and ReLU6."""
    conv = Conv2D(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False,
                  init="he")
    return [conv, BatchNorm2D(out_channels), ReLU6()]


def _inverted_residual(x, in_channels, out_channels, stride, expansion, name):
    """torchvision's InvertedResidual, its modules under f"{name}.conv": a 1x1 expansion to
    `expansion` times the channels (none at ratio 1), a depthwise 3x3 convolution with the stride
    (each with BatchNorm and ReLU6), a linear 1x1 projection and BatchNorm; the input added where
    the shape is kept."""
    hidden = in_channels * expansion
    conv = [_conv_bn_relu6(in_channels, hidden, 1)] if expansion != 1 else []
    conv += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
             Conv2D(hidden, out_channels, 1, bias=False, init="he"), BatchNorm2D(out_channels)]
    h = _sequential(x, conv, f"{name}.conv")
    return Add()([x, h], name=f"{name}.add") if stride == 1 and in_channels == out_channels else h


def mobilenet_v2(device: Device | None = None, seed: int = 0, input_shape: Sequence[int] = (3, 224, 224),
                 classes: int = 10, stem: str = "auto") -> Model:
    """torchvision's MobileNetV2 (Sandler et al., 2018; width 1.0): features.0, a 3x3 convolution to
    32 channels with the stem's stride, BatchNorm and ReLU6; 17 inverted residual blocks
    (features.1 to features.17: a 1x1 expansion, a depthwise 3x3 convolution, a linear 1x1
    projection, each with BatchNorm, ReLU6 after the first two; the input added where the shape is
    kept) in stages of 1, 2, 3, 4, 3, 3, 1 blocks to 16, 24, 32, 64, 96, 160, 320 channels,
    expanding 6 times (1 in the first), the first block of the second, third, fourth and sixth
    stage with stride 2; features.18, a 1x1 convolution to 1280 channels with BatchNorm and ReLU6;
    global average pooling; classifier: Dropout(0.2), Dense 1280->classes. 2.24M parameters for 10
    classes. The state_dict is torchvision.models.mobilenet_v2(num_classes=classes)'s: keys, shapes
    and layouts. Convolutions (none with a bias) start He-uniform, as the ResNets', the Dense layer
    as PyTorch's reset_parameters, clnet's default (torchvision draws from normal distributions
    instead).

    Args:
        stem: "imagenet" (torchvision's: features.0 with stride 2, so the last feature map is 1/32
            of the image), "cifar" (features.0 with stride 1 and the rest as torchvision's, so a
            32x32 image leaves a 2x2 map rather than 1x1), or "auto": "cifar" for images of at
            most 64 pixels a side, "imagenet" for larger ones. Both have the same state_dict.
        device, seed, input_shape, classes: as for the other presets.

    Example:
        >>> model = clnet.models.mobilenet_v2(input_shape=(3, 32, 32))   # the CIFAR stem
        >>> model.load_state_dict(torchvision.models.mobilenet_v2(num_classes=10).state_dict())
    """
    first_stride = 2 if _choose_stem(stem, input_shape) == "imagenet" else 1
    x = Input(input_shape)
    h, channels = _sequential(x, _conv_bn_relu6(input_shape[0], 32, 3, first_stride), "features.0"), 32
    index = 1
    for expansion, width, blocks, stride in MOBILENET_V2_STAGES:
        for block in range(blocks):
            h = _inverted_residual(h, channels, width, stride if block == 0 else 1, expansion, f"features.{index}")
            channels, index = width, index + 1
    h = _sequential(h, _conv_bn_relu6(channels, 1280, 1), f"features.{index}")
    h = Flatten()(GlobalAvgPool2D()(h, name="avgpool"), name="flatten")
    return Model(x, _sequential(h, [Dropout(0.2), Dense(1280, classes)], "classifier"), device=device, seed=seed)


PRESETS = {"mlp": mlp, "mnist-cnn": mnist_cnn, "cifar-cnn": cifar_cnn, "lenet5": lenet5, "resnet20": resnet20,
           "resnet32": resnet32, "resnet56": resnet56, "resnet18": resnet18,
           "resnet18-cifar": resnet18_cifar, "resnet34": resnet34,
           "resnet50": resnet50, "vgg11-bn": vgg11_bn, "vgg16-bn": vgg16_bn, "mobilenet-v2": mobilenet_v2}
INPUT_SHAPES = {"mlp": (1, 28, 28), "mnist-cnn": (1, 28, 28), "cifar-cnn": (3, 32, 32), "lenet5": (1, 28, 28),
                "resnet20": (3, 32, 32), "resnet32": (3, 32, 32), "resnet56": (3, 32, 32),
                "resnet18": (3, 224, 224),
                "resnet18-cifar": (3, 32, 32), "resnet34": (3, 224, 224), "resnet50": (3, 224, 224),
                "vgg11-bn": (3, 224, 224), "vgg16-bn": (3, 224, 224), "mobilenet-v2": (3, 224, 224)}
