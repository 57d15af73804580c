"""DeviceTensor: a shaped view (buffer + element offset) of device memory, and the only transfers;
a caller's pyopencl array seen as a DeviceTensor over its memory."""

from math import prod

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from .errors import InputError, OutOfDeviceMemoryError


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

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        """Rows `start:stop` (a slice of step 1) as a view: a batch of images held on the device."""
        start, stop, step = rows.indices(self.shape[0]) if isinstance(rows, slice) else (None, None, None)
        if step != 1:
            raise TypeError(f"a DeviceTensor is indexed by a slice of rows (step 1), not {rows!r}")
        stop = max(start, stop)
        return self.view((stop - start, *self.shape[1:]), start * prod(self.shape[1:]))

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


def is_pyopencl_array(x):
    """Whether `x` is a pyopencl.array.Array (images that already lie on a device)."""
    return isinstance(x, cl_array.Array)


def pyopencl_images(array, devices, what="x"):
    """A pyopencl.array.Array of images (or features), batch first, as a DeviceTensor over its
    memory, for the input stage to read where it lies: no copy, no trip through the host. It must
    live in the context of every device (a Device opened with `clnet.device(context=...)` or
    `queue=`), be C-contiguous, float32 or uint8. Its values are not checked for NaN (that would
    read them back). Work enqueued on the array's own queue is waited for first."""
    if array.dtype not in (np.float32, np.uint8):
        raise InputError(f"{what} is a pyopencl array of {array.dtype}: give float32 or uint8 images")
    if array.ndim < 2:
        raise InputError(f"{what} must have a batch dimension first: shape (samples, features...), got {array.shape}")
    if not array.flags.c_contiguous:
        raise InputError(f"{what} is a pyopencl array that is not C-contiguous: pass a contiguous copy")
    if any(d.context != array.context for d in devices):
        raise InputError(f"{what} is a pyopencl array of another OpenCL context than the model's device: open the "
                         "device on the array's context (clnet.device(context=x.context) or queue=x.queue), or "
                         "pass a numpy array")
    offset, extra = divmod(array.offset, array.dtype.itemsize)
    if extra or offset + array.size > np.iinfo(np.int32).max:  # the kernels take element offsets as int
        raise InputError(f"{what} is a pyopencl array at a byte offset of {array.offset} with {array.size} elements: "
                         "the input stage addresses at most 2**31 - 1 elements: pass it in parts")
    if array.queue is not None and any(d.queue != array.queue for d in devices):
        array.queue.finish()  # what was enqueued to write it is done before clnet's queues read it
    return DeviceTensor(devices[0], array.shape, array.base_data, offset, array.dtype)
