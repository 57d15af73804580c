"""ONNX import (optional: skipped without onnx, onnxruntime and torch): networks exported by
torch.onnx.export (and by clnet's own export) import with their weights and give onnxruntime's and
torch's outputs, train as their torch twins do, and whatever clnet cannot express fails in one line
naming the node."""

import inspect
import json
import re
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet.cli import evaluate, predict, train
from clnet.export import to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from onnx import helper  # noqa: E402
from torch import nn  # noqa: E402

TOLERANCE = 2e-5


def export(net, shape, path, opset=13, batch="N", **options):
    """`net` in evaluation, exported by torch's TorchScript exporter (the one installed torch has
    without onnxscript) with input "input" of per-sample `shape` and the batch dimension `batch`
    (None: fixed at 1)."""
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(net.eval(), (torch.zeros(1, *shape),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=opset,
                          dynamic_axes={"input": {0: batch}} if batch else None, **options)
    return path


def onnx_outputs(path, x):
    """onnxruntime's outputs for the batch x, sample by sample for a graph of batch size 1."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [x[i:i + 1] for i in range(len(x))] if session.get_inputs()[0].shape[0] == 1 else [x]
    return np.concatenate([session.run(None, {"input": batch})[0] for batch in batches])


def torch_outputs(net, x):
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def raw_outputs(model, x):
    """The network's outputs themselves: predict without a loss's link."""
    return model.compile("mean_squared_error").predict(x)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def randomize_batchnorm(net, seed):
    """Running statistics, scales and shifts away from their defaults, so evaluation is no identity."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            for tensor, low, high in ((module.running_mean, -0.3, 0.3), (module.running_var, 0.5, 2),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.3, 0.3)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return net


def layer_types(model):
    return [type(node.layer).__name__ for node in model.network.nodes]


class SmallCNN(nn.Module):
    """Conv, BatchNorm, ReLU, MaxPool, x.view(x.size(0), -1), Linear, ReLU, Linear."""

    def __init__(self, channels=3, classes=10, size=8):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8 * (size // 2) ** 2, 16), nn.Linear(16, classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))


@pytest.mark.parametrize("opset, folding, batch", [(11, True, "N"), (13, False, "N"), (17, False, None)],
                         ids=["opset11-bn-folded", "opset13", "opset17-fixed-batch"])
def test_small_cnn_matches_onnxruntime_and_torch(device, tmp_path, opset, folding, batch):
    torch.manual_seed(0)
    net = randomize_batchnorm(SmallCNN(), 0)
    path = export(net, (3, 8, 8), tmp_path / "cnn.onnx", opset, batch, do_constant_folding=folding)
    model = clnet.from_onnx(path, device=device)
    assert layer_types(model) == ["Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "ReLU", "Dense"] if folding \
        else ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "ReLU", "Dense"]
    assert model.input_shape == (3, 8, 8) and model.loss.name == "cross_entropy"
    x = np.random.default_rng(1).random((5, 3, 8, 8), np.float32)
    logits = onnx_outputs(path, x)
    np.testing.assert_allclose(logits, torch_outputs(net, x), atol=TOLERANCE)
    np.testing.assert_allclose(model.predict(x), softmax(logits), atol=TOLERANCE)  # compiled for cross-entropy
    np.testing.assert_allclose(raw_outputs(model, x), logits, atol=TOLERANCE)
    if not folding:
        assert {key: value.shape for key, value in model.state_dict().items() if "num_batches" not in key} == \
            {key: tuple(value.shape) for key, value in net.state_dict().items() if "num_batches" not in key}


def test_torchvision_resnet18_imports_with_its_state_dict_keys(device, tmp_path):
    torch.manual_seed(1)
    net = randomize_batchnorm(torchvision.models.resnet18(num_classes=10), 1)
    x = np.random.default_rng(2).random((2, 3, 32, 32), np.float32)
    model = clnet.from_onnx(export(net, (3, 32, 32), tmp_path / "r18.onnx", do_constant_folding=False), device=device)
    preset = clnet.models.resnet18(device=device, input_shape=(3, 32, 32), stem="imagenet")
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in preset.state_dict().items()}
    for key, value in net.state_dict().items():
        if "num_batches" not in key:
            np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
    np.testing.assert_allclose(raw_outputs(model, x), torch_outputs(net, x), atol=1e-4)
    # with BatchNorm folded into the convolutions (the exporter's default), names come from torch's scopes
    folded = clnet.from_onnx(export(net, (3, 32, 32), tmp_path / "folded.onnx"), device=device)
    assert "BatchNorm2D" not in layer_types(folded)
    assert {"conv1.bias", "layer2.0.downsample.0.weight", "fc.weight"} <= set(folded.state_dict())
    np.testing.assert_allclose(raw_outputs(folded, x), torch_outputs(net, x), atol=1e-4)


def small_mobilenet_v2(classes=10):
    """torchvision's MobileNetV2 with two stages of inverted residuals (1x1 expansions, depthwise 3x3
    convolutions of groups = channels, ReLU6 as Clip, residual Adds)."""
    return torchvision.models.mobilenet_v2(num_classes=classes, inverted_residual_setting=[[1, 16, 1, 1],
                                                                                          [6, 24, 2, 2]])


def test_torchvision_mobilenet_v2_with_depthwise_convolutions(device, tmp_path):
    torch.manual_seed(7)
    net = randomize_batchnorm(small_mobilenet_v2(), 7)
    path = export(net, (3, 32, 32), tmp_path / "mobilenet.onnx", do_constant_folding=False)
    model = clnet.from_onnx(path, device=device)
    assert list(model.state_dict()) == list(net.state_dict())
    convs = [node.layer for node in model.network.nodes if isinstance(node.layer, L.Conv2D)]
    assert [conv.groups for conv in convs] == [1, 32, 1, 1, 96, 1, 1, 144, 1, 1]
    x = np.random.default_rng(10).random((3, 3, 32, 32), np.float32)
    np.testing.assert_allclose(raw_outputs(model, x), onnx_outputs(path, x), atol=1e-4)


def test_a_vgg_like_network_keeps_torchs_keys(device, tmp_path):
    """torchvision's VGG in small: features and classifier as nn.Sequential (with a Dropout that an
    export in evaluation leaves out), AdaptiveAvgPool2d as an AveragePool."""
    torch.manual_seed(6)
    net = nn.Sequential()
    net.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2))
    net.avgpool, net.flatten = nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten()
    net.classifier = nn.Sequential(nn.Linear(32, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 10))
    model = clnet.from_onnx(export(net, (3, 16, 16), tmp_path / "vgg.onnx"), device=device)
    assert list(model.state_dict()) == list(net.state_dict())
    x = np.random.default_rng(9).random((3, 3, 16, 16), np.float32)
    np.testing.assert_allclose(raw_outputs(model, x), torch_outputs(net, x), atol=TOLERANCE)


