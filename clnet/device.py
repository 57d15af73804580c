"""The one place that discovers OpenCL platforms and devices and opens the chosen one."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pyopencl as cl

from .errors import DeviceNotFoundError, InputError

log = logging.getLogger(__name__)

FAMILIES = ("tiled", "cpu")  # the kernel families: local-memory tiles (GPUs), packed panels (CPUs)
INSTALL_HINT = ("Install an OpenCL driver: for the CPU, `pip install pocl-binary-distribution` "
                "(or `apt-get install pocl-opencl-icd`); for a GPU, its vendor's driver.")


@dataclass(frozen=True)
class DeviceInfo:
    """What `clnet-devices` shows for one device; no OpenCL context is opened.

    Example:
        >>> [(d.index, d.type, d.label) for d in clnet.list_devices()]
    """
    index: int            # position among all devices of all platforms
    platform_index: int
    device_index: int     # position within its platform
    platform: str
    platform_vendor: str
    platform_version: str
    name: str
    type: str             # "GPU", "CPU", "ACCELERATOR" or "OTHER"
    compute_units: int
    global_mem: int       # bytes
    max_alloc: int        # bytes
    local_mem: int        # bytes
    fp64: bool
    fp16: bool
    opencl_c: str
    driver: str

    @property
    def label(self) -> str:
        """The device's name, its platform's name and the first part of the platform's version."""
        return f"{self.name} [{self.platform}, {self.platform_version.split('  ')[0]}]"

    def matches_platform(self, text: str) -> bool:
        """Whether `text` is a case-insensitive substring of the platform's name, vendor or version."""
        text = text.lower()
        return any(text in s.lower() for s in (self.platform, self.platform_vendor, self.platform_version))


def _type_name(cl_type):
    for flag, name in ((cl.device_type.GPU, "GPU"), (cl.device_type.CPU, "CPU"),
                       (cl.device_type.ACCELERATOR, "ACCELERATOR")):
        if cl_type & flag:
            return name
    return "OTHER"


def _platforms():
    try:
        return cl.get_platforms()
    except (cl.LogicError, cl.RuntimeError):  # the ICD loader found no platform at all
        return []


def _describe(index, p_index, d_index, platform, dev):
    extensions = dev.extensions.split()
    try:
        opencl_c = dev.opencl_c_version
    except cl.Error:
        opencl_c = dev.version
    return DeviceInfo(
        index=index, platform_index=p_index, device_index=d_index,
        platform=platform.name.strip(), platform_vendor=platform.vendor.strip(),
        platform_version=platform.version.strip(), name=dev.name.strip(), type=_type_name(dev.type),
        compute_units=dev.max_compute_units, global_mem=dev.global_mem_size,
        max_alloc=dev.max_mem_alloc_size, local_mem=dev.local_mem_size,
        fp64="cl_khr_fp64" in extensions or dev.double_fp_config != 0,
        fp16="cl_khr_fp16" in extensions, opencl_c=opencl_c.strip(), driver=dev.driver_version.strip())


def _discover():
    """(DeviceInfo, cl.Device) for every device of every platform."""
    found = []
    for p_index, platform in enumerate(_platforms()):
        try:
            devices = platform.get_devices()
        except cl.Error:  # a platform with no usable device must not hide the others
            continue
        for d_index, dev in enumerate(devices):
            found.append((_describe(len(found), p_index, d_index, platform, dev), dev))
    return found


def list_devices() -> list[DeviceInfo]:
    """Every OpenCL device on this machine, as `DeviceInfo`, in platform order; no context is opened.

    A platform whose devices cannot be listed is skipped; with no OpenCL platform at all the list is
    empty.

    Example:
        >>> for d in clnet.list_devices():
        ...     print(d.platform_index, d.device_index, d.type, d.label)
    """
    return [info for info, _ in _discover()]


def _describe_all(found):
    if not found:
        return "No OpenCL platform was found. " + INSTALL_HINT
    lines = ["Available devices (platform:device):"]
    lines += [f"  {i.platform_index}:{i.device_index}  {i.type:<4} {i.label}" for i, _ in found]
    return "\n".join(lines)


