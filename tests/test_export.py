"""ONNX export (optional: skipped without onnx and onnxruntime): onnxruntime runs the exported graph
of each preset and of a net using every other layer, trained one step, and must match model.predict."""

import sys

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet.cli import export
from clnet.export import to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4


def _trained(model, x, classes, loss="cross_entropy", normalize=False):
    """`model` compiled and trained one step (so weights and running statistics have moved)."""
    if normalize:
        channels = x.shape[1]
        model.normalization = (tuple(0.4 + 0.05 * np.arange(channels)), tuple(0.3 + 0.1 * np.arange(channels)))
    model.compile(loss=loss, optimizer=clnet.optim.SGD(0.05, momentum=0.9))
    rng = np.random.default_rng(1)
    y = rng.integers(0, classes, len(x)) if loss == "cross_entropy" else rng.random((len(x), classes), np.float32)
    model.train_on_batch(x, y)
    return model


def _onnx_outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    return session.run(None, {"input": x})[0]


def _check(model, x, tmp_path):
    path = tmp_path / "model.onnx"
    to_onnx(model, path)
    onnx.checker.check_model(onnx.load(str(path)))
    expected, got = model.predict(x), _onnx_outputs(path, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    return expected


PRESETS = {"mlp": (1, 28, 28), "lenet5": (1, 28, 28), "mnist_cnn": (1, 28, 28), "cifar_cnn": (3, 32, 32)}


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_match_predict(device, preset, normalize, tmp_path):
    shape = PRESETS[preset]
    x = np.random.default_rng(0).random((4, *shape), np.float32)
    model = _trained(getattr(clnet.models, preset)(device=device, input_shape=shape), x, 10, normalize=normalize)
    probs = _check(model, x, tmp_path)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)  # the exported softmax is there


def _zoo(device, final=()):
    """BatchNorm2d/1d (with and without affine), Dropout, AvgPool2D, GlobalAvgPool2D, "same" padding
    with even kernels (asymmetric), Tanh, Sigmoid, MaxPool2D with padding, strides and dilation."""
    return clnet.Sequential([
        L.Conv2D(3, 6, 4, padding="same"), L.BatchNorm2d(6), L.Tanh(), L.Dropout(0.25),
        L.AvgPool2D(3, stride=2, padding=1),
        L.Conv2D(6, 8, (2, 3), padding="same", dilation=(2, 1)), L.BatchNorm2d(8, affine=False), L.ReLU(),
        L.MaxPool2D(2, stride=1, padding=1),
        L.Conv2D(8, 8, 3, stride=2, padding=(0, 1), bias=False), L.Sigmoid(), L.GlobalAvgPool2D(), L.Flatten(),
        L.Dense(8, 12), L.BatchNorm1d(12), L.Dropout(0.5), L.Tanh(), L.Dense(12, 5), *final], device=device, seed=3)


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_other_layers_match_predict(device, normalize, tmp_path):
    x = np.random.default_rng(0).random((6, 3, 13, 11), np.float32)
    model = _trained(_zoo(device), x, 5, normalize=normalize)
    before = model.state_dict()
    assert not np.allclose(before["1.running_mean"], 0) and not np.allclose(before["14.running_var"], 1)
    _check(model, x, tmp_path)
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert "BatchNormalization" not in nodes and nodes.count("Conv") == 3  # each folded into the layer before


@pytest.mark.parametrize("loss, final", [("cross_entropy", [L.Softmax()]), ("binary_cross_entropy", []),
                                         ("binary_cross_entropy", [L.Sigmoid()]), ("mean_squared_error", [])])
def test_output_link_follows_the_loss(device, loss, final, tmp_path):
    x = np.random.default_rng(2).random((6, 3, 9, 9), np.float32)
    model = _trained(_zoo(device, final), x, 5, loss=loss)
    out = _check(model, x, tmp_path)
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert nodes.count("Softmax") == (loss == "cross_entropy")
    assert nodes.count("Sigmoid") == 1 + (loss == "binary_cross_entropy")
    if loss == "mean_squared_error":
        assert out.min() < 0 or out.max() > 1  # raw outputs, no link


