"""Gradients of whole networks against finite differences of a float64 reference, and of the
device's own loss; the reference networks of the brief (2-3-1 and 2-3-3-1, ReLU, sigmoid, BCE)."""

import numpy as np
import pytest

import clnet
from clnet import layers as L

from reference import forward, loss, numeric_gradients, softmax

LINKS = {"cross_entropy": L.Softmax, "binary_cross_entropy": L.Sigmoid}


def _reference_loss_name(layers, loss_name):
    link = LINKS.get(loss_name)
    return loss_name if link is None or isinstance(layers[-1], link) else loss_name + "_logits"


def _targets(loss_name, rng, n, outputs, integer_labels=False):
    if loss_name == "cross_entropy" or integer_labels:
        return rng.integers(0, outputs, n)
    if loss_name == "binary_cross_entropy":
        return rng.integers(0, 2, (n, outputs)).astype(np.float64)
    return rng.normal(size=(n, outputs))


def _check(device, layers, loss_name, x, y, rtol=2e-3, atol=2e-5):
    model = clnet.Sequential(layers, device=device, seed=3)
    model.compile(loss=loss_name, optimizer=clnet.optim.SGD(lr=1e-3))
    state = model.state_dict()
    device_loss = model.train_on_batch(x, y)
    grads = model.gradients()
    ref_name = _reference_loss_name(layers, loss_name)
    assert device_loss == pytest.approx(loss(ref_name, forward(layers, state, x), y), rel=1e-4, abs=1e-6)
    expected = numeric_gradients(layers, state, x, y, ref_name)
    assert grads.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=rtol, atol=atol, err_msg=key)
    return model


NETS = {
    "relu": lambda i, o: [L.Dense(i, 5), L.ReLU(), L.Dense(5, o)],
    "sigmoid": lambda i, o: [L.Dense(i, 4), L.Sigmoid(), L.Dense(4, o)],
    "tanh": lambda i, o: [L.Dense(i, 6), L.Tanh(), L.Dense(6, 3, bias=False), L.Tanh(), L.Dense(3, o)],
    "unfused": lambda i, o: [L.Tanh(), L.Dense(i, 4), L.ReLU(), L.Sigmoid(), L.Dense(4, o)],
}