class Branches(nn.Module):
    """Two branches concatenated along channels, a residual Add, global average pooling as
    x.mean((2, 3)), a linear layer written as x @ W + b, and a Softmax at the end."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.left, self.right = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 2, 3, padding=2, dilation=2, bias=False)
        self.weight, self.bias = nn.Parameter(torch.randn(6, 5) * 0.3), nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(torch.cat([self.left(h), self.right(h)], 1) + h)
        return torch.softmax(h.mean((2, 3)) @ self.weight + self.bias, 1)


class Activations(nn.Module):
    """ReLU6 (Clip), padded AvgPool, SiLU (Sigmoid, Mul), LeakyReLU, strided Conv, Sigmoid, Tanh,
    Flatten, Dropout, Linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3, stride=2, padding=(1, 0))
        self.pool, self.drop, self.fc = nn.AvgPool2d(3, 2, padding=1), nn.Dropout(0.3), nn.Linear(6 * 3 * 2, 7)
        self.conv1.weight.data *= 20  # so that some inputs of ReLU6 lie above 6

    def forward(self, x):
        x = nn.functional.silu(self.pool(nn.functional.relu6(self.conv1(x))))
        x = torch.sigmoid(self.conv2(nn.functional.leaky_relu(x, 0.2)))
        return torch.tanh(self.fc(self.drop(torch.flatten(x, 1))))


