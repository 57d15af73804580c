"""Graph: a Sequential compiled for one batch size, as a plan of pre-bound launches.

Parameters live in one flat buffer and gradients in another (`ParamStore`), so the optimizer is one
launch. A training step is: upload the batch, replay forward, the fused loss, backward and the
optimizer; loss and accuracy accumulate on the device and are read only when someone reports.
"""

from collections import deque
from math import prod

import numpy as np

from . import losses
from .errors import InputError, OutOfDeviceMemoryError, ShapeError
from .layers import Activation, LayerContext
from .plan import Plan
from .tensor import DeviceTensor, allocate

PARAM_ALIGN = 16  # elements: each tensor starts on a 64-byte boundary for vector loads


class Entry:
    """Where one parameter or buffer of a layer lives in its flat tensor."""

    def __init__(self, layer, name, shape, offset, trainable):
        self.layer, self.name, self.shape, self.offset, self.trainable = layer, name, shape, offset, trainable
        self.key = f"{layer}.{name}"
        self.size = prod(shape)


class ParamStore:
    """Every trainable parameter of a model in one flat device buffer and every gradient in another,
    so that the optimizer is one launch; non-trainable state (batch-norm running statistics) in a
    third that the optimizer never touches."""

    def __init__(self, device, layers, seed):
        self.device = device
        self.entries, sizes = [], {True: 0, False: 0}
        for i, layer in enumerate(layers):
            for trainable, shapes in ((True, layer.param_shapes()), (False, layer.buffer_shapes())):
                for name, shape in shapes.items():
                    self.entries.append(Entry(i, name, tuple(shape), sizes[trainable], trainable))
                    sizes[trainable] += -(-prod(shape) // PARAM_ALIGN) * PARAM_ALIGN
        self.params = DeviceTensor.empty(device, (max(sizes[True], 1),), what="the parameters")
        self.grads = DeviceTensor.empty(device, (max(sizes[True], 1),), what="the gradients")
        self.buffers = DeviceTensor.empty(device, (max(sizes[False], 1),), what="the layer buffers")
        self.grads.fill(0)  # alignment gaps are never written but the optimizer reads them
        self.initialize(layers, seed)

    @property
    def count(self):
        return sum(e.size for e in self.entries if e.trainable)

    def _flat(self, trainable):
        return self.params if trainable else self.buffers

    def initialize(self, layers, seed):
        """Initial values from a counter-based generator (Philox) keyed by the seed and layer index."""
        flats = {True: np.zeros(self.params.size, np.float32), False: np.zeros(self.buffers.size, np.float32)}
        for i, layer in enumerate(layers):
            rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, i])))
            following = layers[i + 1] if i + 1 < len(layers) else None
            values = layer.init_params(rng, following)
            for e in self.entries:
                if e.layer == i:
                    flats[e.trainable][e.offset:e.offset + e.size] = values[e.name].reshape(-1)
        self.params.upload(flats[True])
        self.buffers.upload(flats[False])

    def views(self, layer_index, kind):
        """{name: tensor} of one layer's "params", "grads" or "buffers"."""
        tensor = {"params": self.params, "grads": self.grads, "buffers": self.buffers}[kind]
        return {e.name: tensor.view(e.shape, e.offset) for e in self.entries
                if e.layer == layer_index and e.trainable == (kind != "buffers")}

    def state_dict(self):
        flats = {True: self.params.download(), False: self.buffers.download()}
        return {e.key: flats[e.trainable][e.offset:e.offset + e.size].reshape(e.shape).copy()
                for e in self.entries}

    def gradients(self):
        flat = self.grads.download()
        return {e.key: flat[e.offset:e.offset + e.size].reshape(e.shape).copy()
                for e in self.entries if e.trainable}

    def load_state_dict(self, state):
        expected = {e.key: e for e in self.entries}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InputError(f"state_dict does not fit this model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        flats = {True: self.params.download(), False: self.buffers.download()}
        for key, e in expected.items():
            value = np.asarray(state[key], dtype=np.float32)
            if value.shape != e.shape:
                raise ShapeError(f"state_dict[{key!r}] has shape {value.shape}, the model expects {e.shape}")
            if not np.all(np.isfinite(value)):
                raise InputError(f"state_dict[{key!r}] contains NaN or infinity")
            flats[e.trainable][e.offset:e.offset + e.size] = value.reshape(-1)
        self.params.upload(flats[True])
        self.buffers.upload(flats[False])


def plan_nodes(layers, loss, input_shape):
    """The layers as run: [(layer index, layer, fused activation, input shape, output shape)].

    A link layer ending the model (Softmax before cross-entropy) is left to the loss, and an
    activation following a layer that can fuse it (Dense) runs in that layer's epilogue.
    Checks every shape, naming the layer that does not fit.
    """
    shapes, shape = [], tuple(input_shape)
    for i, layer in enumerate(layers):
        try:
            out = tuple(layer.output_shape(shape))
        except ShapeError as exc:
            raise ShapeError(f"layer {i} ({layer!r}) {exc}") from None
        shapes.append((shape, out))
        shape = out
    count = len(layers)
    if loss is not None and count and loss.link_layer is not None and type(layers[-1]) is loss.link_layer:
        count -= 1
    nodes, i = [], 0
    while i < count:
        layer, act, (in_shape, out_shape) = layers[i], "none", shapes[i]
        nxt = layers[i + 1] if i + 1 < count else None
        if layer.fuses_activation and isinstance(nxt, Activation):
            act, out_shape = nxt.kind, shapes[i + 1][1]
            nodes.append((i, layer, act, in_shape, out_shape))
            i += 2
        else:
            nodes.append((i, layer, act, in_shape, out_shape))
            i += 1
    return nodes, shape


class Graph:
    """One compiled plan: training (forward, loss, backward, optimizer) or evaluation (forward, loss
    metrics and/or predictions) for a fixed batch size and input shape."""

    def __init__(self, model, batch_size, input_shape, training, target_dtype=None):
        device, store, loss = model.device, model.param_store, model.loss
        self.model, self.batch_size, self.training = model, int(batch_size), training
        self.input_shape = tuple(input_shape)
        nodes, self.output_shape = plan_nodes(model.layers, loss, self.input_shape)
        plan = self.plan = Plan(device)
        x = plan.value((self.batch_size, *self.input_shape), "input")
        x.first = x.last = 0  # the upload precedes launch 0: nothing may share its memory before
        self.input = x
        contexts = [LayerContext(plan, store.views(i, "params"), store.views(i, "grads"),
                                 store.views(i, "buffers"), act, training, seed=model.seed * 1000 + i)
                    for i, _, act, _, _ in nodes]
        values = [x]
        for ctx, (_, layer, _, _, _) in zip(contexts, nodes):
            values.append(layer.forward(ctx, values[-1]))
        z = values[-1]
        z2d = z.view((self.batch_size, prod(z.shape[1:]))) if len(z.shape) != 2 else z

        self.targets = self.loss_launch = self.output = self.opt_launch = None
        if loss is not None and target_dtype is not None:
            # allocated with the arena, once the plan is known to fit
            self.targets = DeviceTensor(device, self._target_shape(target_dtype, z2d.shape), dtype=target_dtype)
        if training:
            grad = plan.value(z2d.shape, "loss gradient")
            self.loss_launch = loss.record(plan, z2d, self.targets, grad, None, model.metrics,
                                           losses.GRAD | losses.METRICS)
            dy = grad.view(z.shape)
            # the gradient reaching a layer's input is needed only if a layer before it has parameters
            trainable_before = [any(node[1].param_shapes() for node in nodes[:p]) for p in range(len(nodes))]
            for position in range(len(nodes) - 1, -1, -1):
                if dy is None:
                    break
                dy = nodes[position][1].backward(contexts[position], values[position], values[position + 1],
                                                 dy, need_dx=trainable_before[position])
            self.opt_launch = model.optimizer.record(plan, store.params, store.grads)
        elif loss is not None:
            probs = plan.value(z2d.shape, "predictions")
            self.loss_launch = loss.record(plan, z2d, self.targets if self.targets is not None else model.metrics,
                                           None, probs, model.metrics, losses.PROBS)
            self.output = probs
        else:
            self.output = z2d
        self._allocate(device)
        self.n_valid = self.batch_size
        self._in_flight = deque()

    def _target_shape(self, dtype, out2d):
        return (self.batch_size,) if np.dtype(dtype) == np.int32 else out2d

    def _allocate(self, device):
        """Check that the batch fits before allocating anything; say which batch size would."""
        arena = self.plan.place()
        targets = self.targets.nbytes if self.targets is not None else 0
        needed = arena * 4 + targets  # both scale with the batch size
        # parameters, gradients and up to two optimizer states are already resident
        room = min(device.info.global_mem - 4 * self.model.param_store.params.nbytes, device.info.max_alloc)
        if needed > room:
            fits = max(1, int(self.batch_size * room / needed * 0.9))
            raise OutOfDeviceMemoryError(
                f"batch size {self.batch_size} needs {needed / 2**20:.0f} MiB for activations and targets on "
                f"{device.info.name}, which has {room / 2**20:.0f} MiB for them: use a batch size of {fits} or less")
        if self.targets is not None:
            self.targets.buffer = allocate(device, targets, "the targets")
        self.plan.finalize(arena, what=f"the plan for batch size {self.batch_size}")

    def _upload(self, x, targets):
        """Non-blocking uploads; the host arrays are kept until two later steps have been queued."""
        n = len(x)
        if n < self.batch_size:
            x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), x.dtype)])
            if targets is not None:
                targets = np.concatenate([targets, np.zeros((self.batch_size - n, *targets.shape[1:]),
                                                            targets.dtype)])
        arrays = [np.ascontiguousarray(x, np.float32)]
        events = [self.input.tensor().upload(arrays[0], wait=False)]
        if targets is not None:
            arrays.append(np.ascontiguousarray(targets, self.targets.dtype))
            events.append(self.targets.upload(arrays[1], wait=False))
        self._in_flight.append((events, arrays))
        while len(self._in_flight) > 2:
            for event in self._in_flight.popleft()[0]:
                event.wait()
        if n != self.n_valid:
            self.plan.set_dynamic("n_valid", n)
        self.n_valid = n

    def step(self, x, targets):
        """Queue one training step on a batch of at most batch_size samples. Reads nothing back."""
        self._upload(x, targets)
        self.model.optimizer.prepare(self.opt_launch)
        self.plan.set_dynamic("step", self.model.optimizer.steps)
        self.plan.run()

    def infer(self, x, targets=None, want_output=True):
        """Queue one evaluation batch: metrics accumulate when targets are given; returns the
        outputs for the valid rows when asked (that download waits for the queue)."""
        self._upload(x, targets)
        if self.loss_launch is not None:
            flags = (losses.PROBS if want_output else 0) | (losses.METRICS if targets is not None else 0)
            self.loss_launch.set(3, flags)
        self.plan.run()
        if want_output:
            return self.output.tensor().download()[:self.n_valid]
        return None

    def sync(self):
        self.model.device.finish()
        self._in_flight.clear()