def _platform_devices(found, platform):
    """The (DeviceInfo, cl.Device) pairs of the platform named by index or name substring."""
    platform = str(platform).strip()
    if platform.isdigit():
        candidates = [f for f in found if f[0].platform_index == int(platform)]
    else:
        candidates = [f for f in found if f[0].matches_platform(platform)]
    if not candidates:
        raise DeviceNotFoundError(f"No OpenCL platform matches {platform!r}. " + _describe_all(found))
    return candidates


def _select(found, platform, device):
    candidates = found if platform is None else _platform_devices(found, platform)
    if device is not None:
        device = str(device).strip()
        if device.isdigit():
            # Within a chosen platform the index is the device's own; otherwise the global one.
            key = (lambda f: f[0].device_index) if platform is not None else (lambda f: f[0].index)
            chosen = [f for f in candidates if key(f) == int(device)]
        else:
            chosen = [f for f in candidates if device.lower() in f[0].name.lower()
                      or device.lower() == f[0].type.lower()]
        if not chosen:
            raise DeviceNotFoundError(f"No OpenCL device matches {device!r}"
                                      + (f" on platform {platform!r}" if platform is not None else "")
                                      + ". " + _describe_all(found))
        return chosen[0]
    if not candidates:
        raise DeviceNotFoundError(_describe_all(found))
    # Best device: a GPU before anything else, then more compute units, then discovery order.
    rank = {"GPU": 0, "ACCELERATOR": 1, "CPU": 2, "OTHER": 3}
    return min(candidates, key=lambda f: (rank[f[0].type], -f[0].compute_units, f[0].index))


def requested(platform, device):
    """(platform, device, where) as asked: the arguments; else CLNET_PLATFORM and CLNET_DEVICE; else,
    when neither of those is set either, PYOPENCL_CTX read as pyopencl reads it ("platform:device",
    each an index or a name substring, an empty or missing part meaning 0); else (None, None), the
    best device. `where` names the environment variables used, for errors ("" for arguments)."""
    where = []
    if platform is None and os.environ.get("CLNET_PLATFORM"):
        platform = os.environ["CLNET_PLATFORM"]
        where.append(f"CLNET_PLATFORM={platform!r}")
    if device is None and os.environ.get("CLNET_DEVICE"):
        device = os.environ["CLNET_DEVICE"]
        where.append(f"CLNET_DEVICE={device!r}")
    if platform is None and device is None and "PYOPENCL_CTX" in os.environ:
        where.append(f"PYOPENCL_CTX={os.environ['PYOPENCL_CTX']!r}")
        parts = os.environ["PYOPENCL_CTX"].split(":")
        if len(parts) > 2:
            raise DeviceNotFoundError(f"{where[0]} has more parts than 'platform:device': set it as pyopencl "
                                      "reads it, e.g. PYOPENCL_CTX=0:1")
        platform, device = parts[0] or "0", (parts[1:] or ["0"])[0] or "0"
    return platform, device, " and ".join(where)


def _from_requested(select, platform, device):
    """select(platform, device) with `requested`'s defaults; an error names the variables used."""
    platform, device, where = requested(platform, device)
    try:
        return select(_discover(), platform, device)
    except DeviceNotFoundError as exc:
        if not where:
            raise
        raise DeviceNotFoundError(f"{where}: {exc}") from None


def devices(platform: str | None = None, device: str | None = None) -> list[Device]:
    """Open the devices that `platform` and `device` name, for a model's replicas: either may list
    several, comma-separated ("nvidia,pocl"; "0,1"), each platform taking each device, and device
    "all" (or several platforms without a device) takes every device of the platforms named (of
    every platform without one). Otherwise one device, as `device()` chooses it. A device named
    twice is opened twice (two replicas on one device).

    Raises:
        DeviceNotFoundError: a name matches nothing (its message lists the devices there are).

    Example:
        >>> clnet.models.cifar_cnn(device=clnet.devices("nvidia", "all"))    # every NVIDIA GPU
        >>> clnet.devices("nvidia,pocl")                                       # and the CPU too
    """
    return [Device(info, cl_device) for info, cl_device in _from_requested(_select_several, platform, device)]


