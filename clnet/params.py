"""ParamStore: a network's parameters, gradients, layer buffers and optimizer state, each one flat
device buffer, so that the optimizer is one launch over all of them and a replica's gradients are
one buffer to reduce."""

from collections import namedtuple
from math import prod

import numpy as np

from .errors import InputError, OutOfDeviceMemoryError, ShapeError
from .memory import check_host_memory
from .plan import INDEX_LIMIT, round_up
from .tensor import DeviceTensor
from .text import format_bytes

PARAM_ALIGN = 16  # elements: each tensor starts on a 64-byte boundary for vector loads

#: What load_state_dict did not load: the model's keys absent from the state, and the state's keys
#: the model does not have; the fields of torch's result of the same name.
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Entry:
    """Where one parameter or buffer of a node lives in its flat tensor."""

    def __init__(self, node, name, shape, offset, trainable, counter=False):
        self.node, self.name, self.shape, self.offset, self.trainable = node, name, shape, offset, trainable
        self.key = f"{node}.{name}"
        self.size = prod(shape)
        # float32 on the device like every buffer, int64 in the state_dict as torch keeps it
        self.dtype = np.dtype(np.int64 if counter else np.float32)


def _check_fits(device, sizes):
    """Refuse, before anything is allocated, parameters that cannot fit: on the device with their
    gradients, and on the host as they are initialised (a model file or an image size can ask for any)."""
    needed = 4 * (2 * sizes[True] + sizes[False])
    if max(sizes.values()) > INDEX_LIMIT:  # kernels index the flat buffers with int
        raise OutOfDeviceMemoryError(f"the parameters ({sizes[True]:,} values) are more than the {INDEX_LIMIT:,} "
                                     "that clnet's kernels index: use a smaller model or smaller images")
    if needed > device.info.global_mem:
        raise OutOfDeviceMemoryError(
            f"the parameters ({sizes[True]:,} values) need {format_bytes(needed)} with their gradients and buffers, "
            f"more than the {format_bytes(device.info.global_mem)} of {device.info.name}: use a smaller model or "
            "smaller images")
    check_host_memory(4 * (sizes[True] + sizes[False]), f"the parameters' initial values ({sizes[True]:,})",
                      OutOfDeviceMemoryError)