@pytest.mark.parametrize("loss_name", ["cross_entropy", "binary_cross_entropy", "mean_squared_error"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_network_gradients_match_finite_differences(device, net, loss_name):
    rng = np.random.default_rng(7)
    outputs = 1 if loss_name == "binary_cross_entropy" else 3
    x = rng.normal(size=(5, 4))
    _check(device, NETS[net](4, outputs), loss_name, x, _targets(loss_name, rng, 5, outputs))


@pytest.mark.parametrize("loss_name", ["cross_entropy", "binary_cross_entropy"])
def test_final_link_layer_is_fused_into_the_loss(device, loss_name):
    rng = np.random.default_rng(1)
    outputs = 3 if loss_name == "cross_entropy" else 2
    layers = [L.Dense(3, 4), L.ReLU(), L.Dense(4, outputs), LINKS[loss_name]()]
    _check(device, layers, loss_name, rng.normal(size=(6, 3)), _targets(loss_name, rng, 6, outputs))


def test_softmax_inside_the_network_and_mse_on_labels(device):
    rng = np.random.default_rng(2)
    layers = [L.Dense(3, 4), L.Softmax(), L.Dense(4, 3)]
    _check(device, layers, "mean_squared_error", rng.normal(size=(4, 3)), rng.integers(0, 3, 4))


def test_flatten_of_images_and_batch_of_one(device, gemm_family):
    rng = np.random.default_rng(3)
    layers = [L.Flatten(), L.Dense(2 * 3 * 5, 7), L.ReLU(), L.Dense(7, 4)]
    _check(device, layers, "cross_entropy", rng.normal(size=(1, 2, 3, 5)), rng.integers(0, 4, 1))


def _check_graph(model, x, y):
    """A cross-entropy graph's training loss and gradients on (x, y) against the float64 reference
    and its finite differences."""
    state = model.state_dict()
    device_loss = model.train_on_batch(x, y)
    reference = forward(model.network, state, x, training=True)
    assert device_loss == pytest.approx(loss("cross_entropy_logits", reference, y), rel=1e-4)
    expected = numeric_gradients(model.network, state, x, y, "cross_entropy_logits", training=True)
    grads = model.gradients()
    assert grads.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=2e-3, atol=2e-5, err_msg=key)


def residual_relus(device):
    """Activations fused into layers whose output several stages read: Add + ReLU read by three
    (its gradients' sum taken back through the ReLU by the launch adding the last), Add + ReLU read
    by one (the ReLU's derivative a launch of its own), BatchNorm + Sigmoid and Dense + Tanh read
    by two (the sum through the activation, the layer's backward past it: a derivative applied
    twice would show)."""
    x = clnet.Input((2, 4, 3))
    n = L.Sigmoid()(L.BatchNorm2D(3)(L.Conv2D(2, 3, 1, bias=False)(x)), name="n")
    r1 = L.ReLU()(L.Add()([L.Conv2D(2, 3, 3, padding=1)(x), n]), name="r1")
    r2 = L.ReLU()(L.Add()([L.Conv2D(3, 3, 3, padding=1)(r1), r1, L.Conv2D(3, 3, 1, bias=False)(r1), n]), name="r2")
    h = L.Tanh()(L.Dense(36, 5)(L.Flatten()(r2)), name="h")
    return clnet.Model(x, L.Dense(5, 3)(L.Add()([h, L.Dense(5, 5)(h)])), device=device, seed=6)


def test_fused_activations_of_values_read_several_times(device, gemm_family):
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(4, 2, 4, 3)), rng.integers(0, 3, 4)
    model = residual_relus(device).compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    stages = model.network.stages((2, 4, 3))
    assert {s.output for s in stages if s.act} == {"n", "r1", "r2", "h"}
    assert len(stages) == len(model.network.nodes) - 4
    _check_graph(model, x, y)
    kernels = [launch.kernel.function_name for launch in model._runner(4, x.shape[1:], True, np.int32).plan.launches]
    assert kernels.count("add_act_backward") == 3 and kernels.count("activation_backward") == 1


def residual_norms(device):
    """BatchNorms whose output only an Add reads, which then run the Add (and its activation) in
    their stage: a block's last norm before Add + ReLU, its shortcut the block's input (read twice:
    the gradients' sum), first or second among the Add's inputs; a projection shortcut's norm
    beside it (one of the two runs the sum); a norm + Add without activation whose sum two stages
    read; a last block read by one stage (the ReLU's derivative a launch of its own, which the
    shortcut's gradient passes too); a norm read by two stages, and an Add of three, which stay as
    they are."""
    x = clnet.Input((2, 4, 3))
    stem = L.ReLU()(L.Conv2D(2, 3, 3, padding=1)(x), name="stem")
    b1 = L.BatchNorm2D(3, name="b1")(L.Conv2D(3, 3, 3, padding=1, bias=False)(stem))
    r1 = L.ReLU()(L.Add()([stem, b1]), name="r1")
    b2 = L.BatchNorm2D(4, name="b2")(L.Conv2D(3, 4, 3, padding=1, bias=False)(r1))
    projection = L.BatchNorm2D(4, name="projection")(L.Conv2D(3, 4, 1, bias=False)(r1))
    r2 = L.ReLU()(L.Add()([b2, projection]), name="r2")
    b3 = L.BatchNorm2D(4, name="b3")(L.Conv2D(4, 4, 1)(r2))
    s3 = L.Add(name="s3")([b3, r2])
    twice = L.BatchNorm2D(4, name="twice")(s3)
    three = L.Add()([L.BatchNorm2D(4)(L.Conv2D(4, 4, 1)(s3)), twice, s3])
    h = L.Add()([twice, L.Tanh()(three)])
    z = L.ReLU()(L.Add()([L.BatchNorm2D(4, name="b4")(L.Conv2D(4, 4, 1)(h)), h]), name="z")
    return clnet.Model(x, L.Dense(48, 3)(L.Flatten()(z)), device=device, seed=6)


