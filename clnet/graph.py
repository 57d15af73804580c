"""Graph: a Sequential compiled for one batch size, as a plan of pre-bound launches.

Parameters live in one flat buffer and gradients in another (`ParamStore`), so the optimizer is one
launch. A training step is: upload the batch, replay forward, the fused loss, backward and the
optimizer; loss and accuracy accumulate on the device and are read only when someone reports.
"""

from collections import deque
from math import prod

import numpy as np
import pyopencl as cl

from . import losses
from .errors import InputError, OutOfDeviceMemoryError, ShapeError
from .datasets.feed import InputSpec, image_dims
from .layers import Activation, LayerContext
from .ops import data as data_ops
from .ops.random import step_arg
from .plan import Plan, round_up
from .tensor import DeviceTensor, allocate

PARAM_ALIGN = 16  # elements: each tensor starts on a 64-byte boundary for vector loads
AHEAD = 3  # steps the host may queue before the device has finished them


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
                    sizes[trainable] += round_up(prod(shape), PARAM_ALIGN)
        self.params = DeviceTensor.empty(device, (max(sizes[True], 1),), what="the parameters")
        self.grads = DeviceTensor.empty(device, (max(sizes[True], 1),), what="the gradients")
        self.buffers = DeviceTensor.empty(device, (max(sizes[False], 1),), what="the layer buffers")
        self.grads.fill(0)  # alignment gaps are never written but the optimizer reads them
        self.initialize(layers, seed)

    @property
    def count(self):
        return sum(e.size for e in self.entries if e.trainable)

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
    """One compiled plan: training (input stage, forward, loss, backward, optimizer) or evaluation
    (input stage, forward, loss metrics and/or predictions) for a fixed batch size and input shape.

    The input stage gathers the batch from a source of raw images through an index list: the whole
    dataset held on the device (`step_resident`: nothing crosses the bus), or the batch just uploaded
    into one of two staging buffers (`step`: the upload of the next batch overlaps this one's
    kernels), converting, normalising and augmenting it on the way (`InputSpec`).
    """

    def __init__(self, model, batch_size, input_shape, training, target_dtype=None, spec=InputSpec()):
        device, store, loss = model.device, model.param_store, model.loss
        self.model, self.batch_size, self.training = model, int(batch_size), training
        self.input_shape, self.spec = tuple(input_shape), spec if training else spec.without_augmentation()
        nodes, self.output_shape = plan_nodes(model.layers, loss, self.input_shape)
        plan = self.plan = Plan(device)
        x = self._input_stage(plan, model.seed, target_dtype, loss)
        contexts = [LayerContext(plan, store.views(i, "params"), store.views(i, "grads"),
                                 store.views(i, "buffers"), act, training, seed=model.seed * 1000 + i)
                    for i, _, act, _, _ in nodes]
        values = [x]
        for ctx, (_, layer, _, _, _) in zip(contexts, nodes):
            values.append(layer.forward(ctx, values[-1]))
        z = values[-1]
        z2d = z.view((self.batch_size, prod(z.shape[1:]))) if len(z.shape) != 2 else z

        self.loss_launch = self.output = self.opt_launch = None
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
            self.loss_launch = loss.record(plan, z2d, self.targets if self.targets is not None else probs,
                                           None, probs, model.metrics, losses.PROBS)
            self.output = probs
        else:
            self.output = z2d
        self._allocate(device)
        self._slot, self._slots, self._ahead = 0, [None, None], deque()
        self._source = None
        self.n_valid = self.batch_size

    def _input_stage(self, plan, seed, target_dtype, loss):
        """Record the gathers that fill the input (and targets) from staging buffers or a dataset on
        the device; the buffers themselves are allocated with the arena."""
        device, rows, spec = plan.device, self.batch_size, self.spec
        images = [DeviceTensor(device, (rows, *self.input_shape), dtype=np.dtype(spec.dtype)) for _ in range(2)]
        self.staging = [(slot, None) for slot in images]  # (images, targets) of the two slots
        self.identity = DeviceTensor(device, (rows,), dtype=np.int32)
        self.norm = DeviceTensor(device, (2 * image_dims(self.input_shape)[0],))
        x = plan.value((rows, *self.input_shape), "input")
        self.gather = data_ops.gather_images(plan, self.identity, images[0], self.norm, x, spec.scale, spec.crop,
                                             spec.flip, seed=seed)
        for name, argument in (("n_valid", "n_valid"), ("start", "start"), ("image_order", "order"),
                               ("image_source", "src")):
            plan.bind_dynamic(name, self.gather, argument)
        if spec.crop or spec.flip:
            plan.bind_dynamic("step", self.gather, "step", step_arg)
        self.targets, self.input_launches = None, 1
        if loss is not None and target_dtype is not None:
            shape = (rows,) if np.dtype(target_dtype) == np.int32 else (rows, prod(self.output_shape))
            self.targets = plan.value(shape, "targets", target_dtype)
            self.staging = [(slot, DeviceTensor(device, shape, dtype=np.dtype(target_dtype))) for slot in images]
            gather = data_ops.gather_targets(plan, self.identity, self.staging[0][1], self.targets)
            self.input_launches = 2
            for name, argument in (("n_valid", "n_valid"), ("start", "start"), ("target_order", "order"),
                                   ("target_source", "src")):
                plan.bind_dynamic(name, gather, argument)
        return x

    def _allocate(self, device):
        """Check that the batch fits before allocating anything; say which batch size would."""
        arena = self.plan.place()
        staging = [t for pair in self.staging for t in pair if t is not None]
        needed = arena * 4 + sum(t.nbytes for t in staging)  # all scale with the batch size
        # parameters, gradients and up to two optimizer states are already resident
        room = min(device.info.global_mem - 4 * self.model.param_store.params.nbytes, device.info.max_alloc)
        if needed > room:
            fits = max(1, int(self.batch_size * room / needed * 0.9))
            raise OutOfDeviceMemoryError(
                f"batch size {self.batch_size} needs {needed / 2**20:.0f} MiB for activations and batches on "
                f"{device.info.name}, which has {room / 2**20:.0f} MiB for them: use a batch size of {fits} or less")
        for t in staging + [self.identity, self.norm]:
            t.buffer = allocate(device, t.nbytes, "the input batches")
        self.identity.upload(np.arange(self.batch_size, dtype=np.int32))
        self.norm.upload(self.spec.norm(image_dims(self.input_shape)[0]))
        self.plan.finalize(arena, what=f"the plan for batch size {self.batch_size}")

    def _bind_source(self, images, targets, order, start, n):
        """Point the input stage at a source; arguments are set only when they change."""
        source = (images, targets, order)
        if source != self._source:
            self.plan.set_dynamic("image_source", images)
            self.plan.set_dynamic("image_order", order)
            if targets is not None:
                self.plan.set_dynamic("target_source", targets)
                self.plan.set_dynamic("target_order", order)
            self._source = source
        self.plan.set_dynamic("start", start)
        if n != self.n_valid:
            self.plan.set_dynamic("n_valid", n)
            self.n_valid = n

    def _stage(self, x, targets):
        """Upload a batch into the next staging slot on the copy queue; returns the upload events.

        A slot is refilled only after the gather that read it two steps ago has run, and its host
        arrays are kept until their upload is done."""
        self._slot ^= 1
        images, target_tensor = self.staging[self._slot]
        wait_for = []
        if self._slots[self._slot] is not None:
            uploads, _, gathered = self._slots[self._slot]
            cl.wait_for_events(uploads)
            wait_for = [gathered]
        queue = self.model.device.copy_queue
        arrays = [np.ascontiguousarray(x, images.dtype)]
        events = [images.view((len(x), *images.shape[1:])).upload(arrays[0], False, queue, wait_for)]
        if targets is not None:
            arrays.append(np.ascontiguousarray(targets, target_tensor.dtype).reshape(len(x), -1))
            events.append(target_tensor.view((len(x), *target_tensor.shape[1:]))
                          .upload(arrays[1], False, queue, wait_for))
        queue.flush()
        self._bind_source(images, target_tensor if targets is not None else None, self.identity, 0, len(x))
        return events, arrays

    def _run(self, staged=None):
        events = self.plan.run(wait_for=staged[0] if staged else None)
        if staged:  # the slot may be refilled once the input stage's gathers have read it
            self._slots[self._slot] = (*staged, events[self.input_launches - 1])
        # The host stays at most AHEAD steps in front of the device: progress shown is progress made.
        self._ahead.append(events[-1])
        if len(self._ahead) > AHEAD:
            self._ahead.popleft().wait()

    def step(self, x, targets):
        """Queue one training step on a host batch of at most batch_size samples (raw images)."""
        staged = self._stage(x, targets)
        self._train(staged)

    def step_resident(self, data, start, n):
        """Queue one training step on samples data.order[start:start + n] of a DeviceDataset."""
        self._bind_source(data.images, data.targets, data.order, start, n)
        self._train(None)

    def _train(self, staged):
        self.model.optimizer.prepare(self.opt_launch)
        self.plan.set_dynamic("step", self.model.optimizer.steps)
        self._run(staged)

    def infer(self, x, targets=None, want_output=True):
        """Queue one evaluation batch: metrics accumulate when targets are given; returns the
        outputs for the valid rows when asked (that download waits for the queue)."""
        staged = self._stage(x, targets)
        if self.loss_launch is not None:
            flags = (losses.PROBS if want_output else 0) | (losses.METRICS if targets is not None else 0)
            self.loss_launch.set("flags", flags)
        self._run(staged)
        if want_output:
            return self.output.tensor().download()[:self.n_valid]
        return None

    def sync(self):
        """Wait for the device; forget the source, so that a dataset held on the device is freed
        once its fit ends (the next step binds its source again)."""
        self.model.device.finish()
        self._slots = [None, None]
        self._ahead.clear()
        self._source = None
