"""KernelLibrary: loads kernels_cl/*.cl, specialises them with -D options, builds once per device."""

import warnings
from pathlib import Path

import pyopencl as cl

from .errors import KernelBuildError, OutOfDeviceMemoryError

HEADER = "common.h"


def kernel_dir():
    """kernels_cl/ ships as the package clnet.kernels_cl in a wheel; in a source tree it sits beside clnet/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels_cl", here.parent / "kernels_cl"):
        if (candidate / HEADER).is_file():
            return candidate
    raise FileNotFoundError(f"clnet's OpenCL sources (kernels_cl/{HEADER}) are missing next to {here}; "
                            "reinstall clnet")


def _options(defines):
    """Sorted -D options, so that one specialisation always has one spelling (and one cache entry)."""
    opts = []
    for key in sorted(defines):
        value = defines[key]
        if value is True:
            opts.append(f"-D{key}")
        elif value is not False and value is not None:
            opts.append(f"-D{key}={value}")
    return opts


class KernelLibrary:
    """Builds each (file, defines) program once per device; hands out fresh `cl.Kernel` objects.

    A plan makes one `cl.Kernel` per launch and binds its arguments once, so kernels are not shared
    between launches; programs are, through the device's `programs` cache.
    """

    def __init__(self, device, source_dir=None):
        self.device = device
        self.source_dir = Path(source_dir) if source_dir else kernel_dir()

    def source(self, filename):
        header = (self.source_dir / HEADER).read_text()
        body = (self.source_dir / filename).read_text()
        return f"{header}\n#line 1\n{body}"

    def program(self, filename, **defines):
        options = _options(defines)
        key = (str(self.source_dir), filename, tuple(options))
        cache = self.device.programs
        if key not in cache:
            cache[key] = self._build(filename, options)
        return cache[key]

    def kernel(self, filename, name, **defines):
        return cl.Kernel(self.program(filename, **defines), name)

    def _build(self, filename, options):
        program = cl.Program(self.device.context, self.source(filename))
        try:
            with warnings.catch_warnings():  # pyopencl warns with the build log of every success
                warnings.simplefilter("ignore")
                # -w: some compilers (pip's PoCL 3.0) print their warnings to stderr themselves
                return program.build(options=options + ["-w"], devices=[self.device.cl_device])
        except cl.MemoryError as exc:
            raise OutOfDeviceMemoryError(f"Out of host or device memory while building {filename}: {exc}") from exc
        except cl.Error as exc:
            try:
                log = program.get_build_info(self.device.cl_device, cl.program_build_info.LOG)
            except cl.Error:
                log = str(exc)
            raise KernelBuildError(filename, options, log or str(exc)) from exc
