"""ONNX export of a clnet model (a Sequential or a graph): `to_onnx(model, "model.onnx")`, or `clnet-export`.

Needs the `onnx` package (`pip install onnx`, or clnet's `onnx` extra). The graph has one input, "input": float32
of shape (N, *input_shape) with a symbolic batch dimension "N", images already scaled to [0, 1]
(uint8 images are not converted: divide them by 255 first). The model's per-channel normalisation
((x - mean) / std) comes first as Sub and Div nodes, then the nodes of each layer's `to_onnx`, in
the network's order, each reading the ONNX values of the nodes it reads:

    Dense -> Gemm (transB=1: the weight is PyTorch's (out, in))
    Conv2D -> Conv (pads [top, left, bottom, right]; "same" with an even kernel pads bottom/right more)
    MaxPool2D / AvgPool2D -> MaxPool / AveragePool (count_include_pad=1)
    GlobalAvgPool2D -> GlobalAveragePool        Flatten -> Flatten(axis=1)
    AdaptiveAvgPool2D -> GlobalAveragePool (1x1 output), AveragePool (the output divides the image),
        otherwise MatMul by the bins' averaging matrices over columns, then rows
    ReLU, Sigmoid, Tanh -> the same             Softmax -> Softmax(axis=1)
    BatchNorm1D / BatchNorm2D -> BatchNormalization (running statistics; ones/zeros without affine)
    Add -> Sum                                  Concatenate -> Concat(axis=1)
    Dropout -> nothing (the identity in inference)

The output, "probabilities", is what `model.predict` returns: for the loss "cross_entropy" a final
Softmax over each sample's outputs (unless the model already ends with Softmax), for
"binary_cross_entropy" a final Sigmoid (unless it ends with Sigmoid), otherwise the raw outputs.
Weights are initializers named by their state_dict keys ("0.weight", ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import layers as L
from .errors import ClnetError, InputError
from .files import replace_atomically
from .layers.onnx_builder import OnnxBuilder
from .network import INPUT
from .version import __version__

if TYPE_CHECKING:
    import onnx

ONNX_HINT = ("ONNX export and import need the onnx package: pip install onnx (or clnet's onnx extra: "
             'pip install ".[onnx]" in its checkout)')
MIN_OPSET = 9  # BatchNormalization without the "spatial" attribute


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ClnetError(ONNX_HINT) from None
    return onnx, helper, numpy_helper


def _normalization(b, model, input_shape):
    mean, std = (np.asarray(part, np.float32).ravel() for part in model.normalization)
    channels = 1 if len(input_shape) == 2 else input_shape[0]
    if len(mean) != channels or len(std) != channels:
        raise InputError(f"the model's normalisation has {len(mean)} means and {len(std)} stds but its "
                         f"input {tuple(input_shape)} has {channels} channels")
    shape = (1, channels) + (1,) * (len(input_shape) - 1) if len(input_shape) != 2 else (1, 1, 1)
    b.add("Sub", "normalize_sub", [b.constant("normalization.mean", mean.reshape(shape))])
    b.add("Div", "normalize_div", [b.constant("normalization.std", std.reshape(shape))])


def _final_activation(b, model, layers, out_shape):
    """The link of model.predict: softmax over each sample's flattened outputs for cross-entropy,
    sigmoid for binary cross-entropy (unless the model ends with it), nothing otherwise."""
    loss = getattr(model.loss, "name", None)
    last = layers[-1] if layers else None
    if loss == "cross_entropy" and not isinstance(last, L.Softmax):
        if len(out_shape) == 1:
            b.add("Softmax", "probabilities.Softmax", axis=1, output="probabilities")
        else:  # predict applies the softmax to all of a sample's outputs, then keeps their shape
            b.add("Flatten", "probabilities.Flatten", axis=1)
            b.add("Softmax", "probabilities.Softmax", axis=1)
            shape = b.constant("probabilities.shape", np.array((-1, *out_shape), np.int64))
            b.add("Reshape", "probabilities.Reshape", [shape], output="probabilities")
    elif loss == "binary_cross_entropy" and not isinstance(last, L.Sigmoid):
        b.add("Sigmoid", "probabilities.Sigmoid", output="probabilities")
    else:
        b.add("Identity", "probabilities", output="probabilities")


def build_onnx(model, input_shape: Sequence[int] | None = None, opset: int = 13) -> onnx.ModelProto:
    """The onnx.ModelProto of a clnet model (checked by onnx.checker), without writing it. A
    BatchNorm that alone reads a Dense or Conv2D is folded into its weight and bias, as evaluation
    runs it.

    Args:
        model: a clnet.Model (a Sequential or a graph).
        input_shape: the shape of one sample, e.g. (1, 28, 28); None takes the model's, known once
            it has been trained, evaluated or loaded from a file.
        opset: the ONNX opset, from MIN_OPSET (9) to the newest the installed onnx knows.

    Raises:
        ClnetError: the onnx package is missing.
        InputError: the opset is out of range, the input shape is unknown, or a layer has no export.
        ShapeError: the model cannot take `input_shape`.

    Example:
        >>> proto = build_onnx(model, input_shape=(1, 28, 28))
        >>> [node.op_type for node in proto.graph.node]
    """
    onnx, helper, numpy_helper = _import_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= newest:
        raise InputError(f"opset {opset} is not supported: choose one from {MIN_OPSET} to {newest} "
                         f"(the installed onnx {onnx.__version__})")
    opset = int(opset)
    input_shape = tuple(int(d) for d in (input_shape or model.input_shape or ()))
    if not input_shape:
        raise InputError("the model's input shape is unknown: pass input_shape=(C, H, W), or export a model "
                         "that has been trained, evaluated or loaded from a file")
    shapes = model.network.shapes(input_shape)  # checks every shape, naming the layer
    out_shape = shapes[model.network.output]
    state = model.state_dict()
    b = OnnxBuilder(helper, numpy_helper, opset)
    if model.normalization is not None:
        _normalization(b, model, input_shape)
    made = {INPUT: b.value}  # the ONNX value of each network value
    folds = {stage.name: stage.folded for stage in model.network.stages(input_shape, fold_norms=True) if stage.folded}
    into = {norm.name: name for name, norm in folds.items()}  # a folded BatchNorm: its producer gives its value
    for node in model.network.nodes:
        if node.name in into:
            made[node.name] = made[into[node.name]]
            continue
        b.inputs = [made[name] for name in node.inputs]
        b.input_shapes = [shapes[name] for name in node.inputs]
        b.value = b.inputs[0]
        arrays = node.layer.arrays_in(state, node.name)
        if node.name in folds:
            norm = folds[node.name]
            arrays = norm.layer.folded_arrays(arrays, norm.layer.arrays_in(state, norm.name))
        node.layer.to_onnx(b, f"{node.name}.{type(node.layer).__name__}", node.name, arrays)
        made[node.name] = b.value
    b.value = made[model.network.output]
    _final_activation(b, model, model.network.layers, out_shape)
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        b.nodes, "clnet", [helper.make_tensor_value_info("input", f32, ["N", *input_shape])],
        [helper.make_tensor_value_info("probabilities", f32, ["N", *out_shape])], b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="clnet",
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string="float32 input (N, " + ", ".join(map(str, input_shape))
                              + ") scaled to [0, 1]; output: probabilities (as clnet's model.predict)")
    proto.producer_version = __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ClnetError(f"the exported ONNX graph fails onnx.checker (a clnet bug, please report it): {exc}") \
            from None
    return proto


def to_onnx(model, path: str | os.PathLike, input_shape: Sequence[int] | None = None,
            opset: int = 13) -> onnx.ModelProto:
    """Write `model` (a clnet.Model) as an ONNX file at `path`, atomically; returns the
    onnx.ModelProto. `input_shape` (per sample, e.g. (1, 28, 28)) defaults to the model's. The
    graph takes float32 inputs "input" (N, *input_shape) scaled to [0, 1] (uint8 images are not
    handled: divide them by 255) and gives "probabilities" as model.predict does.

    Args:
        model: a clnet.Model (a Sequential or a graph).
        path: the file to write; an existing folder there is an error.
        input_shape, opset: as `build_onnx`.

    Example:
        >>> from clnet.export import to_onnx
        >>> to_onnx(model, "lenet.onnx")
        >>> import onnxruntime
        >>> session = onnxruntime.InferenceSession("lenet.onnx")
        >>> probs = session.run(None, {"input": (x / 255).astype("float32")})[0]   # x: (n, 1, 28, 28) uint8
    """
    proto = build_onnx(model, input_shape, opset)
    data = proto.SerializeToString()
    replace_atomically(path, lambda f: f.write(data))
    return proto