def test_branches_and_merges_match(device, tmp_path):
    torch.manual_seed(2)
    net = Branches()
    path = export(net, (3, 7, 7), tmp_path / "branches.onnx", opset=17)
    model = clnet.from_onnx(path, device=device)
    assert sorted(layer_types(model)) == sorted(["Conv2D", "ReLU", "Conv2D", "Conv2D", "Concatenate", "Add", "ReLU",
                                                 "GlobalAvgPool2D", "Flatten", "Dense", "Softmax"])
    x = np.random.default_rng(3).random((4, 3, 7, 7), np.float32)
    probs = onnx_outputs(path, x)
    np.testing.assert_allclose(probs, torch_outputs(net, x), atol=TOLERANCE)
    np.testing.assert_allclose(model.predict(x), probs, atol=TOLERANCE)  # the Softmax is cross-entropy's link
    np.testing.assert_allclose(raw_outputs(model, x), probs, atol=TOLERANCE)  # or a layer of its own


def test_activations_pools_and_dropout_match(device, tmp_path):
    torch.manual_seed(3)
    net = Activations()
    # exported for training, so that the Dropout (ratio 0.3) is in the graph; it is the identity in evaluation
    path = export(net.train(), (1, 12, 11), tmp_path / "activations.onnx", opset=13,
                  training=torch.onnx.TrainingMode.TRAINING)
    model = clnet.from_onnx(path, device=device)
    assert layer_types(model) == ["Conv2D", "ReLU6", "AvgPool2D", "SiLU", "LeakyReLU", "Conv2D", "Sigmoid",
                                  "Flatten", "Dropout", "Dense", "Tanh"]
    assert model.network.nodes[8].layer.p == 0.3 and model.network.nodes[4].layer.negative_slope == 0.2
    x = np.random.default_rng(4).random((3, 1, 12, 11), np.float32)
    np.testing.assert_allclose(raw_outputs(model, x), torch_outputs(net, x), atol=TOLERANCE)


@pytest.mark.parametrize("make, size", [(lambda: SmallCNN(classes=4), 8), (lambda: small_mobilenet_v2(4), 16)],
                         ids=["cnn", "mobilenet_v2"])
def test_a_training_step_matches_torch(device, tmp_path, make, size):
    """Batch statistics in training, the running statistics' update, the gradients and SGD's update."""
    torch.manual_seed(4)
    net = randomize_batchnorm(make(), 4)
    path = export(net, (3, size, size), tmp_path / "net.onnx", do_constant_folding=False)
    model = clnet.from_onnx(path, device=device)
    rng = np.random.default_rng(5)
    x, y = rng.random((6, 3, size, size), np.float32), rng.integers(0, 4, 6)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.5))
    loss = model.train_on_batch(x, y)
    net.train()
    for module in net.modules():  # an export in evaluation leaves Dropout out: the twin trains without it too
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    expected = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    expected.backward()
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    state = model.state_dict()
    for key, value in net.state_dict().items():
        np.testing.assert_allclose(state[key], value.numpy(), atol=1e-5, err_msg=key)


def _graph_model(device):
    """A clnet graph of most layers, with asymmetric "same" padding, a normalisation, a BatchNorm
    that the export folds into the Dense before it and one it keeps, and a Softmax."""
    x = clnet.Input((3, 9, 9))
    h = L.MaxPool2D(3, stride=1, padding=1)(L.LeakyReLU(0.1)(L.Conv2D(3, 6, 4, padding="same")(x, name="stem")))
    branch = L.ReLU6()(L.Conv2D(6, 6, 3, padding=1, bias=False)(h, name="branch"))
    h = L.Concatenate()([L.Add()([h, branch]), L.SiLU()(L.Conv2D(6, 2, 1)(h))])
    h = L.Sigmoid()(L.BatchNorm2D(8)(h, name="mixed_bn"))
    h = L.Flatten()(L.GlobalAvgPool2D()(L.AvgPool2D(3, 2, padding=1)(h)))
    h = L.Dropout(0.2)(L.Tanh()(L.BatchNorm1D(8)(L.Dense(8, 8)(h, name="hidden"), name="hidden_bn")))
    model = clnet.Model(x, L.Dense(8, 5)(h, name="classifier"), device=device, seed=1)
    model.normalization = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    return model