def test_norms_run_the_residual_adds_they_alone_feed(device, gemm_family):
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(5, 2, 4, 3)), rng.integers(0, 3, 5)
    model = residual_norms(device).compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    stages = model.network.stages((2, 4, 3))
    fused = {(s.name, s.output) for s in stages if s.residual}
    assert fused == {("b1", "r1"), ("b2", "r2"), ("b3", "s3"), ("b4", "z")}
    _check_graph(model, x, y)
    plan = model._runner(5, x.shape[1:], True, np.int32).plan
    start, stop = plan.phase_range("forward", "forward")
    sums = [launch for launch in plan.launches[start:stop] if launch.kernel.function_name == "add_tensors"]
    assert len(sums) == 3  # the three-input Add's two, and h's
    # evaluation: the norms after a convolution fold into it, an Add after them; the one after an
    # Add (twice) runs alone
    assert not any(s.residual for s in model.network.stages((2, 4, 3), fold_norms=True))
    np.testing.assert_allclose(model.predict(x), softmax(forward(model.network, model.state_dict(), x)),
                               rtol=1e-4, atol=1e-6)


def test_an_unfolded_norm_runs_the_residual_add_in_evaluation(device, gemm_family):
    """A norm after a pooling (nothing to fold into) runs the Add after it, in training and in
    evaluation: the running statistics' kernels add the residual too."""
    x = clnet.Input((3, 4, 4))
    pooled = L.MaxPool2D(2)(L.Conv2D(3, 3, 3, padding=1)(x))
    out = L.ReLU()(L.Add()([L.Conv2D(3, 3, 1)(pooled), L.BatchNorm2D(3, name="n")(pooled)]), name="out")
    model = clnet.Model(x, L.Dense(12, 2)(L.Flatten()(out)), device=device, seed=2)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.1))
    for fold_norms in (False, True):
        stages = model.network.stages((3, 4, 4), fold_norms=fold_norms)
        assert [(s.name, s.output) for s in stages if s.residual] == [("n", "out")]
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(6, 3, 4, 4)), rng.integers(0, 2, 6)
    for _ in range(3):  # running statistics away from their start
        model.train_on_batch(x, y)
    np.testing.assert_allclose(model.predict(x), softmax(forward(model.network, model.state_dict(), x)),
                               rtol=1e-4, atol=1e-6)


def test_an_add_of_a_repeated_input_runs_on_its_own(device, gemm_family):
    """Add([norm, c, c]) sums c twice: the norm does not take it in (nor Add([norm, norm]))."""
    x = clnet.Input((3,))
    c = L.Dense(3, 4)(x)
    norm, doubled = (L.BatchNorm1D(4, name=name)(L.Dense(3, 4)(x)) for name in ("n", "d"))
    out = L.Add()([L.ReLU()(L.Add()([norm, c, c])), L.Add()([doubled, doubled])])
    model = clnet.Model(x, L.Dense(4, 2)(out), device=device, seed=4).compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    assert not any(s.residual for s in model.network.stages((3,)))
    rng = np.random.default_rng(12)
    _check_graph(model, rng.normal(size=(6, 3)), rng.integers(0, 2, 6))


