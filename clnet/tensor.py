"""DeviceTensor: a shaped view (buffer + element offset) of device memory, and the only transfers."""

from math import prod

import numpy as np
import pyopencl as cl

from .errors import OutOfDeviceMemoryError


def allocate(device, nbytes, what, flags=0):
    """A device buffer of `nbytes` (with further cl.mem_flags `flags`), or an OutOfDeviceMemoryError
    that says what was asked for."""
    info = device.info
    if nbytes > info.max_alloc:
        raise OutOfDeviceMemoryError(
            f"{what} needs {nbytes / 2**20:.1f} MiB in one buffer, but {info.name} allows at most "
            f"{info.max_alloc / 2**20:.1f} MiB per buffer: use a smaller batch size or model, or another device")
    try:
        return cl.Buffer(device.context, cl.mem_flags.READ_WRITE | flags, size=max(nbytes, 4))
    except cl.MemoryError as exc:
        raise OutOfDeviceMemoryError(
            f"{what} needs {nbytes / 2**20:.1f} MiB and {info.name} could not provide it "
            f"({info.global_mem / 2**20:.0f} MiB in all): use a smaller batch size or model") from exc


def pinned(device, size, dtype=np.float32) -> np.ndarray:
    """A host array of `size` elements in memory the driver allocates for transfers (page-locked
    where it can), so that copies to and from it run while the host goes on; it stays mapped, and
    its buffer alive, as long as the array lives."""
    buffer = allocate(device, size * np.dtype(dtype).itemsize, "a transfer buffer", cl.mem_flags.ALLOC_HOST_PTR)
    array, _ = cl.enqueue_map_buffer(device.queue, buffer, cl.map_flags.READ | cl.map_flags.WRITE, 0, (size,), dtype)
    return array


class DeviceTensor:
    """`shape` elements of `dtype` at element `offset` of `buffer`. Kernels take (buffer, offset) pairs."""

    def __init__(self, device, shape, buffer=None, offset=0, dtype=np.float32):
        self.device = device
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.buffer = buffer
        self.offset = int(offset)

    @property
    def size(self):
        return prod(self.shape)

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    def view(self, shape, offset=0):
        """A tensor over part of the same memory, `offset` elements further on."""
        return DeviceTensor(self.device, shape, self.buffer, self.offset + offset, self.dtype)

    def upload(self, array, wait=True, queue=None, wait_for=None):
        """Copy a host array into this tensor (on `queue`, by default the device's, after the events
        `wait_for`); returns the event. The array must outlive it when not waited for."""
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.size != self.size:
            raise ValueError(f"upload of {array.size} elements into a tensor of shape {self.shape}")
        return cl.enqueue_copy(queue or self.device.queue, self.buffer, array, wait_for=wait_for,
                               dst_offset=self.offset * self.dtype.itemsize, is_blocking=wait)

    def download(self):
        """The tensor's contents as a new numpy array (waits for the queue)."""
        out = np.empty(self.shape, self.dtype)
        cl.enqueue_copy(self.device.queue, out, self.buffer,
                        src_offset=self.offset * self.dtype.itemsize, is_blocking=True)
        return out

    def read_into(self, out, queue=None, wait_for=None):
        """Queue a copy of this tensor into the host array `out` (contiguous, of its size) on
        `queue` (default the device's) after the events `wait_for`, without waiting; returns the
        event, which `out` must outlive."""
        return cl.enqueue_copy(queue or self.device.queue, out, self.buffer,
                               src_offset=self.offset * self.dtype.itemsize, wait_for=wait_for, is_blocking=False)

    @classmethod
    def empty(cls, device, shape, dtype=np.float32, what="a tensor"):
        t = cls(device, shape, dtype=dtype)
        t.buffer = allocate(device, t.nbytes, what)
        return t

    @classmethod
    def from_numpy(cls, device, array, dtype=np.float32):
        t = cls.empty(device, np.shape(array), dtype)
        t.upload(array)
        return t

    def fill(self, value=0):
        """Set every element to `value` on the device (no host transfer)."""
        pattern = np.array([value], self.dtype)
        cl.enqueue_fill_buffer(self.device.queue, self.buffer, pattern,
                               self.offset * self.dtype.itemsize, self.nbytes)

    def __repr__(self):
        return f"<DeviceTensor {self.shape} {self.dtype} @{self.offset}>"
