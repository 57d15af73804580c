"""OnnxBuilder: what a layer's `to_onnx` adds its nodes to (clnet/export.py drives it)."""

import numpy as np


class OnnxBuilder:
    """Accumulates nodes and initializers; `value` is the name of the current value, which the next
    node takes as its first input, `inputs` the names of the values the layer being exported reads
    and `input_shapes` their per-sample shapes (the export sets all three per node; a layer of
    several inputs, such as Add, reads `inputs`; one whose nodes depend on the image size, such as
    AdaptiveAvgPool2D, reads `input_shapes`). Layers add their nodes through it (`Layer.to_onnx`);
    `opset` is the opset being written, for operators whose form changed (Clip)."""

    def __init__(self, helper, numpy_helper, opset=13):
        self.helper, self.numpy_helper, self.opset = helper, numpy_helper, opset
        self.nodes, self.initializers = [], []
        self.value = "input"
        self.inputs = [self.value]
        self.input_shapes = []

    def constant(self, name, array):
        """Add an initializer; returns its name."""
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op, name, inputs=(), output=None, **attrs):
        """A node taking the current value (and `inputs`), whose output (by default f"{name}.out")
        becomes the current value."""
        return self.node(op, name, [self.value, *inputs], output, **attrs)

    def node(self, op, name, inputs, output=None, **attrs):
        """A node taking exactly the values named `inputs`, whose output (by default f"{name}.out")
        becomes the current value."""
        output = output or f"{name}.out"
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=name, **attrs))
        self.value = output
        return output
