"""Network: what a model is, apart from any device: named nodes (a layer and the names of the
values it reads) in topological order, with shape inference, consumer counts and the fusion pass.

The network's input value is named "input"; every node's output value bears the node's name, and
its parameters are keyed "<node name>.<parameter>" (so a chain named "0", "1", ... has the keys of
the same torch.nn.Sequential). The last node is the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ShapeError
from .layers import Activation, Add, Layer, SymbolicTensor

INPUT = "input"


@dataclass(frozen=True)
class Node:
    """A layer applied to the values named in `inputs` (the network's "input" or earlier nodes)."""
    name: str
    layer: Layer
    inputs: tuple


@dataclass(frozen=True)
class Stage:
    """A node as it runs: `act` is the activation fused into its epilogue (its kernel options, None
    without one), and `output` the name of the value it makes (the fused activation's, when there is
    one). `index` is the node's position in the network (it keys the node's random streams). With
    `residual`, the stage also runs the Add that alone reads its output: `inputs[1]`, the Add's other
    input, is added before the activation, and the output is the Add's (or its activation's)."""
    index: int
    name: str
    layer: Layer
    act: dict | None
    inputs: tuple
    input_shapes: tuple
    output: str
    output_shape: tuple
    folded: Node | None = None  # the BatchNorm folded into this Dense or Conv2D (evaluation)
    residual: bool = False


class Network:
    """Named nodes in topological order; `Network.chain(layers)` makes the stack of a Sequential.

    Args:
        nodes: `Node`s, each reading only the network's input or nodes before it.

    Example:
        >>> net = Network.chain([Flatten(), Dense(784, 10)])
        >>> net.shapes((1, 28, 28))["1"]
        (10,)
    """

    def __init__(self, nodes: Sequence[Node]):
        self.nodes = list(nodes)
        known = {INPUT}
        for node in self.nodes:
            if not isinstance(node.layer, Layer):
                raise TypeError(f"node {node.name!r} holds {node.layer!r}, not a clnet layer")
            if node.name in known:
                raise ValueError(f"two values are named {node.name!r}: node names must be unique and not {INPUT!r}")
            missing = [name for name in node.inputs if name not in known]
            if missing or not node.inputs:
                raise ValueError(f"node {node.name!r} reads {missing or 'nothing'}: a node reads the network's "
                                 f"input or nodes before it")
            arity = node.layer.arity
            if (arity is None and len(node.inputs) < 2) or (arity is not None and len(node.inputs) != arity):
                raise ValueError(f"node {node.name!r} ({node.layer!r}) reads {len(node.inputs)} values; it takes "
                                 + ("two or more" if arity is None else str(arity)))
            known.add(node.name)
        if not self.nodes:
            raise ValueError("a network needs at least one node")
        self.consumers = {name: 0 for name in known}
        self._readers = {name: [] for name in known}  # each value's reading nodes, once each
        for node in self.nodes:
            for name in node.inputs:
                self.consumers[name] += 1
            for name in dict.fromkeys(node.inputs):
                self._readers[name].append(node)

    @classmethod
    def chain(cls, layers: Sequence[Layer]) -> Network:
        """Each layer reading the one before: nodes named by their position "0", "1", ... unless
        the layer was given a name."""
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {layer!r}, not a clnet layer")
        names = [layer.name or str(i) for i, layer in enumerate(layers)]
        return cls(Node(name, layer, (names[i - 1] if i else INPUT,)) for i, (name, layer) in
                   enumerate(zip(names, layers)))

    @classmethod
    def from_symbolic(cls, input: SymbolicTensor, output: SymbolicTensor) -> Network:
        """The network from `input` (clnet.Input) to `output`, traced back through the layers
        called on them, in a stable order (depth first, inputs in order). Nodes without a name get
        their class name in lower case, numbered from the second on ("conv2d", "conv2d_1", ...)."""
        order, seen, called = [], set(), set()

        def visit(tensor):
            if id(tensor) in seen:
                return
            seen.add(id(tensor))
            if tensor.layer is None:
                if tensor is not input:
                    raise ValueError("the output depends on an Input that is not the model's input")
                return
            if id(tensor.layer) in called:
                raise ValueError(f"{tensor.layer!r} is called twice: each call is a node with parameters of "
                                 "its own, so make one layer object per call")
            called.add(id(tensor.layer))
            for source in tensor.inputs:
                visit(source)
            order.append(tensor)

        if not isinstance(output, SymbolicTensor) or output.layer is None:
            raise TypeError(f"the output must be a layer's result on the model's input, not {output!r}")
        visit(output)  # every path back from the output ends at an Input: the model's, as checked
        given = [t.name for t in order if t.name]
        repeated = sorted({name for name in given if given.count(name) > 1 or name == INPUT})
        if repeated:
            raise ValueError(f"node names must be unique and not {INPUT!r}: {repeated}")
        names, used, counts = {id(input): INPUT}, {INPUT, *given}, {}
        for tensor in order:
            name, base = tensor.name, type(tensor.layer).__name__.lower()
            count = counts.get(base, 0)
            while name is None:
                candidate = base if count == 0 else f"{base}_{count}"
                count += 1
                name = None if candidate in used else candidate
            counts[base] = count
            used.add(name)
            names[id(tensor)] = name
        return cls(Node(names[id(t)], t.layer, tuple(names[id(x)] for x in t.inputs)) for t in order)

    @property
    def is_sequential(self) -> bool:
        """Whether this is `Network.chain` of its layers: each reading the one before, named "0", "1", ..."""
        return all(node.name == str(i) and node.inputs == (str(i - 1) if i else INPUT,)
                   for i, node in enumerate(self.nodes))

    @property
    def layers(self):
        return [node.layer for node in self.nodes]

    @property
    def output(self):
        return self.nodes[-1].name

    def following(self, node):
        """The layer that alone reads `node`'s output (it chooses the node's initialisation), or None."""
        readers = self._readers[node.name]
        return readers[0].layer if len(readers) == 1 else None

    def shapes(self, input_shape: tuple) -> dict:
        """{value name: per-sample shape}; a ShapeError names the node that does not fit."""
        shapes = {INPUT: tuple(input_shape)}
        for node in self.nodes:
            given = [shapes[name] for name in node.inputs]
            try:
                shapes[node.name] = tuple(node.layer.output_shape(*given))
            except ShapeError as exc:
                pairs = ", ".join(f"{name} {shape}" for name, shape in zip(node.inputs, given))
                reads = f" reading {pairs}" if len(given) > 1 else ""
                raise ShapeError(f"layer {node.name} ({node.layer!r}){reads} {exc}") from None
        return shapes

    def output_shape(self, input_shape: tuple) -> tuple:
        return self.shapes(input_shape)[self.output]

    def stages(self, input_shape: tuple, loss=None, fold_norms: bool = False) -> list:
        """The nodes as they run, after checking every shape.

        A link layer ending the network (Softmax before cross-entropy) is left to the loss. With
        `fold_norms` (evaluation), a BatchNorm that is the sole reader of a Dense or Conv2D folds
        into its weight and bias. An activation whose producer can fuse it (Dense, Conv2D,
        BatchNorm, Add; a producer with a BatchNorm folded in) runs as the producer writes when it
        is the producer's sole reader and its gradient needs only its output (not SiLU). A
        two-input Add that alone reads a layer that adds residuals (an unfolded BatchNorm: a
        ResNet block's last) runs in that layer's stage, its activation too: one pass.
        """
        shapes = self.shapes(input_shape)
        nodes = list(self.nodes)
        if loss is not None and loss.link_layer is not None and type(nodes[-1].layer) is loss.link_layer:
            nodes.pop()
        by_name = {node.name: node for node in nodes}
        folds = {}  # producer name -> the BatchNorm node folded into it
        if fold_norms:
            for node in nodes:
                producer = by_name.get(node.inputs[0])
                if (node.layer.folds_into_producer and producer is not None and producer.layer.takes_folded_norm
                        and self.consumers[producer.name] == 1):
                    folds[producer.name] = node
        runs_as = {norm.name: by_name[name] for name, norm in folds.items()}  # a folded norm's output: its producer's
        fused = {}  # producer name -> the activation node it runs
        for node in nodes:
            producer = runs_as.get(node.inputs[0], by_name.get(node.inputs[0]))
            if (isinstance(node.layer, Activation) and node.layer.grad_from_output
                    and producer is not None and producer.layer.fuses_activation
                    and self.consumers[node.inputs[0]] == 1 and producer.name not in fused):
                fused[producer.name] = node
        residuals = {}  # Add name -> (the node that adds it, the Add's other input)
        for node in nodes:
            if isinstance(node.layer, Add) and len(node.inputs) == 2 and node.inputs[0] != node.inputs[1]:
                for own, other in (node.inputs, node.inputs[::-1]):
                    adder = by_name.get(own)
                    if (adder is not None and adder.layer.adds_residual and adder.name not in runs_as
                            and self.consumers[own] == 1):
                        residuals[node.name] = (adder, other)
                        break
        absorbed = {node.name for node in fused.values()} | set(runs_as) | {a.name for a, _ in residuals.values()}
        index = {node.name: i for i, node in enumerate(self.nodes)}
        stages = []
        for node in nodes:
            if node.name in absorbed:
                continue
            last = fused.get(node.name) or folds.get(node.name)
            output = last.name if last else node.name
            act = fused[node.name].layer.kernel_options() if node.name in fused else None
            runner, inputs = node, node.inputs
            if node.name in residuals:
                runner, other = residuals[node.name]
                inputs = (runner.inputs[0], other)
            stages.append(Stage(index[runner.name], runner.name, runner.layer, act, inputs,
                                tuple(shapes[name] for name in inputs), output, shapes[output],
                                folds.get(node.name), node.name in residuals))
        return stages

    def __repr__(self):
        return f"Network({', '.join(f'{n.name}={n.layer!r}' for n in self.nodes)})"


def loss_input(stages: list, input_shape: tuple) -> tuple:
    """(name, per-sample shape) of the value that the loss reads, from a network's `stages`: the
    last stage's output (that of a stage before a link layer the loss takes over)."""
    return (stages[-1].output, stages[-1].output_shape) if stages else (INPUT, tuple(input_shape))