def test_an_add_with_its_activation_fused_exports_as_sum_then_relu(device, tmp_path):
    """resnet20 runs each block's ReLU in its Add's pass; the graph keeps both nodes."""
    x = np.random.default_rng(6).random((3, 3, 32, 32), np.float32)
    model = _trained(clnet.models.resnet20(device=device), x, 10)
    adds = [stage for stage in model.network.stages((3, 32, 32), fold_norms=True) if isinstance(stage.layer, L.Add)]
    assert len(adds) == 9 and all(stage.act == L.ReLU().kernel_options() for stage in adds)
    _check(model, x, tmp_path)
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert [nodes[i + 1] for i, op in enumerate(nodes) if op == "Sum"] == ["Relu"] * 9


@pytest.mark.parametrize("opset", [9, 10, 11, 13])
def test_relu6_exports_at_every_opset(device, opset, tmp_path):
    """Clip's bounds are attributes before opset 11 and inputs from it on."""
    x = np.random.default_rng(4).normal(0, 8, (5, 6)).astype(np.float32)
    model = clnet.Sequential([L.Dense(6, 6), L.ReLU6(), L.Dense(6, 3)], device=device)
    path = tmp_path / "model.onnx"
    to_onnx(model, path, input_shape=(6,), opset=opset)
    clip = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Clip")
    assert (len(clip.input), len(clip.attribute)) == ((1, 2) if opset < 11 else (3, 0))
    np.testing.assert_allclose(_onnx_outputs(path, x), model.predict(x), rtol=0, atol=TOLERANCE)


def test_softmax_over_image_outputs(device, tmp_path):
    """predict's softmax spans all of a sample's outputs, in their shape."""
    x = np.random.default_rng(3).random((4, 2, 5, 5), np.float32)
    model = clnet.Sequential([L.Conv2D(2, 3, 3), L.MaxPool2D(2)], device=device)
    model.compile("cross_entropy", "sgd")
    model.predict(x)
    assert _check(model, x, tmp_path).shape == (4, 3, 1, 1)


def test_uint8_images_become_floats_in_0_1(device, tmp_path):
    x = np.random.default_rng(4).integers(0, 256, (3, 1, 28, 28)).astype(np.uint8)
    model = _trained(clnet.models.lenet5(device=device), x.astype(np.float32) / 255, 10, normalize=True)
    to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28))
    np.testing.assert_allclose(_onnx_outputs(tmp_path / "m.onnx", x.astype(np.float32) / 255), model.predict(x),
                               atol=TOLERANCE)


def _runner():
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture
def model_file(device, tmp_path):
    x = np.random.default_rng(5).random((4, 1, 28, 28), np.float32)
    model = _trained(clnet.models.lenet5(device=device), x, 10, normalize=True)
    model.save(tmp_path / "lenet.clnet")
    return tmp_path / "lenet.clnet", model, x, str(device.info.index)


def test_cli_writes_a_checked_model(model_file, tmp_path):
    path, model, x, index = model_file
    out = tmp_path / "lenet.onnx"
    result = _runner().invoke(export, [str(path), str(out), "--opset", "17", "--device", index])
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "Wrote" in result.stdout and "(N, 1, 28, 28)" in result.stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    np.testing.assert_allclose(_onnx_outputs(out, x), model.predict(x), atol=TOLERANCE)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("args, message", [(["--opset", "99"], "opset 99"), ([], "no such model file")])
def test_cli_failures_are_one_line(model_file, tmp_path, args, message):
    path = model_file[0] if args else tmp_path / "missing.clnet"
    result = _runner().invoke(export, [str(path), str(tmp_path / "m.onnx"), "--device", model_file[3], *args])
    assert result.exit_code == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_says_how_to_install(model_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(clnet.ClnetError, match=r'pip install onnx .*pip install "\.\[onnx\]"'):
        to_onnx(model_file[1], tmp_path / "m.onnx")
    result = _runner().invoke(export, [str(model_file[0]), str(tmp_path / "m.onnx"), "--device", model_file[3]])
    assert result.exit_code == 1 and 'pip install onnx' in result.stderr
    assert not (tmp_path / "m.onnx").exists()
