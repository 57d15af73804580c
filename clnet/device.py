"""The one place that discovers OpenCL platforms and devices and opens the chosen one."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pyopencl as cl

from .errors import DeviceNotFoundError

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
    platform = platform if platform is not None else os.environ.get("CLNET_PLATFORM") or None
    device = device if device is not None else os.environ.get("CLNET_DEVICE") or None
    return [Device(info, cl_device) for info, cl_device in _select_several(_discover(), platform, device)]


def alike(platform: str | None = None) -> list[DeviceInfo]:
    """The devices like the best one (of `platform`, else CLNET_PLATFORM's, else any): those of its
    platform and type, in order, which a run of one process per device shares out by local rank.

    Example:
        >>> [d.label for d in alike("nvidia")]   # every NVIDIA GPU
    """
    platform = platform if platform is not None else os.environ.get("CLNET_PLATFORM") or None
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


def _family(info, family):
    """`family`, else CLNET_GEMM, else "tiled" (gemm_tiled, local-memory tiles) on GPUs and
    accelerators and "cpu" (gemm_packed and the other CPU variants) on CPUs."""
    chosen = family or os.environ.get("CLNET_GEMM") or ("cpu" if info.type == "CPU" else "tiled")
    if chosen not in FAMILIES:
        source = "family" if family else "CLNET_GEMM"
        raise ValueError(f"{source} must be 'tiled' or 'cpu', not {chosen!r}")
    return chosen


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
                 family: str | None = None):
        self.family = _family(info, family)
        self.info = info
        self.cl_device = cl_device
        self.context = cl.Context([cl_device])
        properties = cl.command_queue_properties.PROFILING_ENABLE if profiling else 0
        self.queue = cl.CommandQueue(self.context, properties=properties)
        self.copy_queue = cl.CommandQueue(self.context, properties=properties)  # uploads that overlap the kernels
        self.programs = {}
        log.debug("Opened %s (%s kernels)", info.label, self.family)

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
           family: str | None = None) -> Device:
    """Open an OpenCL device.

    `platform` and `device` are an index or a case-insensitive name substring (a platform matches on
    its name, vendor or version, so "pocl", "nvidia" and "intel" work; a device on its name or its
    type, "gpu"/"cpu"). Unset, they come from CLNET_PLATFORM / CLNET_DEVICE; with neither, the best
    device is taken: a GPU before a CPU. A device index counts within the platform when one is
    given, else across all devices as `clnet-devices` numbers them. `profiling` opens queues whose
    events carry device timestamps. `family` ("tiled" or "cpu") overrides the kernel family the
    device's type implies, as CLNET_GEMM does when it is not given.

    Raises:
        DeviceNotFoundError: nothing matches (its message lists the devices there are), or there is
            no OpenCL platform at all.

    Example:
        >>> dev = clnet.device()                                  # the best device
        >>> dev = clnet.device(platform="pocl", device="cpu")
        >>> model = clnet.Sequential(layers, device=dev)
    """
    platform = platform if platform is not None else os.environ.get("CLNET_PLATFORM") or None
    device = device if device is not None else os.environ.get("CLNET_DEVICE") or None
    info, cl_device = _select(_discover(), platform, device)
    return Device(info, cl_device, profiling, family)

