"""Plan: a recorded list of kernel launches over tensors placed in one arena by liveness.

Layers, losses and optimizers record launches with symbolic `Value`s; `place` then gives each
value an offset in a single arena buffer (a value's memory is reused once its last reader has run),
`finalize` allocates it and binds every kernel argument once, and `run` replays the list with one
enqueue per launch.
"""

from math import prod

import numpy as np
import pyopencl as cl

from .kernels import KernelLibrary
from .tensor import DeviceTensor, allocate

ALIGN = 64  # elements; keeps every arena tensor 256-byte aligned for vector loads
INDEX_LIMIT = 2**31 - 1  # kernels index with int: no tensor, offset or size in a plan goes beyond
PLACE_BLOCK = 64  # launches: `place` finds the values live beside a short-lived one by these blocks


def round_up(n, multiple):
    return -(-n // multiple) * multiple


def _scalar(value):
    if isinstance(value, np.generic):
        return value
    if isinstance(value, (bool, int, np.integer)):
        return np.int32(value)
    return np.float32(value)


def _unchanged(old, new):
    """Whether a kernel argument set to `new` keeps `old`: the same object, or equal scalars of one type."""
    return old is new or (type(old) is type(new) and np.isscalar(new) and bool(old == new))


def _first_fit(bases, sizes, size):
    """The lowest offset (a multiple of ALIGN) where `size` elements fit below, between or above the
    values at `bases` of `sizes` that it must not overlap."""
    order = np.argsort(bases, kind="stable")
    bases, ends = bases[order], round_up(bases[order] + sizes[order], ALIGN)
    reached = np.concatenate(([0], np.maximum.accumulate(ends)))  # the offset tried before each value
    fits = np.flatnonzero(reached[:-1] + size <= bases)
    return int(reached[fits[0]] if len(fits) else reached[-1])


class Value:
    """A tensor of the plan whose place in the arena is decided at `finalize`.

    A view shares its root's memory under another shape (Flatten); liveness is tracked on roots.
    """

    def __init__(self, plan, shape, name, root=None, relative=0, dtype=np.float32):
        self.plan, self.shape, self.name = plan, tuple(shape), name
        self.dtype = np.dtype(dtype)
        if self.dtype.itemsize != 4:
            raise ValueError(f"plan values hold 4-byte elements (float32, int32), not {self.dtype}")
        self.root, self.relative = root or self, relative  # views: root and offset within it
        self.first = self.last = None  # launch indices of the first and last use (roots only)
        self.base = None               # arena offset in elements (roots only)

    @property
    def size(self):
        return prod(self.shape)

    def view(self, shape, offset=0):
        """The same memory (or the part `offset` elements on) under another shape."""
        if offset < 0 or offset + prod(shape) > self.size:
            raise ValueError(f"view of {self.shape} as {shape} at {offset}")
        return Value(self.plan, shape, self.name, root=self.root, relative=self.relative + offset, dtype=self.dtype)

    @property
    def buffer(self):
        return self.plan.arena.buffer

    @property
    def offset(self):
        """Arena offset in elements; None until placed (or if never used)."""
        return None if self.root.base is None else self.root.base + self.relative

    def tensor(self):
        return DeviceTensor(self.plan.device, self.shape, self.buffer, self.offset, self.dtype)

    def __repr__(self):
        return f"<Value {self.name} {self.shape}>"


class Launch:
    """One launch of a `Kernel`, its arguments in the order of the kernel's signature; a tensor
    argument becomes its (buffer, int offset) pair when bound."""

    def __init__(self, kernel, global_size, local_size, args):
        self.kernel = kernel
        self.global_size, self.local_size = tuple(global_size), local_size and tuple(local_size)
        self.args = list(args)
        self.bound = False

    def bind(self):
        for argument, value in zip(self.kernel.arguments, self.args):
            self._set_arg(argument, value)
        self.bound = True

    def set(self, name, value):
        """Change the argument `name` (as the kernel's signature names it; a tensor by its pointer),
        a scalar or a tensor, for later runs. The same tensor, or an equal scalar of the same type,
        sets nothing: every step sets its per-step arguments, most of them as they were, and a
        driver's clSetKernelArg is host time inside the step."""
        position = self.kernel.position(name)
        old, self.args[position] = self.args[position], value
        if self.bound and not _unchanged(old, value):
            self._set_arg(self.kernel.arguments[position], value)

    def _set_arg(self, argument, value):
        """Set the kernel's argument (for a tensor, its pointer and offset)."""
        if argument.tensor != hasattr(value, "buffer"):
            raise TypeError(f"kernel {self.kernel.function_name}: argument {argument.name} is "
                            f"{'a tensor' if argument.tensor else 'a scalar'}, given {value!r}")
        cl_kernel = self.kernel.cl_kernel
        if argument.tensor:
            cl_kernel.set_arg(argument.index, value.buffer)
            cl_kernel.set_arg(argument.index + 1, np.int32(value.offset))
        else:
            cl_kernel.set_arg(argument.index, _scalar(value))


class Plan:
    def __init__(self, device):
        self.device = device
        self.library = KernelLibrary(device)
        self.launches = []
        self.values = []
        self.arena = None
        self.dynamic = {}  # name -> [(launch, argument name, value -> argument)]
        self.phases = {}   # name -> index of the phase's first launch, in recording order

    def value(self, shape, name, dtype=np.float32):
        v = Value(self, shape, name, dtype=dtype)
        self.values.append(v)
        return v

    def mark(self, phase):
        """Start the phase `phase`: the launches recorded from now on, until the next mark, are its."""
        self.phases[phase] = len(self.launches)

    def phase_range(self, first, last):
        """(start, stop) launch indices of the phases `first` to `last`, in recording order."""
        names = list(self.phases)
        following = names[names.index(last) + 1:]
        return self.phases[first], self.phases[following[0]] if following else len(self.launches)

    def kernel(self, filename, name, **defines):
        return self.library.kernel(filename, name, **defines)

    def launch(self, kernel, global_size, local_size, *args):
        """Record a launch of `kernel` (a `Kernel`, from `kernel`) given every one of its arguments,
        in the order of its signature; `global_size` is rounded up to a multiple of `local_size`."""
        if len(args) != len(kernel.arguments):
            raise TypeError(f"kernel {kernel.function_name} takes {len(kernel.arguments)} arguments "
                            f"({', '.join(kernel.names)}), given {len(args)}")
        if local_size is not None:
            global_size = [round_up(g, l) for g, l in zip(global_size, local_size)]
        index = len(self.launches)
        for arg in args:
            if isinstance(arg, Value):
                root = arg.root
                root.first = index if root.first is None else root.first
                root.last = index
        launch = Launch(kernel, global_size, local_size, args)
        self.launches.append(launch)
        return launch

    def bind_dynamic(self, name, launch, argument, convert=None):
        """Let `set_dynamic(name, value)` set `launch`'s argument named `argument` (to `convert(value)`)."""
        launch.kernel.position(argument)  # an unknown name fails here, not at the first run
        self.dynamic.setdefault(name, []).append((launch, argument, convert or (lambda v: v)))

    def set_dynamic(self, name, value):
        """Change, between runs, every argument bound to `name` (the valid rows of a batch, the step)."""
        for launch, argument, convert in self.dynamic.get(name, ()):
            launch.set(argument, convert(value))

    def place(self):
        """Give every used value an arena offset by liveness; returns the arena size in elements.

        First fit, largest first: a value may share memory with any value whose live range
        (first to last launch using it) does not overlap its own.
        """
        roots = sorted((v for v in self.values if v.root is v and v.first is not None),
                       key=lambda v: (-v.size, v.first))
        first, last = (np.array([getattr(v, end) for v in roots], np.int64) for end in ("first", "last"))
        sizes = np.array([v.size for v in roots], np.int64)
        bases = np.zeros(len(roots), np.int64)
        by_block = {}  # launch index // PLACE_BLOCK -> the values placed that live in that block of launches
        for i, v in enumerate(roots):
            blocks = range(v.first // PLACE_BLOCK, v.last // PLACE_BLOCK + 1)
            # a short-lived value meets few others: look only where it lives, so that a deep network's
            # inference plan is placed in linear time; a long-lived one (an activation kept for the
            # backward pass) is compared with every value placed, in one vectorised pass
            near = np.arange(i) if len(blocks) > 2 else \
                np.fromiter({j for b in blocks for j in by_block.get(b, ())}, np.int64)
            near = near[(first[near] <= v.last) & (v.first <= last[near])]
            v.base = bases[i] = _first_fit(bases[near], sizes[near], v.size)
            for b in blocks:
                by_block.setdefault(b, []).append(i)
        return max(int((bases + sizes).max(initial=0)), 1)

    def finalize(self, arena_size, what="the plan"):
        """Allocate the arena placed by `place` and bind every launch's arguments once."""
        self.arena = DeviceTensor(self.device, (arena_size,))
        self.arena.buffer = allocate(self.device, self.arena.nbytes, what)
        for launch in self.launches:
            launch.bind()

    @property
    def arena_bytes(self):
        return self.arena.nbytes if self.arena else 0

    def run(self, wait_for=None, start=0, stop=None):
        """Enqueue the launches from `start` to `stop` (default: all), the first after the events
        `wait_for`; returns their events."""
        queue = self.device.queue
        return [cl.enqueue_nd_range_kernel(queue, launch.kernel.cl_kernel, launch.global_size, launch.local_size,
                                           wait_for=wait_for if i == 0 else None)
                for i, launch in enumerate(self.launches[start:stop])]
