"""Networks as graphs: the functional API, gradients through branches (a residual Add, a
Concatenate, a value read by three nodes) against finite differences, model files, resume and ONNX
export of a graph, and the errors of a malformed graph."""

import numpy as np
import pytest

import clnet
from clnet.export import to_onnx
from clnet import layers as L

from reference import forward, loss, numeric_gradients


def branching(seed=3, device=None):
    """A value (`r`) read by three nodes, a residual Add of three inputs, a Concatenate of unequal
    channel counts (3 and 2) and a value (the input) read twice."""
    x = clnet.Input((2, 5, 4))
    r = L.ReLU()(L.Conv2D(2, 3, 3, padding=1)(x), name="r")
    b1 = L.Conv2D(3, 3, 1)(r)
    b2 = L.Tanh()(r)
    added = L.Add()([r, b1, b2], name="sum")
    joined = L.Concatenate()([added, L.Conv2D(2, 2, 1, bias=False)(x)])
    y = L.Dense(5 * 5 * 4, 3)(L.Flatten()(L.AvgPool2D(1)(joined)))
    return clnet.Model(x, y, device=device, seed=seed)


def test_graph_gradients_match_finite_differences(device, gemm_family):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(3, 2, 5, 4)), rng.integers(0, 3, 3)
    model = branching(device=device)
    model.compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    state = model.state_dict()
    device_loss = model.train_on_batch(x, y)
    assert device_loss == pytest.approx(loss("cross_entropy_logits", forward(model.network, state, x), y), rel=1e-4)
    expected = numeric_gradients(model.network, state, x, y, "cross_entropy_logits")
    grads = model.gradients()
    assert grads.keys() == expected.keys() and "r.weight" not in grads and "conv2d.weight" in grads
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=2e-3, atol=2e-5, err_msg=key)


def test_names_and_summary(device):
    model = branching(device=device)
    assert [n.name for n in model.network.nodes] == ["conv2d", "r", "conv2d_1", "tanh", "sum", "conv2d_2",
                                                     "concatenate", "avgpool2d", "flatten", "dense"]
    assert model.network.nodes[4].inputs == ("r", "conv2d_1", "tanh")
    assert list(model.state_dict())[:4] == ["conv2d.weight", "conv2d.bias", "conv2d_1.weight", "conv2d_1.bias"]
    text = model.summary(stream=open("/dev/null", "w"))
    assert "sum: Add() <- r, conv2d_1, tanh" in text and "(5, 5, 4)" in text


def test_a_graph_saves_loads_resumes_and_exports(device, tmp_path):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 2, 5, 4)).astype(np.float32), rng.integers(0, 3, 40)

    def run(epochs, **checkpointing):
        model = branching(device=device)
        model.compile("cross_entropy", clnet.optim.Adam(lr=1e-2))
        history = model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, **checkpointing)
        return model, history

    straight, history = run(3)
    run(1, checkpoint=tmp_path / "run.clnet")
    resumed, resumed_history = run(3, checkpoint=tmp_path / "run.clnet", resume=True)
    assert resumed_history.history == history.history
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)

    straight.save(tmp_path / "graph.clnet")
    assert clnet.io.info(tmp_path / "graph.clnet")["format_version"] == 2
    loaded = clnet.load(tmp_path / "graph.clnet", device=device)
    assert type(loaded) is clnet.Model and loaded.network.nodes[4].inputs == ("r", "conv2d_1", "tanh")
    np.testing.assert_array_equal(loaded.predict(x), straight.predict(x))

    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    to_onnx(straight, tmp_path / "graph.onnx")
    session = ort.InferenceSession(str(tmp_path / "graph.onnx"))
    np.testing.assert_allclose(session.run(None, {"input": x})[0], straight.predict(x), rtol=1e-4, atol=1e-5)


def test_a_malformed_graph_fails_clearly():
    x = clnet.Input((3, 4, 4))
    conv = L.Conv2D(3, 3, 1)
    h = conv(x)
    with pytest.raises(ValueError, match="called twice"):
        clnet.network.Network.from_symbolic(x, conv(h))
    with pytest.raises(ValueError, match="not the model's input"):
        clnet.network.Network.from_symbolic(x, L.Add()([h, clnet.Input((3, 4, 4))]))
    with pytest.raises(ValueError, match="not the model's input"):
        clnet.network.Network.from_symbolic(x, L.ReLU()(clnet.Input((3, 4, 4))))
    with pytest.raises(ValueError, match="unique"):
        clnet.network.Network.from_symbolic(x, L.ReLU()(L.ReLU()(x, name="a"), name="a"))
    with pytest.raises(TypeError, match="call a layer on clnet.Input"):
        L.ReLU()(np.zeros(3))
    with pytest.raises(ValueError, match="takes two or more"):
        clnet.network.Network.from_symbolic(x, L.Add()(x))
    network = clnet.network.Network.from_symbolic(x, L.Add()([h, L.Conv2D(3, 2, 1)(x)]))
    reading = r"layer add \(Add\(\)\) reading conv2d \(3, 4, 4\), conv2d_1 \(2, 4, 4\)"
    with pytest.raises(clnet.ShapeError, match=reading):
        network.shapes((3, 4, 4))


def test_layers_named_at_construction_and_blocks(device, tmp_path):
    features = clnet.Sequential([L.Conv2D(2, 3, 3, padding=1), L.ReLU(), L.MaxPool2D(2, name="pool")],
                                device=device)
    assert [n.name for n in features.network.nodes] == ["0", "1", "pool"]
    x = clnet.Input((2, 4, 4))
    y = L.Dense(12, 3, name="fc")(L.Flatten()(features(x, name="features")))
    model = clnet.Model(x, y, device=device, seed=1)
    assert [n.name for n in model.network.nodes] == ["features.0", "features.1", "features.pool", "flatten", "fc"]
    assert list(model.state_dict()) == ["features.0.weight", "features.0.bias", "fc.weight", "fc.bias"]
    inputs = np.random.default_rng(0).normal(size=(2, 2, 4, 4))
    np.testing.assert_allclose(model.predict(inputs), clnet.load(_saved(model, tmp_path), device).predict(inputs),
                               rtol=0, atol=0)
    unnamed = clnet.Model(x, L.Flatten()(features(x)), device=device)  # a second call of the same layers
    assert [n.name for n in unnamed.network.nodes] == ["conv2d", "relu", "pool", "flatten"]
    with pytest.raises(ValueError, match="called twice"):
        clnet.Model(x, L.Add()([features(x), features(x)]), device=device)
    with pytest.raises(ValueError, match="non-empty string"):
        L.ReLU(name="")
    with pytest.raises(TypeError, match="one symbolic tensor"):
        features(np.zeros((2, 4, 4)))


def _saved(model, tmp_path):
    path = tmp_path / "model.clnet"
    model.save(path)
    return path
