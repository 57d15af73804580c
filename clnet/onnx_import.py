"""ONNX import: `from_onnx("model.onnx")` builds a clnet.Model from the ONNX graph of an image
classifier, as torch.onnx.export and clnet's own export write them, with its weights loaded.

Needs the `onnx` package (`pip install onnx`, or clnet's `onnx` extra). The graph has one input, float32 (N, C, H, W)
(or (N, features)) with C, H and W fixed (the batch N may be symbolic), and one output. Each node
becomes a clnet layer reading the layers its inputs come from:

    Conv -> Conv2D (pads equal on both sides, or as padding="same" at stride 1; group -> groups)
    Gemm (transB 0 or 1; alpha and beta scale the weight and bias), MatMul [+ Add of a constant] -> Dense
    BatchNormalization -> BatchNorm2D / BatchNorm1D (its running statistics; ONNX's momentum m as 1 - m)
    MaxPool, AveragePool -> MaxPool2D, AvgPool2D (padded average pools must count the padding)
    GlobalAveragePool, ReduceMean over (H, W) -> GlobalAvgPool2D
    Flatten(axis=1); Reshape / Squeeze to (N, features) -> Flatten; to the same shape -> nothing
    Relu, Sigmoid, Tanh, LeakyRelu, Softmax over features -> the same layers
    Clip to [0, 6] -> ReLU6, to [0, inf) -> ReLU; Mul(x, Sigmoid(x)) -> SiLU
    Add, Sum of graph values -> Add; Concat along channels (or features) -> Concatenate
    Dropout -> Dropout(ratio) (the identity in inference, as in ONNX; it trains as the original did)
    Identity -> nothing; Sub and Div of constants right after the input -> the model's normalisation

Constants (initializers, Constant nodes and what can be computed from them and from shapes, such as
the Shape / Gather / Unsqueeze / Concat chain of torch's x.view(x.size(0), -1)) are folded; nodes
whose outputs do not lead to the graph's output are ignored. Anything else (another operator, an
attribute clnet cannot express, a dynamic image size) raises a ModelFileError naming the node.

A layer's node is named after its weight (the initializer "layer1.0.conv1.weight" names the node
"layer1.0.conv1", so that a torchvision network imports with torchvision's state_dict keys), else
after the ONNX node ("/layer1/layer1.0/relu/Relu", torch's module scope, gives "layer1.0.relu").
"""

from __future__ import annotations

import os
import re
from math import ceil, prod

import numpy as np

from . import layers as L
from .device import Device
from .errors import ModelFileError, ShapeError
from .export import _import_onnx
from .files import special_kind
from .model import Model
from .network import INPUT

#: The ONNX opsets (of the default domain) whose operators the importer knows.
OPSETS = range(9, 26)
#: Stands for the batch size in folded shapes (the Shape of a graph value): no dimension has it.
_BATCH = -(2 ** 62)


def from_onnx(path: str | os.PathLike, device: Device | list[Device] | None = None, seed: int = 0) -> Model:
    """The clnet.Model of an ONNX file, its weights loaded, compiled with the cross-entropy loss
    (binary cross-entropy when the graph ends with Sigmoid) and a default SGD optimizer, as
    `clnet.load` does: `predict` returns class probabilities (the softmax of an exported network's
    logits), `evaluate` works at once, and `compile` + `fit` fine-tune it.

    Args:
        path: an .onnx file, such as torch.onnx.export writes (opsets 9 to 25).
        device: a clnet.Device (default: the best device), or a list of them (replicas).
        seed: as for clnet.Model (dropout masks, and the initial values before the weights load).

    The graph's input is taken as float32 images scaled to [0, 1], as clnet feeds uint8 images;
    a network trained on normalised images needs `model.normalization = (mean, std)` (per channel)
    unless its graph normalises them itself.

    Raises:
        ClnetError: the onnx package is missing.
        ModelFileError: the file is missing or not ONNX, or holds what clnet cannot express: an
            unsupported operator or attribute, a dynamic image size, several inputs or outputs.

    Example:
        >>> torch.onnx.export(net.eval(), torch.zeros(1, 3, 32, 32), "net.onnx", dynamo=False,
        ...                   input_names=["input"], dynamic_axes={"input": {0: "N"}})
        >>> model = clnet.from_onnx("net.onnx", device=clnet.device(platform="pocl"))
        >>> model.predict(x)                                   # probabilities (N, classes)
        >>> model.compile("cross_entropy", clnet.optim.SGD(0.01, momentum=0.9)).fit(x, y, epochs=2)
    """
    onnx, helper, numpy_helper = _import_onnx()
    path = os.fspath(path)
    graph = _Importer(_read(onnx, path), path, helper, numpy_helper)
    model = Model(graph.input, graph.output, device=device, seed=seed)
    model.load_state_dict(graph.state)
    model.normalization = graph.normalization
    last = model.network.nodes[-1].layer
    return model.compile("binary_cross_entropy" if isinstance(last, L.Sigmoid) else "cross_entropy", "sgd")


