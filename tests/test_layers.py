"""Every layer of the registry (layer_registry.py) in evaluation: its forward pass on the device
against its float64 reference, and its ONNX export run by onnxruntime against the device; the
registry against clnet.layers, so that no layer goes unchecked; every layer's docstring.

Layers of one input run as a one-layer Sequential; layers of several inputs (the merge layers) in a
plan of their own, through their forward pass and an ONNX graph of their node alone."""

import inspect
import re

import numpy as np
import pytest

import clnet
from clnet import layers as L

from conftest import Slot, SlotPlan, execute
from layer_registry import LAYER_CASES, case_id
from reference import forward

SINGLE_INPUT_CASES = [case for case in LAYER_CASES if not isinstance(case[1], list)]
MERGE_CASES = [case for case in LAYER_CASES if isinstance(case[1], list)]


def _model(device, case):
    """A one-layer model on `case`'s layer, its parameters and buffers away from their initial
    values (running variances positive), and an input batch."""
    layer, shape, batch = case
    model = clnet.Sequential([layer], device=device, seed=1)
    rng = np.random.default_rng(LAYER_CASES.index(case))
    state = {key: (rng.uniform(0.5, 2.0, value.shape) if key.endswith("running_var")
                   else value + rng.normal(0, 0.5, value.shape)).astype(np.float32)
             for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    return model, rng.normal(size=(batch, *shape)).astype(np.float32)


def _layer_classes(cls=L.Layer):
    for sub in cls.__subclasses__():
        yield sub
        yield from _layer_classes(sub)


def test_the_registry_holds_every_layer():
    """Every public layer class of clnet.layers (but the Activation base) is in LAYERS, and every
    one of LAYERS has a registry entry."""
    public = {cls for cls in _layer_classes() if cls.__module__.startswith("clnet.layers.")
              and not cls.__name__.startswith("_")}
    assert public - {L.Activation} == set(L.LAYERS.values())
    assert {type(layer) for layer, _, _ in LAYER_CASES} == set(L.LAYERS.values())
    assert all(L.LAYERS[name] is cls and cls.__name__ == name for name, cls in L.LAYERS.items())


@pytest.mark.parametrize("name", sorted(L.LAYERS))
def test_every_layer_documents_its_arguments_shapes_and_an_example(name):
    doc = inspect.getdoc(L.LAYERS[name])
    assert "\nShape:\n" in doc and "\nExample:\n" in doc, name
    arguments = [a for a in inspect.signature(L.LAYERS[name]).parameters if a != "name"]  # Layer's, documented there
    if arguments:
        documented = doc.split("\nArgs:\n")[1].split("\n\n")[0]
        assert all(re.search(rf"\b{argument}\b", documented) for argument in arguments), name


def test_every_layer_takes_a_name():
    assert "`name=`" in inspect.getdoc(L.Layer)
    for cls in L.LAYERS.values():
        assert "name" in inspect.signature(cls).parameters, cls


@pytest.mark.parametrize("case", SINGLE_INPUT_CASES, ids=[case_id(c) for c in SINGLE_INPUT_CASES])
def test_forward_matches_the_reference(device, case):
    model, x = _model(device, case)
    expected = forward(model.layers, model.state_dict(), x)
    got = model.predict(x)
    assert got.shape == expected.shape == (len(x), *model.layers[0].output_shape(x.shape[1:]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", SINGLE_INPUT_CASES, ids=[case_id(c) for c in SINGLE_INPUT_CASES])
def test_onnx_export_matches_the_device(device, case, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from clnet.export import to_onnx

    model, x = _model(device, case)
    to_onnx(model, tmp_path / "layer.onnx", input_shape=x.shape[1:])
    session = ort.InferenceSession(str(tmp_path / "layer.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x), rtol=0, atol=1e-4)


def _merge_on_device(device, case):
    """The inputs of a merge layer's case and its forward pass's output on the device."""
    layer, shapes, batch = case
    rng = np.random.default_rng(LAYER_CASES.index(case))
    xs = [rng.normal(size=(batch, *shape)).astype(np.float32) for shape in shapes]
    plan = SlotPlan(device)
    y = layer.forward(L.LayerContext(plan, {}, {}, {}), *(Slot(device, x, 5 + 4 * i).tensor for i, x in enumerate(xs)))
    execute(plan)
    return xs, plan.read(y)


@pytest.mark.parametrize("case", MERGE_CASES, ids=[case_id(c) for c in MERGE_CASES])
def test_merge_forward_matches_the_reference(device, case):
    layer, shapes, batch = case
    xs, got = _merge_on_device(device, case)
    assert got.shape == (batch, *layer.output_shape(*shapes))
    np.testing.assert_allclose(got, layer.reference({}, *xs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", MERGE_CASES, ids=[case_id(c) for c in MERGE_CASES])
def test_merge_onnx_export_matches_the_device(device, case):
    """The layer's nodes in a graph of their own, its inputs named as the export will name them."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper

    from clnet.layers.onnx_builder import OnnxBuilder

    layer, shapes, batch = case
    xs, got = _merge_on_device(device, case)
    builder = OnnxBuilder(helper, numpy_helper)
    builder.inputs = [f"{i}.out" for i in range(len(xs))]
    builder.value = builder.inputs[0]
    layer.to_onnx(builder, f"merge.{type(layer).__name__}", "merge", {})
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        builder.nodes, "merge", [helper.make_tensor_value_info(name, f32, ["N", *shape])
                                 for name, shape in zip(builder.inputs, shapes)],
        [helper.make_tensor_value_info(builder.value, f32, ["N", *layer.output_shape(*shapes)])])
    opsets = [helper.make_opsetid("", 13)]  # and the oldest IR that has it, as export writes: any onnxruntime reads it
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, dict(zip(builder.inputs, xs)))
    np.testing.assert_allclose(outputs[0], got, rtol=0, atol=1e-6)