def chosen(platform: str | None = None, device: str | None = None) -> list[DeviceInfo]:
    """The devices `devices(platform, device)` opens, without opening them: the same rules, the same
    errors; with one device asked for (or none), the one `device(platform, device)` opens.

    Example:
        >>> [d.label for d in chosen()]   # what a run here uses: the environment's, else the best
    """
    return [info for info, _ in _from_requested(_select_several, platform, device)]


def alike(platform: str | None = None) -> list[DeviceInfo]:
    """The devices like the best one (of `platform`, else of any): those of its platform and type,
    in order, which a run of one process per device shares out by local rank.

    Example:
        >>> [d.label for d in alike("nvidia")]   # every NVIDIA GPU
    """
    found = _discover()
    best, _ = _select(found, platform, None)
    return [info for info, _ in found if info.platform_index == best.platform_index and info.type == best.type]


def _select_several(found, platform, device):
    """The (DeviceInfo, cl.Device) pairs `devices` opens."""
    platforms = [p.strip() for p in str(platform).split(",")] if platform is not None else [None]
    names = [d.strip() for d in str(device).split(",")] if device is not None else [None]
    if names == ["all"] or (names == [None] and len(platforms) > 1):
        return [f for p in platforms for f in (found if p is None else _platform_devices(found, p))]
    return [_select(found, p, name) for p in platforms for name in names]


def kernel_family(info, family=None):
    """The kernel family a device of `info` records: `family`, else CLNET_GEMM, else "tiled"
    (gemm_tiled, local-memory tiles) on GPUs and accelerators and "cpu" (gemm_packed and the other
    CPU variants) on CPUs."""
    name = family or os.environ.get("CLNET_GEMM") or ("cpu" if info.type == "CPU" else "tiled")
    if name not in FAMILIES:
        source = "family" if family else "CLNET_GEMM"
        raise ValueError(f"{source} must be 'tiled' or 'cpu', not {name!r}")
    return name


class Device:
    """An opened OpenCL device: context, an in-order queue for kernels (and a second one for uploads
    that overlap them), capabilities. With `profiling`, both queues record the start and end of
    every command on its event (`event.profile`), at some cost in launch overhead. `family` is the
    kernel family its launchers record ("tiled" or "cpu"), decided once when it is opened.

    Everything that runs on it (kernel programs, plans, buffers) keeps a reference to it; programs
    built for it are cached in `programs` by the kernel library. Open one with `clnet.device()`.

    Args:
        info: the device's `DeviceInfo`.
        cl_device: the pyopencl device it describes.
        profiling: open both queues with profiling enabled.
        family: "tiled" or "cpu"; None takes CLNET_GEMM, else "cpu" for a CPU and "tiled" otherwise.
        context: a pyopencl context holding `cl_device` to work in (default: a new one).
        queue: an in-order pyopencl queue of `cl_device` in `context` for the kernels (default: a new one).

    Attributes:
        info: the `DeviceInfo`.
        family: the kernel family, "tiled" or "cpu".
        cl_device, context: the pyopencl device and its context.
        queue: the in-order queue the kernels run on.
        copy_queue: a second queue for uploads that overlap the kernels.
        programs: kernel programs built for this device, cached by the kernel library.

    Example:
        >>> dev = clnet.device(device="cpu")
        >>> dev.name, dev.family, dev.is_gpu, dev.max_work_group_size
    """

    def __init__(self, info: DeviceInfo, cl_device: cl.Device, profiling: bool = False,
                 family: str | None = None, context: cl.Context | None = None, queue: cl.CommandQueue | None = None):
        self.family = kernel_family(info, family)
        self.info = info
        self.cl_device = cl_device
        self.context = context if context is not None else cl.Context([cl_device])
        properties = cl.command_queue_properties.PROFILING_ENABLE if profiling else 0
        self.queue = queue if queue is not None else cl.CommandQueue(self.context, cl_device, properties)
        # uploads that overlap the kernels
        self.copy_queue = cl.CommandQueue(self.context, cl_device, properties)
        self.programs = {}
        log.debug("Opened %s (%s kernels%s)", info.label, self.family,
                  "" if context is None else ", in the caller's pyopencl context")

    @property
    def name(self) -> str:
        """The device's name, as its driver reports it."""
        return self.info.name

    @property
    def is_gpu(self) -> bool:
        """Whether the device's type is GPU."""
        return self.info.type == "GPU"

    @property
    def max_work_group_size(self) -> int:
        """The most work-items one work-group may have on this device."""
        return self.cl_device.max_work_group_size

    def finish(self) -> None:
        """Wait until every command enqueued on both queues has completed."""
        self.copy_queue.finish()
        self.queue.finish()

    def __repr__(self):
        return f"<clnet.Device {self.info.platform_index}:{self.info.device_index} {self.info.label}>"