def _read(onnx, path):
    """The onnx.ModelProto in `path`, with a graph to import: the file and any external data files
    its tensors name are regular files (checked with stat before they are opened: a FIFO would block
    the reader, a device never end)."""
    _refuse_special(path, path, "an ONNX file")
    try:
        proto = onnx.load(path, load_external_data=False)
        folder = os.path.dirname(path)
        helper = onnx.external_data_helper
        tensors = [*proto.graph.initializer,
                   *(attribute.t for node in proto.graph.node for attribute in node.attribute if attribute.HasField("t"))]
        for tensor in filter(helper.uses_external_data, tensors):
            location = helper.ExternalDataInfo(tensor).location
            _refuse_special(path, os.path.join(folder, location), f"the data of the tensor {tensor.name!r}")
            helper.load_external_data_for_tensor(tensor, folder)
    except ModelFileError:
        raise
    except Exception as exc:  # protobuf's parse errors have no common class worth naming
        raise ModelFileError(path, f"is not an ONNX model: {type(exc).__name__}: {exc}") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelFileError(path, "is not an ONNX model: it holds no graph (an empty or corrupt file?)")
    return proto


def _refuse_special(path, file, what):
    """A ModelFileError about the ONNX file `path` unless `file` (it, or its external data) is a regular file."""
    try:
        kind = special_kind(file)
    except OSError as exc:
        raise ModelFileError(path, f"cannot read {file}: {exc.strerror or exc}") from None
    if not os.path.exists(file):
        raise ModelFileError(path, "no such ONNX file" if file == path else f"{what} is in {file}, which does not exist")
    if kind:
        raise ModelFileError(path, f"{'it' if file == path else file} is {kind}, not a regular file: give {what}")


def _f32(value):
    """An ONNX float attribute as the decimal its writer meant: 0.2, not 0.20000000298023224."""
    return float(str(np.float32(value)))


def _module_path(scope):
    """torch's scope of a node, "/layer2/layer2.0/downsample/downsample.0/Conv", as the module it
    ran in, "layer2.0.downsample.0": a step that extends the one before replaces it, and the last
    step (the operator) goes."""
    steps = []
    for step in scope.strip("/").split("/")[:-1]:
        if steps and step.startswith(steps[-1] + "."):
            steps[-1] = step
        else:
            steps.append(step)
    return ".".join(steps)


