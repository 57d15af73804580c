"""clnet.torch_twin: a network's PyTorch twin has the same state_dict keys and computes the same
outputs (evaluation) and gradients (a training step) as the network."""

import numpy as np
import pytest

import clnet
from clnet import layers as L
from clnet.torch_twin import torch_twin

from test_graphs import branching

torch = pytest.importorskip("torch")


def _twin_of(model):
    twin = torch_twin(model.network).double()
    twin.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in model.state_dict().items()})
    return twin


@pytest.mark.parametrize("make", [branching, lambda device: clnet.models.resnet20(device=device, seed=1),
                                  lambda device: clnet.Sequential([
                                      L.Conv2D(3, 4, 3, padding="same"), L.BatchNorm2D(4), L.LeakyReLU(0.2),
                                      L.MaxPool2D(2), L.Dropout(0.5), L.Flatten(), L.Dense(4 * 16 * 16, 3),
                                      L.Softmax()], device=device),
                                  lambda device: clnet.Sequential([
                                      L.Conv2D(3, 4, 3), L.AdaptiveAvgPool2D((7, 4)), L.Flatten(), L.Dense(4 * 28, 3)],
                                      device=device)], ids=["branching", "resnet20", "sequential", "adaptive-pool"])
def test_twin_matches_the_network(device, make):
    model = make(device=device)
    shape = model.input_shape or (3, 32, 32)
    twin = _twin_of(model)
    assert list(twin.state_dict()) == list(model.state_dict())
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    with torch.no_grad():
        out = twin.eval()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(model.predict(x), out, rtol=1e-4, atol=1e-5)  # uncompiled: the raw outputs


def test_twin_trains_as_the_network(device):
    x_in = clnet.Input((3, 8, 8))
    h = L.ReLU()(L.BatchNorm2D(4)(L.Conv2D(3, 4, 3, padding=1, bias=False)(x_in)))
    h = L.Add()([h, L.BatchNorm2D(4)(L.Conv2D(4, 4, 3, padding=1)(h))])
    model = clnet.Model(x_in, L.Dense(4, 10)(L.Flatten()(L.GlobalAvgPool2D()(h))), device=device, seed=2)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
    twin = _twin_of(model).train()
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 8)
    loss = model.train_on_batch(x, y)
    twin_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x).double()), torch.from_numpy(y))
    twin_loss.backward()
    assert loss == pytest.approx(twin_loss.item(), rel=1e-4)
    grads = dict(twin.named_parameters())
    for key, grad in model.gradients().items():
        np.testing.assert_allclose(grad, grads[key].grad.numpy(), rtol=1e-3, atol=1e-6, err_msg=key)


def test_a_layer_without_a_twin_is_named():
    class Odd(L.Identity):
        pass
    with pytest.raises(TypeError, match="no PyTorch twin"):
        torch_twin(clnet.network.Network.chain([Odd()]))
