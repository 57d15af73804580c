"""KernelLibrary: loads kernels_cl/*.cl, specialises them with -D options, builds once per device,
and hands out kernels that know their arguments by the names of their OpenCL C signatures.

Every file is built after common.h; a file may also #include "header.h" the headers beside it.
"""

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyopencl as cl

from .errors import KernelBuildError, OutOfDeviceMemoryError

log = logging.getLogger(__name__)

HEADER = "common.h"


def kernel_dir():
    """kernels_cl/ ships as the package clnet.kernels_cl in a wheel; in a source tree it sits beside clnet/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels_cl", here.parent / "kernels_cl"):
        if (candidate / HEADER).is_file():
            return candidate
    raise FileNotFoundError(f"clnet's OpenCL sources (kernels_cl/{HEADER}) are missing next to {here}; "
                            "reinstall clnet")


# Includes are expanded here rather than by the OpenCL compiler (-I): the program's source text
# then holds everything it is built from, which is all that the drivers' binary caches (PoCL's,
# NVIDIA's) and pyopencl's key a program on, so that a changed header can never reuse a stale
# binary; nor does the build depend on how a driver parses an -I path (PoCL 3.1 fails on a quoted
# one with a space).
INCLUDE = re.compile(r'[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*')


def _expand(source_dir, name, including=()):
    """The text of `name` with each #include "header" line replaced by the header's expanded text;
    #line markers keep the build log's file names and line numbers."""
    if name in including:
        raise ValueError(f"{name} includes itself (through {' -> '.join(including)})")
    lines = [f'#line 1 "{name}"']
    for number, line in enumerate((Path(source_dir) / name).read_text().split("\n"), 1):
        match = INCLUDE.fullmatch(line)
        if match is None:
            lines.append(line)
        else:
            lines += [_expand(source_dir, match.group(1), including + (name,)), f'#line {number + 1} "{name}"']
    return "\n".join(lines)


LINE = re.compile(r'#line (\d+) "([^"]+)"')
UNMARKED = re.compile(r"<(?:kernel|source)>:(\d+)")  # NVIDIA's compiler numbers the program's lines


def _with_source_lines(log, source):
    """The build log with the program's own line numbers, where a compiler ignores #line and
    reports them, turned into the file and line they come from."""
    places, file, line = [], "?", 1  # the place of each line; (file, line): the next line's
    for text in source.split("\n"):
        places.append(f"{file}:{line}")
        marker = LINE.fullmatch(text)
        file, line = (marker.group(2), int(marker.group(1))) if marker else (file, line + 1)
    return UNMARKED.sub(lambda m: places[int(m.group(1)) - 1] if 0 < int(m.group(1)) <= len(places) else m.group(0),
                        log)


def program_source(source_dir, filename):
    """The whole source a program of `filename` is built from: common.h, then the file, its
    includes expanded."""
    return f"{_expand(source_dir, HEADER)}\n{_expand(source_dir, filename)}"


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


@dataclass(frozen=True)
class Argument:
    """One argument of a kernel as launches give it: a scalar, or a tensor, which the kernel takes as
    a `__global` pointer (whose name the argument has) followed by the pointer's int offset."""
    name: str
    index: int    # the OpenCL argument index (of the pointer, for a tensor)
    tensor: bool


# PoCL's headers #define OpenCL C built-in names as _cl_<name> (step, sign, ...), which its argument
# info then reports for arguments of those names.
POCL_RENAMED = "_cl_"


def read_arguments(kernel):
    """A `cl.Kernel`'s arguments, from the argument info of its program (built with
    -cl-kernel-arg-info), so that they come from the source as compiled, macros expanded."""
    found, count, index = [], kernel.num_args, 0
    while index < count:
        name = kernel.get_arg_info(index, cl.kernel_arg_info.NAME).removeprefix(POCL_RENAMED)
        tensor = (kernel.get_arg_info(index, cl.kernel_arg_info.ADDRESS_QUALIFIER)
                  == cl.kernel_arg_address_qualifier.GLOBAL)
        if tensor and (index + 1 == count or kernel.get_arg_info(index + 1, cl.kernel_arg_info.TYPE_NAME) != "int"):
            raise TypeError(f"{kernel.function_name}: the pointer {name} must be followed by its int offset")
        found.append(Argument(name, index, tensor))
        index += 2 if tensor else 1
    return tuple(found)


class Kernel:
    """A `cl.Kernel` (`cl_kernel`) with its `arguments` as launches give them, in signature order."""

    def __init__(self, cl_kernel, function_name, arguments):
        self.cl_kernel, self.function_name, self.arguments = cl_kernel, function_name, arguments

    @property
    def names(self):
        return [argument.name for argument in self.arguments]

    def position(self, name):
        """The position of argument `name` among `arguments`; a TypeError listing them if none has it."""
        for position, argument in enumerate(self.arguments):
            if argument.name == name:
                return position
        raise TypeError(f"kernel {self.function_name} has no argument {name!r}; its arguments are "
                        f"{', '.join(self.names)}")

    def __repr__(self):
        return f"<Kernel {self.function_name}({', '.join(self.names)})>"


class KernelLibrary:
    """Builds each (file, defines) program once per device; hands out fresh `Kernel` objects.

    A plan makes one `Kernel` per launch and binds its arguments once, so kernels are not shared
    between launches; programs are, through the device's `programs` cache, which also keeps each
    program's kernels' arguments (read once: plans record many launches of few kernels).
    """

    def __init__(self, device, source_dir=None):
        self.device = device
        self.source_dir = Path(source_dir) if source_dir else kernel_dir()

    def source(self, filename):
        return program_source(self.source_dir, filename)

    def program(self, filename, **defines):
        return self._built(filename, defines)[0]

    def kernel(self, filename, name, **defines):
        program, arguments = self._built(filename, defines)
        cl_kernel = cl.Kernel(program, name)
        if name not in arguments:
            arguments[name] = read_arguments(cl_kernel)
        return Kernel(cl_kernel, name, arguments[name])

    def _built(self, filename, defines):
        """The program of `filename` with `defines` and its kernels' arguments by kernel name."""
        options = _options(defines)
        key = (str(self.source_dir), filename, tuple(options))
        cache = self.device.programs
        if key not in cache:
            started = time.perf_counter()
            cache[key] = (self._build(filename, options), {})
            log.debug("Built %s %s in %.2f s", filename, " ".join(options), time.perf_counter() - started)
        return cache[key]

    def _build(self, filename, options):
        source = self.source(filename)
        program = cl.Program(self.device.context, source)
        try:
            with warnings.catch_warnings():  # pyopencl warns with the build log of every success
                warnings.simplefilter("ignore")
                # -cl-kernel-arg-info keeps the argument names that `read_arguments` reads; -w: some
                # compilers (pip's PoCL 3.0) print their warnings to stderr themselves
                # cache_dir=False: pyopencl's binary cache (used for drivers without their own) would make
                # programs from binaries, whose kernels have no argument names (OpenCL keeps them only
                # for programs built from source)
                return program.build(options=options + ["-cl-kernel-arg-info", "-w"], devices=[self.device.cl_device],
                                     cache_dir=False)
        except cl.MemoryError as exc:
            raise OutOfDeviceMemoryError(f"Out of host or device memory while building {filename}: {exc}") from exc
        except cl.Error as exc:
            try:
                log = program.get_build_info(self.device.cl_device, cl.program_build_info.LOG)
            except cl.Error:
                log = str(exc)
            raise KernelBuildError(filename, options, _with_source_lines(log, source) or str(exc)) from exc