@pytest.mark.parametrize("opset", [11, 13])
def test_clnet_export_round_trips(device, tmp_path, opset):
    rng = np.random.default_rng(6)
    x = rng.random((4, 3, 9, 9), np.float32)
    model = _graph_model(device).compile("cross_entropy", clnet.optim.SGD(0.1))
    model.train_on_batch(x, rng.integers(0, 5, 4))  # weights and running statistics move
    to_onnx(model, tmp_path / "graph.onnx", input_shape=(3, 9, 9), opset=opset)
    imported = clnet.from_onnx(tmp_path / "graph.onnx", device=device)
    assert imported.normalization == model.normalization
    assert "hidden_bn" not in [node.name for node in imported.network.nodes]  # folded into hidden
    state = imported.state_dict()
    kept = {key: value for key, value in model.state_dict().items() if not key.startswith("hidden_bn.")}
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in kept.items()}
    for key, value in kept.items():
        if not key.startswith("hidden.") and "num_batches" not in key:  # hidden's weights hold hidden_bn's
            np.testing.assert_array_equal(state[key], value, err_msg=key)
    np.testing.assert_allclose(imported.predict(x), model.predict(x), atol=TOLERANCE)
    np.testing.assert_allclose(imported.predict(x), onnx_outputs(tmp_path / "graph.onnx", x), atol=TOLERANCE)


def test_a_sequential_round_trips_with_its_keys(device, tmp_path):
    model = clnet.models.lenet5(device=device).compile("cross_entropy", "sgd")
    to_onnx(model, tmp_path / "lenet.onnx", input_shape=(1, 28, 28), opset=9)
    imported = clnet.from_onnx(tmp_path / "lenet.onnx", device=device)
    assert list(imported.state_dict()) == list(model.state_dict())
    x = np.random.default_rng(7).random((3, 1, 28, 28), np.float32)
    np.testing.assert_allclose(imported.predict(x), model.predict(x), atol=TOLERANCE)


def _graph(tmp_path, nodes, initializers=(), opset=13, output_shape=None):
    """An ONNX file of `nodes` (onnx.helper's) from "input" (N, 3, 8, 8), or (N, 3, 4, 4) at opset 10, to the last
    node's output; `initializers` are (name, array) pairs, float arrays stored as float32."""
    f32 = onnx.TensorProto.FLOAT
    arrays = [onnx.numpy_helper.from_array(a.astype(np.float32) if a.dtype.kind == "f" else a, name)
              for name, a in ((name, np.asarray(v)) for name, v in initializers)]
    shape = ["N", 3, 4, 4] if opset == 10 else ["N", 3, 8, 8]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", f32, shape)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], f32, output_shape)], arrays)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(n.domain, 1) for n in nodes if n.domain]
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_operands_of_older_opsets_and_gemm_options(device, tmp_path):
    """Opset 10 has Clip's bounds, Dropout's ratio and Unsqueeze's axes as attributes, and Softmax's
    axis 1 by default; Gemm's alpha, beta and transB=0 scale and transpose the weight and bias."""
    make, rng = helper.make_node, np.random.default_rng(8)
    nodes = [make("Clip", ["input"], ["clipped"], min=0.0, max=6.0),
             make("Dropout", ["clipped"], ["d", "mask"], ratio=0.25),
             make("Shape", ["d"], ["shape"]), make("Gather", ["shape", "zero"], ["n"], axis=0),
             make("Unsqueeze", ["n"], ["n1"], axes=[0]), make("Concat", ["n1", "minus_one"], ["target"], axis=0),
             make("Reshape", ["d", "target"], ["flat"]),
             make("Gemm", ["flat", "w", "b"], ["logits"], alpha=0.5, beta=2.0, transB=0),
             make("Softmax", ["logits"], ["probabilities"])]
    path = _graph(tmp_path, nodes, [("zero", np.array(0)), ("minus_one", np.array([-1])),
                                    ("w", rng.normal(size=(48, 5))), ("b", rng.normal(size=5))], opset=10)
    model = clnet.from_onnx(path, device=device)
    assert layer_types(model) == ["ReLU6", "Dropout", "Flatten", "Dense", "Softmax"]
    assert model.network.nodes[1].layer.p == 0.25
    x = rng.normal(3, 4, (4, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), onnx_outputs(path, x), atol=TOLERANCE)


CONV_WEIGHT = [("w", np.ones((4, 3, 3, 3)))]