class _Importer:
    """Walks an ONNX graph in order, folding constants and calling a clnet layer on the symbolic
    tensors of each node's inputs. `input` and `output` are the symbolic tensors of the network,
    `state` its state_dict and `normalization` the (mean, std) taken from the graph, or None."""

    def __init__(self, proto, path, helper, numpy_helper):
        self.path, self.helper, self.numpy_helper = path, helper, numpy_helper
        graph = proto.graph
        self.opset = self._opset(proto)
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.tensors, self.shapes = {}, {}  # a graph value's symbolic tensor and per-sample shape
        self.state, self.names, self.normalization = {}, {INPUT}, None
        self.input = self._input(graph)
        if len(graph.output) != 1:
            raise ModelFileError(path, f"the graph has {len(graph.output)} outputs: clnet models have one")
        output = graph.output[0].name
        nodes = self._needed(graph.node, output)
        self.readers = {}  # value -> the needed nodes reading it
        for node in nodes:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {output}
        self.absorbed = set()  # nodes an earlier node took in (the Add of a bias, the Mul of SiLU)
        for node in nodes:
            if id(node) in self.absorbed:
                continue
            if node.domain not in ("", "ai.onnx"):
                self._unsupported(node, f"operator {node.domain}.{node.op_type} (a custom domain)")
            handler = HANDLERS.get(node.op_type)
            if handler is None:
                self._unsupported(node, f"operator {node.op_type}")
            handler(self, node, self._attributes(node))
        if output not in self.tensors or self.tensors[output] is self.input:
            raise ModelFileError(path, f"the graph's output {output!r} is not computed by layers from its input")
        self.output = self.tensors[output]

    # ------------------------------------------------------------------ the graph
    def _opset(self, proto):
        versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
        if not versions or versions[0] not in OPSETS:
            found = versions[0] if versions else "none"
            raise ModelFileError(self.path, f"ONNX opset {found} is not supported: clnet imports opsets "
                                 f"{OPSETS.start} to {OPSETS.stop - 1} (torch.onnx.export's opset_version=17, say)")
        return versions[0]

    def _input(self, graph):
        inputs = [value for value in graph.input if value.name not in self.constants]
        if len(inputs) != 1:
            raise ModelFileError(self.path, f"the graph has {len(inputs)} inputs "
                                 f"({', '.join(v.name for v in inputs)}): clnet models have one")
        value = inputs[0]
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type != 1:  # TensorProto.FLOAT
            raise ModelFileError(self.path, f"the input {value.name!r} is not float32: clnet takes float32 images")
        dims = list(tensor_type.shape.dim)
        if len(dims) < 2:
            raise ModelFileError(self.path, f"the input {value.name!r} has {len(dims)} dimensions: clnet takes "
                                 "(N, C, H, W) images or (N, features)")
        labels = "CHW" if len(dims) == 4 else [f"{k}" for k in range(1, len(dims))]
        for label, dim in zip(labels, dims[1:]):
            if not dim.HasField("dim_value") or dim.dim_value < 1:
                raise ModelFileError(self.path, f"the input {value.name!r} has a dynamic dimension {label} "
                                     f"({dim.dim_param or 'unknown'}): clnet needs fixed sizes but for the "
                                     "batch; export with a fixed image size (dynamic axes for the batch only)")
        self.batch = dims[0].dim_value if dims[0].HasField("dim_value") else None
        shape = tuple(dim.dim_value for dim in dims[1:])
        tensor = L.Input(shape)
        self.tensors[value.name], self.shapes[value.name] = tensor, shape
        return tensor

    @staticmethod
    def _needed(nodes, output):
        """The nodes the output depends on, in the graph's order."""
        producers = {name: node for node in nodes for name in node.output if name}
        needed, pending = set(), [output]
        while pending:
            node = producers.get(pending.pop())
            if node is not None and id(node) not in needed:
                needed.add(id(node))
                pending.extend(name for name in node.input if name)
        return [node for node in nodes if id(node) in needed]

    def _attributes(self, node):
        values = {a.name: self.helper.get_attribute_value(a) for a in node.attribute}
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}

    # ------------------------------------------------------------------ errors
    def _error(self, node, problem):
        return ModelFileError(self.path, f"node {node.name or '(unnamed)'} ({node.op_type}): {problem}")

    def _unsupported(self, node, what):
        raise self._error(node, f"{what} is not supported; clnet imports {', '.join(sorted(HANDLERS))}")

    # ------------------------------------------------------------------ reading inputs
    def _tensor(self, node, index=0):
        """The name of the graph value that input `index` of `node` reads."""
        name = node.input[index] if index < len(node.input) else ""
        if name in self.tensors:
            return name
        if name in self.constants:
            raise self._error(node, f"input {index} ({name}) is a constant; clnet takes it computed from the input")
        raise self._error(node, f"input {index} ({name or 'missing'}) is made by no node before it")

    def _constant(self, node, index, what, required=True):
        """The constant that input `index` of `node` reads (its `what`); None when an optional input
        is absent."""
        name = node.input[index] if index < len(node.input) else ""
        if not name and not required:
            return None
        if not name:
            raise self._error(node, f"its {what} (input {index}) is missing")
        if name not in self.constants:
            raise self._error(node, f"its {what} (input {index}, {name}) must be a constant (an initializer)")
        return self.constants[name]

    def _constant_or_attribute(self, node, attrs, index, key, what):
        """An operand that became an input (Clip's bounds, Unsqueeze's axes...) in later opsets."""
        value = self._constant(node, index, what, required=False)
        return attrs.get(key) if value is None else value

    def _second_outputs_unused(self, node):
        for name in node.output[1:]:
            if name in self.readers or name in self.outputs:
                raise self._error(node, f"its output {name} is used: clnet computes only the first output")

    # ------------------------------------------------------------------ making layers
    def _name(self, node, weight=None):
        """A unique node name: the weight initializer's prefix ("conv1" for "conv1.weight"), else
        the module of torch's scope, else the ONNX node's name made safe, else the operator."""
        name = ""
        if weight and weight.endswith(".weight"):
            name = weight[:-len(".weight")]
        elif node.name.startswith("/"):
            name = _module_path(node.name)
        elif node.name:
            name = node.name
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("._") or node.op_type.lower()
        unique, count = name, 0
        while unique in self.names:
            count += 1
            unique = f"{name}_{count}"
        self.names.add(unique)
        return unique

    def _emit(self, node, layer, inputs, params=None, output=None, weight=None):
        """Call `layer` on the graph values `inputs` as the node making `output` (default: the ONNX
        node's first output); `params` are its state_dict entries by parameter name."""
        shapes = [self.shapes[value] for value in inputs]
        try:
            shape = tuple(layer.output_shape(*shapes))
        except ShapeError as exc:
            raise self._error(node, f"{layer!r} {exc}") from None
        name = self._name(node, weight)
        symbolic = [self.tensors[value] for value in inputs]
        tensor = layer(symbolic if layer.arity is None else symbolic[0], name=name)
        for key, value in (params or {}).items():
            self.state[f"{name}.{key}"] = np.asarray(value, np.float32)
        output = output or node.output[0]
        self.tensors[output], self.shapes[output] = tensor, shape
        return output

    def _alias(self, node, source, output=None):
        """The node's output is the graph value `source` itself."""
        output = output or node.output[0]
        self.tensors[output], self.shapes[output] = self.tensors[source], self.shapes[source]

    def _layer(self, node, cls, *args, **kwargs):
        """cls(*args, **kwargs), a ValueError (an argument clnet refuses) as the node's error."""
        try:
            return cls(*args, **kwargs)
        except ValueError as exc:
            raise self._error(node, str(exc)) from None

    def _reshape(self, node, source, shape, output=None):
        """The graph value `source` seen with per-sample `shape`: itself, or flattened."""
        given = self.shapes[source]
        if tuple(shape) == given:
            self._alias(node, source, output)
        elif tuple(shape) == (prod(given),):
            self._emit(node, L.Flatten(), [source], output=output)
        else:
            raise self._error(node, f"reshapes {given} to {tuple(shape)} per sample: clnet reshapes only to "
                              "(features,) (Flatten)")

    # ------------------------------------------------------------------ layers
    def conv(self, node, attrs):
        x = self._tensor(node)
        weight, bias = self._constant(node, 1, "weight"), self._constant(node, 2, "bias", required=False)
        if weight.ndim != 4 or len(self.shapes[x]) != 3:
            raise self._error(node, "clnet imports 2-D convolutions of (N, C, H, W) images only")
        group, kernel = int(attrs.get("group", 1)), weight.shape[2:]
        if tuple(attrs.get("kernel_shape", kernel)) != kernel:
            raise self._error(node, f"kernel_shape {attrs['kernel_shape']} differs from its weight's {kernel}")
        stride, dilation = tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("dilations", (1, 1)))
        sides = self._pads(node, attrs, x, kernel, stride, dilation)
        if all(before == after for before, after in sides):
            padding = tuple(before for before, _ in sides)
        elif stride == (1, 1) and all((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) == side
                                      for d, k, side in zip(dilation, kernel, sides)):
            padding = "same"  # the extra row and column at the bottom and right, as clnet's "same"
        else:
            raise self._error(node, f"pads {list(attrs.get('pads', []))} (auto_pad {attrs.get('auto_pad', 'NOTSET')}"
                              ") are uneven: clnet's Conv2D pads both sides equally, or as padding='same' at "
                              "stride 1 (the extra row and column at the bottom and right)")
        layer = self._layer(node, L.Conv2D, weight.shape[1] * group, weight.shape[0], kernel, stride, padding,
                            dilation, groups=group, bias=bias is not None)
        params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        self._emit(node, layer, [x], params, weight=node.input[1])

    def _pads(self, node, attrs, x, kernel, stride, dilation=(1, 1)):
        """((top, bottom), (left, right)) of a convolution or pool, from pads or auto_pad."""
        auto = attrs.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", "VALID"):
            pads = attrs.get("pads", [0, 0, 0, 0]) if auto == "NOTSET" else [0, 0, 0, 0]
            return tuple(zip(pads[:2], pads[2:]))
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise self._error(node, f"auto_pad {auto} is not an ONNX padding")
        sides = []
        for size, k, s, d in zip(self.shapes[x][1:], kernel, stride, dilation):
            total = max((ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small, large = total // 2, total - total // 2
            sides.append((small, large) if auto == "SAME_UPPER" else (large, small))
        return tuple(sides)

    def gemm(self, node, attrs):
        if attrs.get("transA", 0):
            raise self._error(node, "transA=1: clnet's Dense takes the samples as rows")
        x = self._tensor(node)
        weight, bias = self._constant(node, 1, "weight"), self._constant(node, 2, "bias", required=False)
        weight = weight * _f32(attrs.get("alpha", 1.0))
        if not attrs.get("transB", 0):
            weight = weight.T  # (in, out) -> Dense's (out, in)
        if bias is not None:
            bias = self._bias(node, bias * _f32(attrs.get("beta", 1.0)), weight.shape[0])
        self._dense(node, x, weight, bias, node.output[0])

    def matmul(self, node, attrs):
        """x @ W as a Dense without bias, or with the constant an Add after it alone adds."""
        x, weight = self._tensor(node), self._constant(node, 1, "weight")
        if weight.ndim != 2:
            raise self._error(node, f"a weight of shape {weight.shape}: clnet imports x @ W with W (in, out)")
        output, bias = node.output[0], None
        readers = self.readers.get(output, [])
        if len(readers) == 1 and readers[0].op_type == "Add" and output not in self.outputs:
            add = readers[0]
            other = add.input[1] if add.input[0] == output else add.input[0]
            if other in self.constants:
                bias = self._bias(add, self.constants[other], weight.shape[1])
                self.absorbed.add(id(add))
                output = add.output[0]
        self._dense(node, x, weight.T, bias, output)

    def _bias(self, node, bias, features):
        """A constant added to every sample, as a Dense's bias of `features` values."""
        if bias.size not in (1, features) or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
            raise self._error(node, f"a bias of shape {bias.shape}: clnet's Dense adds one of ({features},)")
        return np.broadcast_to(bias.reshape(-1), (features,))

    def _dense(self, node, x, weight, bias, output):
        layer = L.Dense(weight.shape[1], weight.shape[0], bias=bias is not None)
        params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        self._emit(node, layer, [x], params, output=output, weight=node.input[1])

    def batch_norm(self, node, attrs):
        x = self._tensor(node)
        scale, shift, mean, var = (self._constant(node, i, what) for i, what in
                                   enumerate(("scale", "bias", "mean", "variance"), 1))
        self._second_outputs_unused(node)
        cls = L.BatchNorm2D if len(self.shapes[x]) == 3 else L.BatchNorm1D
        layer = self._layer(node, cls, len(scale), eps=_f32(attrs.get("epsilon", 1e-5)),
                            momentum=round(1 - _f32(attrs.get("momentum", 0.9)), 6))
        params = {"weight": scale, "bias": shift, "running_mean": mean, "running_var": var,
                  "num_batches_tracked": np.zeros(())}
        self._emit(node, layer, [x], params, weight=node.input[1])

    def pool(self, node, attrs):
        x = self._tensor(node)
        if len(self.shapes[x]) != 3:
            raise self._error(node, "clnet pools (N, C, H, W) images only")
        self._second_outputs_unused(node)
        kernel = tuple(attrs["kernel_shape"])
        stride = tuple(attrs.get("strides", (1, 1)))
        if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
            raise self._error(node, "dilated pooling is not supported")
        sides = self._pads(node, attrs, x, kernel, stride)
        if any(before != after for before, after in sides):
            raise self._error(node, f"pads {sides} are uneven: clnet's pools pad both sides equally")
        padding = tuple(before for before, _ in sides)
        if node.op_type == "AveragePool" and any(padding) and not attrs.get("count_include_pad", 0):
            raise self._error(node, "count_include_pad=0 with padding: clnet's AvgPool2D counts the padding "
                              "(torch's AvgPool2d default, count_include_pad=True)")
        cls = L.MaxPool2D if node.op_type == "MaxPool" else L.AvgPool2D
        layer = self._layer(node, cls, kernel, stride, padding)
        if attrs.get("ceil_mode", 0):
            c, h, w = self.shapes[x]
            rounded_up = tuple(ceil((n + 2 * p - k) / s) + 1 for n, p, k, s in zip((h, w), padding, kernel, stride))
            if rounded_up != layer.output_shape(self.shapes[x])[1:]:
                raise self._error(node, "ceil_mode=1 makes a larger output here: clnet's pools round down "
                                  "(ceil_mode=False)")
        self._emit(node, layer, [x])

    def global_pool(self, node, attrs):
        self._emit(node, L.GlobalAvgPool2D(), [self._tensor(node)])

    def reduce_mean(self, node, attrs):
        """The mean over H and W, as x.mean((2, 3)): global average pooling."""
        x = self._tensor(node)
        rank = len(self.shapes[x]) + 1
        axes = self._constant_or_attribute(node, attrs, 1, "axes", "axes")
        if rank != 4 or axes is None or sorted(int(a) % rank for a in np.ravel(axes)) != [2, 3]:
            raise self._error(node, "clnet imports ReduceMean only over the height and width of (N, C, H, W)")
        if attrs.get("keepdims", 1):
            self._emit(node, L.GlobalAvgPool2D(), [x])
        else:
            pooled = self._emit(node, L.GlobalAvgPool2D(), [x], output=f"{node.output[0]} (pooled)")
            self._emit(node, L.Flatten(), [pooled])

    def flatten(self, node, attrs):
        x = self._tensor(node)
        axis = int(attrs.get("axis", 1))
        if axis % (len(self.shapes[x]) + 1) != 1:
            raise self._error(node, f"axis {axis}: clnet flattens each sample (axis 1)")
        self._reshape(node, x, (prod(self.shapes[x]),))

    def reshape(self, node, attrs):
        x = self._tensor(node)
        target = self._constant(node, 1, "shape")
        given, allow_zero = self.shapes[x], bool(attrs.get("allowzero", 0))
        target = [int(t) for t in np.ravel(target)]
        first, rest = (target[0], target[1:]) if target else (None, [])
        rest = [given[i] if t == 0 and not allow_zero and i < len(given) else t for i, t in enumerate(rest)]
        if rest.count(-1) == 1:
            known = prod(t for t in rest if t != -1)
            rest[rest.index(-1)] = prod(given) // known if known and prod(given) % known == 0 else _BATCH
        keeps_batch = (first in (_BATCH, self.batch) or (first == 0 and not allow_zero)
                       or (first == -1 and prod(rest) == prod(given)))
        if not keeps_batch or any(t < 1 for t in rest):
            shown = ["N" if t == _BATCH else t for t in target]
            raise self._error(node, f"reshapes (N, {', '.join(map(str, given))}) to {shown}: clnet keeps the batch "
                              "first and reshapes each sample only to (features,) (Flatten)")
        self._reshape(node, x, rest)

    def squeeze(self, node, attrs):
        axes = self._constant_or_attribute(node, attrs, 1, "axes", "axes")
        if node.input[0] in self.constants:
            data = self.constants[node.input[0]]
            squeezed = np.squeeze(data, None if axes is None else tuple(int(a) % data.ndim for a in np.ravel(axes)))
            self.constants[node.output[0]] = squeezed
            return
        x = self._tensor(node)
        given, rank = self.shapes[x], len(self.shapes[x]) + 1
        dropped = {i - 1 for i in range(1, rank) if given[i - 1] == 1} if axes is None else \
            {int(a) % rank - 1 for a in np.ravel(axes)}
        if -1 in dropped or any(given[i] != 1 for i in dropped):
            raise self._error(node, f"squeezes axes {sorted(a + 1 for a in dropped)} of (N, {given}): "
                              "clnet squeezes only dimensions of size 1 within each sample")
        self._reshape(node, x, [d for i, d in enumerate(given) if i not in dropped])

    def activation(self, node, attrs):
        layers = {"Relu": L.ReLU, "Tanh": L.Tanh}
        self._emit(node, layers[node.op_type](), [self._tensor(node)])

    def leaky_relu(self, node, attrs):
        self._emit(node, L.LeakyReLU(_f32(attrs.get("alpha", 0.01))), [self._tensor(node)])

    def sigmoid(self, node, attrs):
        """Sigmoid, or SiLU when the only reader of its output multiplies it by its input."""
        x, output = self._tensor(node), node.output[0]
        readers = self.readers.get(output, [])
        if (len(readers) == 1 and readers[0].op_type == "Mul" and sorted(readers[0].input) == sorted([x, output])
                and output not in self.outputs):
            self.absorbed.add(id(readers[0]))
            self._emit(node, L.SiLU(), [x], output=readers[0].output[0])
        else:
            self._emit(node, L.Sigmoid(), [x])

    def clip(self, node, attrs):
        x = self._tensor(node)
        low = self._constant_or_attribute(node, attrs, 1, "min", "minimum")
        high = self._constant_or_attribute(node, attrs, 2, "max", "maximum")
        low = -np.inf if low is None else float(np.ravel(low)[0])
        high = np.inf if high is None else float(np.ravel(high)[0])
        if low == 0 and high == 6:
            self._emit(node, L.ReLU6(), [x])
        elif low == 0 and high >= np.finfo(np.float32).max:
            self._emit(node, L.ReLU(), [x])
        else:
            raise self._error(node, f"clips to [{low:g}, {high:g}]: clnet has ReLU6 (Clip to [0, 6]) and ReLU "
                              "(to [0, inf))")

    def softmax(self, node, attrs):
        x = self._tensor(node)
        if len(self.shapes[x]) != 1 or int(attrs.get("axis", 1 if self.opset < 13 else -1)) not in (1, -1):
            raise self._error(node, f"softmax of (N, {', '.join(map(str, self.shapes[x]))}) along axis "
                              f"{attrs.get('axis', 'default')}: clnet's Softmax takes (N, features) along the features")
        self._emit(node, L.Softmax(), [x])

    def dropout(self, node, attrs):
        x = self._tensor(node)
        self._second_outputs_unused(node)
        ratio = self._constant_or_attribute(node, attrs, 1, "ratio", "ratio")
        self._emit(node, self._layer(node, L.Dropout, 0.5 if ratio is None else _f32(np.ravel(ratio)[0])), [x])

    def add(self, node, attrs):
        """Add and Sum of graph values (Add of a constant after MatMul is the MatMul's bias)."""
        if any(name in self.constants for name in node.input):
            raise self._error(node, "adds a constant: clnet takes a constant added only as the bias after MatMul")
        inputs = [self._tensor(node, i) for i in range(len(node.input))]
        if len(inputs) == 1:
            self._alias(node, inputs[0])
        else:
            self._emit(node, L.Add(), inputs)

    def concat(self, node, attrs):
        if all(name in self.constants for name in node.input):
            self.constants[node.output[0]] = np.concatenate([self.constants[n] for n in node.input],
                                                            axis=int(attrs["axis"]))
            return
        inputs = [self._tensor(node, i) for i in range(len(node.input))]
        if int(attrs["axis"]) % (len(self.shapes[inputs[0]]) + 1) != 1:
            raise self._error(node, f"axis {attrs['axis']}: clnet concatenates along channels or features (axis 1)")
        self._emit(node, L.Concatenate(), inputs)

    def identity(self, node, attrs):
        if node.input[0] in self.constants:
            self.constants[node.output[0]] = self.constants[node.input[0]]
        else:
            self._alias(node, self._tensor(node))

    def cast(self, node, attrs):
        to = self.helper.tensor_dtype_to_np_dtype(attrs["to"])
        if node.input[0] in self.constants:
            self.constants[node.output[0]] = self.constants[node.input[0]].astype(to)
        elif to == np.float32:  # the graph's values are float32 already
            self._alias(node, self._tensor(node))
        else:
            raise self._error(node, f"casts a graph value to {np.dtype(to).name}: clnet computes in float32")

    def normalize(self, node, attrs):
        """(x - mean) / std right after the input, per channel, as clnet's export writes the normalisation."""
        x, readers = node.input[0], self.readers.get(node.output[0], [])
        if (node.op_type == "Sub" and self.tensors.get(x) is self.input and len(self.readers[x]) == 1
                and len(self.shapes[x]) == 3 and len(readers) == 1 and readers[0].op_type == "Div"
                and readers[0].input[0] == node.output[0]):
            div, channels = readers[0], self.shapes[x][0]
            per_channel = [self._per_channel(a, channels) for a in
                           (self._constant(node, 1, "mean"), self._constant(div, 1, "std"))]
            if all(v is not None for v in per_channel):
                self.normalization = tuple(per_channel)
                self.absorbed.add(id(div))
                self._alias(node, x, div.output[0])
                return
        raise self._error(node, "clnet takes Sub and Div only as the per-channel normalisation (x - mean) / std "
                          "right after the input")

    @staticmethod
    def _per_channel(array, channels):
        """A constant of one value per channel ((1, C, 1, 1), (C, 1, 1) or one for all) as a tuple, else None."""
        if array.size == 1 or (array.size == channels and array.ndim >= 3 and array.shape[-3] == channels):
            return tuple(_f32(v) for v in np.broadcast_to(array.reshape(-1), (channels,)))
        return None

    # ------------------------------------------------------------------ constants
    def constant(self, node, attrs):
        kinds = {"value": None, "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                 "value_ints": np.int64}
        for key, dtype in kinds.items():
            if key in attrs:
                value = attrs[key]
                array = self.numpy_helper.to_array(value) if dtype is None else np.array(value, dtype)
                self.constants[node.output[0]] = array
                return
        raise self._error(node, f"a constant of {', '.join(attrs)}: clnet reads tensors, floats and ints")

    def shape(self, node, attrs):
        """The shape of a graph value, its batch size standing as _BATCH."""
        name = node.input[0]
        full = self.constants[name].shape if name in self.constants else (_BATCH, *self.shapes[self._tensor(node)])
        start, end = attrs.get("start", 0), attrs.get("end", len(full))
        self.constants[node.output[0]] = np.array(full[start:end], np.int64)

    def gather(self, node, attrs):
        data = self._constant(node, 0, "data (clnet gathers from constants and shapes only)")
        indices = self._constant(node, 1, "indices")
        self.constants[node.output[0]] = np.take(data, indices, axis=int(attrs.get("axis", 0)))

    def unsqueeze(self, node, attrs):
        data = self._constant(node, 0, "data")
        axes = [int(a) for a in np.ravel(self._constant_or_attribute(node, attrs, 1, "axes", "axes"))]
        rank = data.ndim + len(axes)
        self.constants[node.output[0]] = np.expand_dims(data, tuple(sorted(a % rank for a in axes)))


HANDLERS = {"Conv": _Importer.conv, "Gemm": _Importer.gemm, "MatMul": _Importer.matmul,
            "BatchNormalization": _Importer.batch_norm, "MaxPool": _Importer.pool, "AveragePool": _Importer.pool,
            "GlobalAveragePool": _Importer.global_pool, "ReduceMean": _Importer.reduce_mean,
            "Flatten": _Importer.flatten, "Reshape": _Importer.reshape, "Squeeze": _Importer.squeeze,
            "Relu": _Importer.activation, "Tanh": _Importer.activation, "LeakyRelu": _Importer.leaky_relu,
            "Sigmoid": _Importer.sigmoid, "Clip": _Importer.clip, "Softmax": _Importer.softmax,
            "Dropout": _Importer.dropout, "Add": _Importer.add, "Sum": _Importer.add, "Concat": _Importer.concat,
            "Identity": _Importer.identity, "Cast": _Importer.cast, "Sub": _Importer.normalize,
            "Div": _Importer.normalize, "Constant": _Importer.constant, "Shape": _Importer.shape,
            "Gather": _Importer.gather, "Unsqueeze": _Importer.unsqueeze}
