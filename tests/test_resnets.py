"""The ResNet presets against PyTorch: torchvision's resnet18/34/50 and a twin of the CIFAR
ResNets built from torchvision's BasicBlock share their state_dicts with clnet's, and give the same
outputs in evaluation and the same gradients, running statistics and updates in a training step."""

import copy
import io

import numpy as np
import pytest

import clnet
from clnet import models

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402
from torchvision.models.resnet import BasicBlock  # noqa: E402

LR = 0.1
CLASSES = 10
KINK = 1e-6  # float32 rounding of a deep network's activations (4e-7 here), relative to their largest


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


def with_random_batchnorm(state, rng):
    """`state` (numpy arrays or torch tensors) as numpy arrays, the BatchNorm scales, shifts and
    running statistics random, so that evaluation differs from training and from the identity."""
    random = {"running_mean": lambda s: rng.normal(0, 0.2, s), "running_var": lambda s: rng.uniform(0.5, 2, s),
              "weight": lambda s: rng.uniform(0.5, 1.5, s), "bias": lambda s: rng.normal(0, 0.2, s),
              "num_batches_tracked": lambda s: np.full(s, 7)}
    out = {}
    for key, value in state.items():
        value = np.asarray(value)
        module, name = key.rsplit(".", 1)
        is_norm = f"{module}.running_mean" in state
        out[key] = random[name](value.shape).astype(value.dtype) if is_norm else value
    return out


def assert_close(actual, expected, what, tol):
    """Within `tol` of the largest |expected| entry: float32 sums in another order."""
    expected = np.asarray(expected, np.float64)
    error = np.abs(np.asarray(actual, np.float64) - expected).max() / max(np.abs(expected).max(), 1e-6)
    assert error <= tol, f"{what}: {error:.1e} of the largest entry, more than {tol:.1e}"


class ShiftedReLU(nn.Module):
    """ReLU whose kink lies at `shift` times the largest |input| of the call instead of at 0."""

    def __init__(self, shift):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        return torch.where(x > self.shift * x.detach().abs().max(), x, torch.zeros_like(x))


def with_shifted_relus(net, shift):
    """`net` with each of its ReLU modules a ShiftedReLU(shift)."""
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, ShiftedReLU(shift))
    return net


def torch_gradients(net, x, y, dtype, relu_shift=None):
    net = copy.deepcopy(net).to(dtype).train()
    if relu_shift is not None:
        net = with_shifted_relus(net, relu_shift)
    net.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(torch.from_numpy(x).to(dtype)), torch.from_numpy(y)).backward()
    return {key: parameter.grad.double().numpy() for key, parameter in net.named_parameters()}


def assert_twins(model, net, size, batch=2, tol=2e-4):
    """clnet's `model` and torch's `net` (same weights) agree on images of `size`: the outputs in
    evaluation; the loss and the running statistics of one SGD step with batch statistics; and
    every gradient, against torch in float64, within the larger of 20 `tol` and ten
    times torch's own float32 error (deep bottleneck networks on tiny batches amplify
    rounding: 20% for resnet50 here), and twice the gradients' sensitivity to the ReLUs' kinks:
    a ReLU input within float32 rounding of 0 (KINK of the call's largest |input|) may fall on
    either side of it, as torch's float32 or another summation order rounds, and a single one
    can move the gradients below it by several percent (resnet18's layer4.0 output at batch 2
    holds one of -7.9e-7 in float64, -3.2e-6 in torch's float32 and +1.2e-6 in the CPU
    family's: 2-33% below it). The sensitivity is the change of the float64 gradients with
    every kink moved by KINK either way."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch)
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    model.compile("mean_squared_error")  # predict returns the raw outputs
    assert_close(model.predict(x), logits, "eval outputs", tol)

    net.train()
    net_before_step = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    for mine, twin in zip(net.parameters(), net_before_step.parameters()):
        twin.grad = mine.grad.clone()
    optimizer.step()
    model.compile("cross_entropy", clnet.optim.SGD(lr=LR))
    assert model.train_on_batch(x, y) == pytest.approx(loss.item(), rel=tol)
    grads, exact = model.gradients(), torch_gradients(net_before_step, x, y, torch.float64)
    shifted = [torch_gradients(net_before_step, x, y, torch.float64, shift) for shift in (-KINK, KINK)]
    for key, parameter in net_before_step.named_parameters():
        scale = np.abs(exact[key]).max()
        float32_error = np.abs(parameter.grad.numpy() - exact[key]).max() / scale
        kink_error = max(np.abs(g[key] - exact[key]).max() for g in shifted) / scale
        assert_close(grads[key], exact[key], f"gradient of {key}", max(20 * tol, 10 * float32_error, 2 * kink_error))
    state, parameters = model.state_dict(), dict(net.named_parameters())
    for key, value in net.state_dict().items():
        if key not in parameters:  # the running statistics; the update is SGD's, given the gradients
            assert_close(state[key], value, f"{key} after the step", tol)


@pytest.mark.parametrize("name, n", [("resnet20", 3)])
def test_cifar_resnet_matches_its_torch_twin(device, name, n):
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
    assert "11,181,642 parameters" in text and "training at batch size 64" in text
