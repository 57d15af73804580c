"""The ResNet presets against PyTorch: torchvision's resnet18/34/50 and a twin of the CIFAR
ResNets built from torchvision's BasicBlock share their state_dicts with clnet's, and give the same
outputs in evaluation and the same gradients, running statistics and updates in a training step."""

import io

import numpy as np
import pytest

from clnet import models

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402
from torchvision.models.resnet import BasicBlock  # noqa: E402

from twin_comparison import CLASSES, assert_twins, with_random_batchnorm  # noqa: E402


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with projection shortcuts where the shape changes, its modules
    named as torchvision's (and so as clnet's nodes)."""

    def __init__(self, n):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                downsample = None
                if stride != 1 or channels != width:
                    downsample = nn.Sequential(nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width))
                blocks.append(BasicBlock(channels, width, stride, downsample))
                channels = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, CLASSES)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torchvision_resnet(depth, stem):
    net = getattr(torchvision.models, f"resnet{depth}")(num_classes=CLASSES)
    if stem == "cifar":
        net.conv1, net.maxpool = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.Identity()
    return net


@pytest.mark.parametrize("name, n", [("resnet20", 3)])
def test_cifar_resnet_matches_its_torch_twin(device, gemm_family, name, n):
    model = models.PRESETS[name](device=device, seed=1)
    model.load_state_dict(with_random_batchnorm(model.state_dict(), np.random.default_rng(1)))
    net = CifarResNet(n)
    net.load_state_dict({key: torch.as_tensor(value) for key, value in model.state_dict().items()})
    assert_twins(model, net, 32)


@pytest.mark.parametrize("depth, stem, size", [(18, "cifar", 32), (34, "imagenet", 64), (50, "imagenet", 64)])
def test_torchvision_resnet_weights_load_and_match(device, depth, stem, size):
    torch.manual_seed(depth)
    net = torchvision_resnet(depth, stem)
    net.load_state_dict({key: torch.as_tensor(value) for key, value in
                         with_random_batchnorm(net.state_dict(), np.random.default_rng(depth)).items()})
    model = models.PRESETS[f"resnet{depth}"](device=device, input_shape=(3, size, size), stem=stem)
    model.load_state_dict(net.state_dict())  # torch tensors, num_batches_tracked int64
    assert model.state_dict()["bn1.num_batches_tracked"] == 7
    assert_twins(model, net, size)


def test_the_stem_follows_the_image_size(device):
    assert models.resnet18(device=device, input_shape=(3, 64, 64)).state_dict()["conv1.weight"].shape == (64, 3, 3, 3)
    assert models.resnet18(device=device, input_shape=(3, 96, 96)).state_dict()["conv1.weight"].shape == (64, 3, 7, 7)
    with pytest.raises(ValueError, match="stem"):
        models.resnet18(device=device, stem="tiny")


def test_resnet18_summary_plans_a_training_batch_of_64_at_224(device):
    """summary plans the step without allocating its 1.4 GiB arena: on PoCL this takes a few
    seconds (kernels are built) and little host memory."""
    model = models.resnet18(device=device).compile("cross_entropy", "sgd")
    text = model.summary(batch_size=64, stream=io.StringIO())
    assert "layer4.1.bn2: BatchNorm2D(512)" in text and "(512, 7, 7)" in text
    assert "layer4.1.relu2: ReLU() <- layer4.1.add" in text  # run in the Add's pass, listed as a node
    assert "11,181,642 parameters" in text and "training at batch size 64" in text