def device(platform: int | str | None = None, device: int | str | None = None, profiling: bool = False,
           family: str | None = None, *, context: cl.Context | None = None,
           queue: cl.CommandQueue | None = None) -> Device:
    """Open an OpenCL device, or wrap a pyopencl context or queue that the caller already has.

    `platform` and `device` are an index or a case-insensitive name substring (a platform matches on
    its name, vendor or version, so "pocl", "nvidia" and "intel" work; a device on its name or its
    type, "gpu"/"cpu"). Unset, they come from CLNET_PLATFORM / CLNET_DEVICE; with neither, from
    PYOPENCL_CTX as pyopencl reads it ("0:1", "nvidia:0"); with none of these, the best device is
    taken: a GPU before a CPU. A device index counts within the platform when one is given, else
    across all devices as `clnet-devices` numbers them.

    Args:
        platform, device: which device to open, as above.
        profiling: open queues whose events carry device timestamps.
        family: "tiled" or "cpu", overriding the kernel family the device's type implies (as
            CLNET_GEMM does when it is not given).
        context: a pyopencl Context to work in instead of creating one: kernels are built and
            buffers made in it, so that pyopencl arrays of it feed `predict` directly. With several
            devices in it, `device` (a name substring, or an index as `clnet-devices` numbers the
            devices) chooses one, else the best of them.
        queue: a pyopencl CommandQueue (in order) to run the kernels on; its context, device and
            profiling setting are taken. Uploads go on a second queue made in the same context.

    Raises:
        DeviceNotFoundError: nothing matches (its message lists the devices there are), or there is
            no OpenCL platform at all.

    Example:
        >>> dev = clnet.device()                                  # the best device
        >>> dev = clnet.device(platform="pocl", device="cpu")
        >>> dev = clnet.device(queue=my_pyopencl_queue)           # clnet's kernels on your queue
        >>> model = clnet.Sequential(layers, device=dev)
    """
    if context is None and queue is None:
        info, cl_device = _from_requested(_select, platform, device)
        return Device(info, cl_device, profiling, family)
    if platform is not None:
        raise InputError("give platform= or a context=/queue=, not both: a context's platform is its own")
    if queue is not None:
        if context is not None and queue.context != context:
            raise InputError("queue= belongs to another context than context=: give one of them")
        if queue.properties & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE:
            raise InputError("queue= is an out-of-order queue: clnet's steps need an in-order queue")
        context, chosen = queue.context, [queue.device]
        profiling = bool(queue.properties & cl.command_queue_properties.PROFILING_ENABLE)
    else:
        chosen = context.devices
    found = _discover()
    in_context = [next((f for f in found if f[1] == d), None) or _describe_sub_device(d) for d in chosen]
    info, cl_device = _select(in_context, None, device)
    return Device(info, cl_device, profiling, family, context, queue)


def _describe_sub_device(cl_device):
    """(DeviceInfo, cl.Device) of a device no platform lists (a sub-device): index -1."""
    platforms = _platforms()
    p_index = next((i for i, p in enumerate(platforms) if p == cl_device.platform), -1)
    return _describe(-1, p_index, -1, cl_device.platform, cl_device), cl_device
