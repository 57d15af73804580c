"""Helpers for comparing clnet's presets with their PyTorch twins (test_resnets.py,
test_torchvision_presets.py): random BatchNorm state, relative closeness, and one evaluation and
one SGD training step compared output by output, gradient by gradient. Import it after
pytest.importorskip("torch")."""

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

import clnet

LR = 0.1
CLASSES = 10
KINK = 1e-6  # float32 rounding of a deep network's activations (the ResNets': 4e-7), relative to their largest


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


def relative_error(actual, expected):
    """The largest |actual - expected|, relative to the largest |expected| entry."""
    expected = np.asarray(expected, np.float64)
    return np.abs(np.asarray(actual, np.float64) - expected).max() / max(np.abs(expected).max(), 1e-6)


def assert_close(actual, expected, what, tol):
    """Within `tol` of the largest |expected| entry: float32 sums in another order."""
    error = relative_error(actual, expected)
    assert error <= tol, f"{what}: {error:.1e} of the largest entry, more than {tol:.1e}"


class ShiftedReLU(nn.Module):
    """ReLU, or ReLU6 with top=6, whose kinks lie `shift` times the largest |input| of the call away
    from 0 (and from top)."""

    def __init__(self, shift, top=None):
        super().__init__()
        self.shift, self.top = shift, top

    def forward(self, x):
        offset = self.shift * x.detach().abs().max()
        y = torch.where(x > offset, x, torch.zeros_like(x))
        return y if self.top is None else torch.where(x < self.top + offset, y, torch.full_like(x, self.top))


def with_shifted_relus(net, shift):
    """`net` with each of its ReLU and ReLU6 modules a ShiftedReLU(shift)."""
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU6):  # a subclass of nn.Hardtanh, not of nn.ReLU
                setattr(module, name, ShiftedReLU(shift, 6.0))
            elif isinstance(child, nn.ReLU):
                setattr(module, name, ShiftedReLU(shift))
    return net


@contextmanager
def one_torch_thread():
    """torch on one thread: on a CPU that PoCL's threads share, torch's own threads wait for each
    other at every operation and make a network of many small ones (MobileNetV2) several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torch_gradients(net, x, y, dtype, relu_shift=None):
    net = copy.deepcopy(net).to(dtype).train()
    if relu_shift is not None:
        net = with_shifted_relus(net, relu_shift)
    net.zero_grad(set_to_none=True)
    with one_torch_thread():
        nn.functional.cross_entropy(net(torch.from_numpy(x).to(dtype)), torch.from_numpy(y)).backward()
    return {key: parameter.grad.double().numpy() for key, parameter in net.named_parameters()}


def assert_same_outputs(model, net, x, tol=2e-4):
    """`model` and `net` give the same outputs on x in evaluation (running statistics, no dropout)."""
    net.eval()
    with torch.no_grad(), one_torch_thread():
        logits = net(torch.from_numpy(x)).numpy()
    model.compile("mean_squared_error")  # predict returns the raw outputs
    assert_close(model.predict(x, batch_size=len(x)), logits, "eval outputs", tol)


def assert_twins(model, net, size, batch=2, tol=2e-4, kink=KINK):
    """clnet's `model` and torch's `net` (same weights) agree on images of `size`: the outputs in
    evaluation; the loss and the running statistics of one SGD step with batch statistics; and
    every gradient, against torch in float64, within the larger of 20 `tol` and ten
    times torch's own float32 error (deep bottleneck networks on tiny batches amplify
    rounding: 20% for resnet50 here), and twice the gradients' sensitivity to the ReLUs' kinks:
    a ReLU (or ReLU6) input within float32 rounding of 0 (or 6), `kink` of the call's largest
    |input|, may fall on either side of it, as torch's float32 or another summation order rounds,
    and a single one can move the gradients below it by several percent (resnet18's layer4.0
    output at batch 2 holds one of -7.9e-7 in float64, -3.2e-6 in torch's float32 and +1.2e-6 in
    the CPU family's: 2-33% below it). The sensitivity is the change of the float64 gradients
    with every kink moved by `kink` either way, computed for the gradients that miss the other
    bounds."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch)
    assert_same_outputs(model, net, x, tol)

    net.train()
    net_before_step = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    with one_torch_thread():
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
    for mine, twin in zip(net.parameters(), net_before_step.parameters()):
        twin.grad = mine.grad.clone()
    optimizer.step()
    model.compile("cross_entropy", clnet.optim.SGD(lr=LR))
    assert model.train_on_batch(x, y) == pytest.approx(loss.item(), rel=tol)
    grads, exact = model.gradients(), torch_gradients(net_before_step, x, y, torch.float64)
    bounds, missed = {}, []
    for key, parameter in net_before_step.named_parameters():
        bounds[key] = max(20 * tol, 10 * relative_error(parameter.grad.numpy(), exact[key]))
        if relative_error(grads[key], exact[key]) > bounds[key]:
            missed.append(key)
    if missed:  # the kinks' share, needed only here: two more float64 passes
        shifted = [torch_gradients(net_before_step, x, y, torch.float64, shift) for shift in (-kink, kink)]
        for key in missed:
            kink_error = max(relative_error(g[key], exact[key]) for g in shifted)
            assert_close(grads[key], exact[key], f"gradient of {key}", max(bounds[key], 2 * kink_error))
    state, parameters = model.state_dict(), dict(net.named_parameters())
    for key, value in net.state_dict().items():
        if key not in parameters:  # the running statistics; the update is SGD's, given the gradients
            assert_close(state[key], value, f"{key} after the step", tol)