@pytest.mark.parametrize("nodes, initializers, message", [
    ([helper.make_node("LSTM", ["input", "w"], ["y"], name="lstm1", hidden_size=4)], CONV_WEIGHT,
     "node lstm1 (LSTM): operator LSTM is not supported; clnet imports Add, AveragePool, "),
    ([helper.make_node("Relu", ["input"], ["r"], name="relu"),
      helper.make_node("Swirl", ["r"], ["y"], name="swirl", domain="my.ops")], [],
     "node swirl (Swirl): operator my.ops.Swirl (a custom domain) is not supported"),
    ([helper.make_node("Conv", ["input", "w"], ["y"], name="c", pads=[0, 0, 1, 1], strides=[2, 2])], CONV_WEIGHT,
     "node c (Conv): pads [0, 0, 1, 1] (auto_pad NOTSET) are uneven: clnet's Conv2D pads both sides equally"),
    ([helper.make_node("AveragePool", ["input"], ["y"], name="p", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], [],
     "node p (AveragePool): count_include_pad=0 with padding: clnet's AvgPool2D counts the padding"),
    ([helper.make_node("Clip", ["input", "lo", "hi"], ["y"], name="clip")], [("lo", -1), ("hi", 1)],
     "node clip (Clip): clips to [-1, 1]: clnet has ReLU6"),
    ([helper.make_node("Reshape", ["input", "s"], ["y"], name="r")], [("s", [-1, 64])],
     "node r (Reshape): reshapes (N, 3, 8, 8) to [-1, 64]: clnet keeps the batch first and reshapes each"),
    ([helper.make_node("Reshape", ["input", "s"], ["y"], name="r")], [("s", [0, 3, 64])],
     "node r (Reshape): reshapes (3, 8, 8) to (3, 64) per sample: clnet reshapes only to (features,) (Flatten)"),
    ([helper.make_node("Mul", ["input", "input"], ["y"], name="square")], [],
     "node square (Mul): operator Mul is not supported"),
    ([helper.make_node("Relu", ["input"], ["a"], name="relu"), helper.make_node("Add", ["a", "k"], ["y"], name="a")],
     [("k", 1.0)], "node a (Add): adds a constant: clnet takes a constant added only as the bias after MatMul"),
], ids=["LSTM", "custom op", "uneven pads", "count_include_pad=0", "Clip", "batch reshaped", "sample reshaped", "Mul",
        "Add of a constant"])
def test_what_clnet_cannot_express_fails_in_one_line(device, tmp_path, nodes, initializers, message):
    path = _graph(tmp_path, nodes, [(k, np.asarray(v)) for k, v in initializers])
    with pytest.raises(clnet.ModelFileError) as caught:
        clnet.from_onnx(path, device=device)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


@pytest.mark.parametrize("change, message", [
    (lambda g: g.output.append(helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, None)),
     "the graph has 2 outputs: clnet models have one"),
    (lambda g: g.input.append(helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])),
     "the graph has 2 inputs (input, mask): clnet models have one"),
    (lambda g: setattr(g.input[0].type.tensor_type, "elem_type", onnx.TensorProto.UINT8),
     "the input 'input' is not float32"),
], ids=["two outputs", "two inputs", "uint8 input"])
def test_graphs_of_other_signatures_are_refused(device, tmp_path, change, message):
    path = _graph(tmp_path, [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Relu", ["a"], ["b"])])
    proto = onnx.load(str(path))
    change(proto.graph)
    onnx.save(proto, str(path))
    with pytest.raises(clnet.ModelFileError, match=re.escape(message)):
        clnet.from_onnx(path, device=device)


def test_a_dynamic_image_size_is_refused(device, tmp_path):
    path = export(SmallCNN(), (3, 8, 8), tmp_path / "cnn.onnx")
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"  # as dynamic_axes={2: "height"}
    onnx.save(proto, str(path))
    with pytest.raises(clnet.ModelFileError, match="dynamic dimension H \\(height\\): clnet needs fixed sizes"):
        clnet.from_onnx(path, device=device)


def test_bad_files_fail_in_one_line(device, tmp_path):
    good = export(SmallCNN(), (3, 8, 8), tmp_path / "cnn.onnx").read_bytes()
    cases = {"text.onnx": b"this is no ONNX model\n", "empty.onnx": b"", "truncated.onnx": good[:len(good) // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(clnet.ModelFileError, match=f"{name}: is not an ONNX model") as caught:
            clnet.from_onnx(tmp_path / name, device=device)
        assert "\n" not in str(caught.value)
    with pytest.raises(clnet.ModelFileError, match="missing.onnx: no such ONNX file"):
        clnet.from_onnx(tmp_path / "missing.onnx", device=device)


def test_missing_onnx_says_how_to_install(device, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(clnet.ClnetError, match=r'pip install onnx .*pip install "\.\[onnx\]"'):
        clnet.from_onnx(tmp_path / "model.onnx", device=device)


# ---------------------------------------------------------------------- the commands

def _runner():
    """A runner that keeps stderr apart (click 8.2 always does; older versions need mix_stderr=False)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="module")
def mnist_onnx(tmp_path_factory):
    """A small CNN for MNIST-5k's 28x28 grey images, exported by torch."""
    torch.manual_seed(5)
    return export(randomize_batchnorm(SmallCNN(channels=1, size=28), 5), (1, 28, 28),
                  tmp_path_factory.mktemp("onnx") / "mnist.onnx", do_constant_folding=False)


def test_eval_and_predict_read_onnx_files(mnist_onnx, tmp_path):
    test = clnet.datasets.load("mnist-5k")[1]
    probs = softmax(onnx_outputs(mnist_onnx, test.x.astype(np.float32) / 255))
    result = _runner().invoke(evaluate, [str(mnist_onnx), "--json", "--device", "0"])
    assert result.exit_code == 0, result.stderr
    report = clnet.metrics.report(probs, test.y, k=5)
    out = json.loads(result.stdout)
    assert out["accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)
    assert out["top_k_accuracy"] == pytest.approx(report["top_k_accuracy"], abs=1e-6)
    np.save(tmp_path / "x.npy", test.x[:3].astype(np.float32) / 255)
    result = _runner().invoke(predict, [str(mnist_onnx), str(tmp_path / "x.npy"), "--json", "--device", "0"])
    assert result.exit_code == 0, result.stderr
    tops = [row["top_k"][0] for row in json.loads(result.stdout)]
    assert [t["index"] for t in tops] == list(probs[:3].argmax(axis=1))
    assert [t["probability"] for t in tops] == pytest.approx(list(probs[:3].max(axis=1)), abs=1e-5)


def test_train_fine_tunes_an_onnx_network(mnist_onnx, tmp_path):
    (x, y), _ = clnet.datasets.load_mnist_5k()
    np.savez(tmp_path / "digits.npz", x_train=x[:300], y_train=y[:300], x_test=x[300:400], y_test=y[300:400])
    save = tmp_path / "tuned.clnet"
    result = _runner().invoke(train, ["--model", str(mnist_onnx), "--dataset", str(tmp_path / "digits.npz"),
                                      "--epochs", "1", "--batch-size", "50", "--lr", "0.05", "--device", "0",
                                      "--save", str(save)])
    assert result.exit_code == 0, result.stderr
    assert f"Model:     {mnist_onnx}" in result.stdout and "Test accuracy" in result.stdout
    tuned = clnet.load(save, device=clnet.device(device=0)).state_dict()
    exported = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(mnist_onnx)).graph.initializer}
    assert tuned.keys() >= {"conv.weight", "bn.running_var", "fc2.weight"}
    assert not np.allclose(tuned["fc2.weight"], exported["fc2.weight"])  # trained
    np.savez(tmp_path / "three.npz", x=x[:30], y=y[:30] % 3)
    result = _runner().invoke(train, ["--model", str(mnist_onnx), "--dataset", str(tmp_path / "three.npz"),
                                      "--device", "0"])
    assert result.exit_code == 1 and "gives outputs (10,) per image but" in result.stderr
    assert "has 3 classes: export the network with one output per class" in result.stderr


def test_train_refuses_a_model_that_is_neither_a_preset_nor_onnx():
    result = _runner().invoke(train, ["--model", "model.pt"])
    assert result.exit_code == 2 and "'model.pt' is neither a preset (cifar-cnn, " in result.stderr