class ParamStore:
    """Every trainable parameter of a network in one flat device buffer and every gradient in
    another; non-trainable state (batch-norm running statistics) in a third that the optimizer never
    touches; the optimizer's state (momentum, moments) as further flat buffers of the parameters'
    size, and the number of optimizer steps taken (`steps`), which also keys dropout and
    augmentation.

    Initial values come from a counter-based generator (Philox) keyed by the seed and the node's
    position, so they do not depend on the device; a replica's store copies them from the first
    replica's (`like`) instead.
    """

    def __init__(self, device, network, seed, like=None):
        self.device = device
        self.entries, sizes = [], {True: 0, False: 0}
        self._node_entries = {}  # node name -> its entries: looked up per node, never by a scan of all
        for node in network.nodes:
            own = self._node_entries.setdefault(node.name, [])
            for trainable, shapes in ((True, node.layer.param_shapes()), (False, node.layer.buffer_shapes())):
                for name, shape in shapes.items():
                    own.append(Entry(node.name, name, tuple(shape), sizes[trainable], trainable,
                                     name in node.layer.counters))
                    sizes[trainable] += round_up(prod(shape), PARAM_ALIGN)
            self.entries += own
        _check_fits(device, sizes)
        self.params = DeviceTensor.empty(device, (max(sizes[True], 1),), what="the parameters")
        self.grads = DeviceTensor.empty(device, (max(sizes[True], 1),), what="the gradients")
        self.buffers = DeviceTensor.empty(device, (max(sizes[False], 1),), what="the layer buffers")
        self.grads.fill(0)  # alignment gaps are never written but the optimizer reads them
        self.optimizer_state, self.steps = [], 0
        if like is None:
            self._initialize(network, seed)
        else:
            self.params.upload(like.params.download())
            self.buffers.upload(like.buffers.download())

    @property
    def count(self):
        """Trainable parameters."""
        return sum(e.size for e in self.entries if e.trainable)

    def _initialize(self, network, seed):
        flats = {True: np.zeros(self.params.size, np.float32), False: np.zeros(self.buffers.size, np.float32)}
        for i, node in enumerate(network.nodes):
            rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, i])))
            values = node.layer.init_params(rng, network.following(node))
            for e in self._node_entries[node.name]:
                flats[e.trainable][e.offset:e.offset + e.size] = values[e.name].reshape(-1)
        self.params.upload(flats[True])
        self.buffers.upload(flats[False])

    def views(self, node, kind):
        """{name: tensor} of one node's "params", "grads" or "buffers"."""
        tensor = {"params": self.params, "grads": self.grads, "buffers": self.buffers}[kind]
        return {e.name: tensor.view(e.shape, e.offset) for e in self._node_entries.get(node, ())
                if e.trainable == (kind != "buffers")}

    def reset_optimizer_state(self):
        """No optimizer state and no steps taken, for a newly compiled optimizer."""
        self.optimizer_state, self.steps = [], 0

    def require_optimizer_state(self, count):
        """`count` state buffers, zeroed when they are made: made by the first training step
        compiled for an optimizer, kept by every later one."""
        if len(self.optimizer_state) != count:
            self.optimizer_state = [DeviceTensor.empty(self.device, self.params.shape, what="optimizer state")
                                    for _ in range(count)]
            for tensor in self.optimizer_state:
                tensor.fill(0)
        return self.optimizer_state

    def flat_state(self, names=("params", "buffers")):
        """(flats {name: the flat array} of `names` among "params", "grads" and "buffers", the
        optimizer state, the step count): each buffer read once, as `load_flat_state` takes them."""
        return ({name: getattr(self, name).download() for name in names},
                [tensor.download() for tensor in self.optimizer_state], self.steps)

    def load_flat_state(self, flats, optimizer_arrays, steps):
        """Take another store's state of the same network (or this one's, kept): `flats`
        {"params"/"grads"/"buffers": the flat array}, the optimizer state and the step count
        (replicas brought in line)."""
        for name, values in flats.items():
            getattr(self, name).upload(values)
        self.load_optimizer_state(optimizer_arrays, steps)

    def load_optimizer_state(self, arrays, steps):
        """Restore saved optimizer state (float32 arrays of the parameters' size) and step count."""
        arrays = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in arrays]
        for i, array in enumerate(arrays):
            if array.size != self.params.size:
                raise ShapeError(f"optimizer state {i} ({array.size} values) does not fit the model's "
                                 f"{self.params.size} parameter slots")
        for tensor, array in zip(self.require_optimizer_state(len(arrays)), arrays):
            tensor.upload(array)  # in place: plans recorded with these tensors keep working
        self.steps = int(steps)

    def state_dict(self):
        """{key: array}: float32, and int64 for counters (num_batches_tracked) as torch keeps them."""
        flats = {True: self.params.download(), False: self.buffers.download()}
        state = {}
        for e in self.entries:
            value = flats[e.trainable][e.offset:e.offset + e.size].reshape(e.shape)
            state[e.key] = np.array(np.rint(value), e.dtype) if e.dtype.kind == "i" else value.copy()
        return state

    def gradients(self):
        flat = self.grads.download()
        return {e.key: flat[e.offset:e.offset + e.size].reshape(e.shape).copy()
                for e in self.entries if e.trainable}

    def check_state_dict(self, state, strict=True):
        """`state`'s arrays that this store has, as float32, checked (shapes and finite values; with
        `strict`, no key missing or unexpected), without touching the device; with the
        IncompatibleKeys. An InputError or ShapeError names the key."""
        expected = {e.key: e for e in self.entries}
        keys = IncompatibleKeys(sorted(set(expected) - set(state)), sorted(set(state) - set(expected)))
        if strict and (keys.missing_keys or keys.unexpected_keys):
            raise InputError(f"state_dict does not fit this model: missing keys {keys.missing_keys}, "
                             f"unexpected keys {keys.unexpected_keys} (strict=False loads the keys that fit)")
        checked = {}
        for key, e in expected.items():
            if key not in state:
                continue
            try:
                value = np.asarray(state[key], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InputError(f"state_dict[{key!r}] is not a numeric array: {exc}") from None
            if value.shape != e.shape:
                raise ShapeError(f"state_dict[{key!r}] has shape {value.shape}, the model expects {e.shape}")
            if not np.all(np.isfinite(value)):
                raise InputError(f"state_dict[{key!r}] contains NaN or infinity")
            checked[key] = value
        return checked, keys

    def write_checked(self, checked):
        """Write the arrays that `check_state_dict` returned into the flat buffers (a model checks a
        state once, then writes it into every replica's store)."""
        flats = {True: self.params.download(), False: self.buffers.download()}
        for e in self.entries:
            if e.key in checked:
                flats[e.trainable][e.offset:e.offset + e.size] = checked[e.key].reshape(-1)
        self.params.upload(flats[True])
        self.buffers.upload(flats[False])