def test_device_loss_agrees_with_its_own_gradient(device):
    """Finite differences of the device's float32 forward pass (coarse) against its backward pass."""
    rng = np.random.default_rng(4)
    model = clnet.Sequential([L.Dense(3, 4), L.Tanh(), L.Dense(4, 3)], device=device, seed=5)
    model.compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    x, y = rng.normal(size=(8, 3)), rng.integers(0, 3, 8)
    state = model.state_dict()
    model.train_on_batch(x, y)
    grad = model.gradients()["0.weight"]
    eps = 1e-2
    for idx in [(0, 0), (2, 1), (3, 2)]:
        values = []
        for sign in (1, -1):
            shifted = {k: v.copy() for k, v in state.items()}
            shifted["0.weight"][idx] += sign * eps
            model.load_state_dict(shifted)
            values.append(model.evaluate(x, y)["loss"])
        assert (values[0] - values[1]) / (2 * eps) == pytest.approx(grad[idx], rel=2e-2, abs=2e-4)


def _separable(rng, n):
    x = rng.uniform(-1, 1, size=(n, 2))
    keep = np.abs(x[:, 0] + x[:, 1]) > 0.2  # a margin around the separating line
    x = x[keep]
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.float64)


@pytest.mark.parametrize("hidden", [[3], [3, 3]], ids=["2-3-1", "2-3-3-1"])
def test_reference_network_trains_and_its_gradients_check(device, hidden):
    """The brief's network: 2 inputs, ReLU hidden layer(s) of 3 units, 1 sigmoid output, BCE."""
    rng = np.random.default_rng(0)
    layers, width = [], 2
    for units in hidden:
        layers += [L.Dense(width, units), L.ReLU()]
        width = units
    layers += [L.Dense(width, 1), L.Sigmoid()]
    x, y = _separable(rng, 400)
    _check(device, layers, "binary_cross_entropy", x[:6], y[:6])

    # Seed 1: with 3-unit ReLU layers some initialisations start with every unit of a layer dead
    # (seed 2 does for 2-3-3-1), which no optimizer recovers from.
    model = clnet.Sequential(layers, device=device, seed=1)
    model.compile("binary_cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
    history = model.fit(x, y, epochs=60, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 3
    assert model.evaluate(x, y)["accuracy"] >= 0.97
    p = model.predict(x)
    assert p.shape == (len(x), 1) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, forward(layers, model.state_dict(), x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("final", [[], [L.Softmax()]], ids=["logits", "softmax"])
def test_label_smoothing_matches_float64_and_torch(device, final):
    """cross_entropy with label_smoothing e: target (1 - e) on the label plus e / classes on every
    class; the loss and gradient against a float64 reference, and the loss against torch's."""
    rng = np.random.default_rng(8)
    x, y, e = rng.normal(size=(7, 5)), rng.integers(0, 4, 7), 0.2
    model = clnet.Sequential([L.Dense(5, 4), *final], device=device, seed=2)
    model.compile("cross_entropy", clnet.optim.SGD(lr=1e-3), label_smoothing=e)
    state = model.state_dict()
    device_loss = model.train_on_batch(x, y)
    z = x @ state["0.weight"].astype(np.float64).T + state["0.bias"]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    q = (1 - e) * np.eye(4)[y] + e / 4
    expected_loss = -np.mean((q * log_p).sum(axis=1))
    assert device_loss == pytest.approx(expected_loss, rel=1e-5)
    dz = (np.exp(log_p) - q) / len(x)
    grads = model.gradients()
    np.testing.assert_allclose(grads["0.weight"], dz.T @ x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["0.bias"], dz.sum(axis=0), rtol=1e-4, atol=1e-6)
    torch = pytest.importorskip("torch")
    twin = torch.nn.CrossEntropyLoss(label_smoothing=e)(torch.tensor(z), torch.tensor(y))
    assert device_loss == pytest.approx(twin.item(), rel=1e-5)


def test_label_smoothing_is_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        clnet.losses.CrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="takes no label_smoothing"):
        clnet.losses.get("mse", label_smoothing=0.1)
    with pytest.raises(ValueError, match="to the Loss itself"):
        clnet.losses.get(clnet.losses.CrossEntropy(), label_smoothing=0.1)
