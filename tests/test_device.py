"""Device discovery and selection, and the kernel library (no device fixture: these pick their own)."""

import sys

import pyopencl as cl
import pytest

import clnet
from clnet.device import _from_requested, _select, _select_several
from clnet.kernels import KernelLibrary, kernel_dir, _with_source_lines


def fake(index, p_index, d_index, platform, name, kind, units=4):
    info = clnet.DeviceInfo(index, p_index, d_index, platform, platform + " vendor", "OpenCL 3.0 " + platform,
                            name, kind, units, 2**30, 2**28, 2**16, True, False, "OpenCL C 1.2", "1.0")
    return info, object()


device_module = sys.modules["clnet.device"]  # clnet.device is the function that opens one

FAKE = [fake(0, 0, 0, "Portable Computing Language", "pthread-cpu", "CPU", 16),
        fake(1, 1, 0, "NVIDIA CUDA", "NVIDIA H100", "GPU"),
        fake(2, 1, 1, "NVIDIA CUDA", "NVIDIA A100", "GPU", 8),
        fake(3, 2, 0, "Portable Computing Language", "pthread-cpu-old", "CPU")]


def test_best_device_is_a_gpu_then_the_most_compute_units():
    assert _select(FAKE, None, None)[0].name == "NVIDIA A100"
    assert _select(FAKE[:1] + FAKE[3:], None, None)[0].name == "pthread-cpu"


@pytest.mark.parametrize("platform, device, expected", [
    ("nvidia", None, "NVIDIA A100"), ("NVIDIA", "0", "NVIDIA H100"), ("1", "1", "NVIDIA A100"),
    ("portable", None, "pthread-cpu"), ("2", None, "pthread-cpu-old"), (None, "3", "pthread-cpu-old"),
    (None, "h100", "NVIDIA H100"), ("vendor", "cpu", "pthread-cpu"),
])
def test_selection_by_index_or_name(platform, device, expected):
    assert _select(FAKE, platform, device)[0].name == expected


@pytest.mark.parametrize("platform, device, expected", [
    (None, None, ["NVIDIA A100"]), ("nvidia", "all", ["NVIDIA H100", "NVIDIA A100"]),
    ("nvidia,portable", None, ["NVIDIA H100", "NVIDIA A100", "pthread-cpu", "pthread-cpu-old"]),
    (None, "all", [f[0].name for f in FAKE]), ("nvidia", "1,0", ["NVIDIA A100", "NVIDIA H100"]),
    (None, "0, 0", ["pthread-cpu", "pthread-cpu"]), ("1,2", "0", ["NVIDIA H100", "pthread-cpu-old"]),
])
def test_several_devices_for_replicas(platform, device, expected):
    assert [f[0].name for f in _select_several(FAKE, platform, device)] == expected


@pytest.mark.parametrize("ctx, expected", [
    ("1:1", "NVIDIA A100"), ("nvidia:h100", "NVIDIA H100"), ("1", "NVIDIA H100"), ("0", "pthread-cpu"),
    ("", "pthread-cpu"), ("2:", "pthread-cpu-old"), (":0", "pthread-cpu"), ("nvidia:a100", "NVIDIA A100"),
])
def test_pyopencl_ctx_chooses_platform_then_device_as_pyopencl(monkeypatch, ctx, expected):
    monkeypatch.setattr(device_module, "_discover", lambda: FAKE)
    monkeypatch.delenv("CLNET_PLATFORM", raising=False)
    monkeypatch.delenv("CLNET_DEVICE", raising=False)
    monkeypatch.setenv("PYOPENCL_CTX", ctx)
    assert _from_requested(_select, None, None)[0].name == expected
    assert [f[0].name for f in _from_requested(_select_several, None, None)] == [expected]


def test_arguments_then_clnet_variables_come_before_pyopencl_ctx(monkeypatch):
    monkeypatch.setattr(device_module, "_discover", lambda: FAKE)
    monkeypatch.delenv("CLNET_PLATFORM", raising=False)
    monkeypatch.setenv("PYOPENCL_CTX", "1:0")
    monkeypatch.setenv("CLNET_DEVICE", "a100")
    assert _from_requested(_select, None, None)[0].name == "NVIDIA A100"  # CLNET_DEVICE alone: not PYOPENCL_CTX
    assert _from_requested(_select, None, "h100")[0].name == "NVIDIA H100"  # the argument before the variable
    monkeypatch.delenv("CLNET_DEVICE")
    assert _from_requested(_select, None, "3")[0].name == "pthread-cpu-old"
    assert _from_requested(_select, None, None)[0].name == "NVIDIA H100"
    monkeypatch.setenv("PYOPENCL_CTX", "amd:0")
    with pytest.raises(clnet.DeviceNotFoundError, match="^PYOPENCL_CTX='amd:0': No OpenCL platform matches 'amd'"):
        _from_requested(_select, None, None)
    monkeypatch.setenv("PYOPENCL_CTX", "0:0:0")
    with pytest.raises(clnet.DeviceNotFoundError, match="more parts than 'platform:device'"):
        _from_requested(_select, None, None)
    monkeypatch.setenv("CLNET_PLATFORM", "7")
    with pytest.raises(clnet.DeviceNotFoundError, match="^CLNET_PLATFORM='7': No OpenCL platform matches '7'"):
        _from_requested(_select, None, None)


@pytest.mark.parametrize("variables, default, in_turn", [
    ({}, "[2] NVIDIA A100", "take in turn: [1], [2]"),
    ({"CLNET_DEVICE": "h100", "PYOPENCL_CTX": "1:1"}, "[1] NVIDIA H100", "every rank takes the same"),
    ({"PYOPENCL_CTX": "1:0"}, "[1] NVIDIA H100", "every rank takes the same"),
    ({"CLNET_PLATFORM": "2"}, "[3] pthread-cpu-old", "take in turn: [3]"),
    ({"CLNET_DEVICE": "amd"}, None, None),
])
def test_clnet_devices_names_what_device_opens_under_the_same_environment(monkeypatch, variables, default, in_turn):
    """clnet-devices' "Default:" line is the device `device()` opens (`_from_requested(_select)`),
    under CLNET_DEVICE and PYOPENCL_CTX too, not the best; its error is the same."""
    from click.testing import CliRunner
    from clnet.cli import devices
    monkeypatch.setattr(device_module, "_discover", lambda: FAKE)
    for name in ("CLNET_PLATFORM", "CLNET_DEVICE", "PYOPENCL_CTX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    output = CliRunner().invoke(devices, []).output
    if default is None:
        with pytest.raises(clnet.DeviceNotFoundError) as error:
            _from_requested(_select, None, None)
        assert output.endswith(f"Error: {error.value}\n")
        return
    assert default.endswith(_from_requested(_select, None, None)[0].name)
    assert f"Default: {default} [" in output and in_turn in output


def test_pyopencl_ctx_opens_a_real_device(monkeypatch):
    monkeypatch.delenv("CLNET_PLATFORM", raising=False)
    monkeypatch.delenv("CLNET_DEVICE", raising=False)
    last = clnet.list_devices()[-1]
    monkeypatch.setenv("PYOPENCL_CTX", f"{last.platform_index}:{last.device_index}")
    assert clnet.device().info == last and [d.info for d in clnet.devices()] == [last]


def test_no_match_lists_what_exists():
    with pytest.raises(clnet.DeviceNotFoundError, match=r"(?s)'amd'.*1:1  GPU  NVIDIA A100"):
        _select(FAKE, "amd", None)
    with pytest.raises(clnet.DeviceNotFoundError, match="No OpenCL device matches '7' on platform 'nvidia'"):
        _select(FAKE, "nvidia", "7")
    with pytest.raises(clnet.DeviceNotFoundError, match="No OpenCL platform matches 'amd'"):
        _select_several(FAKE, "nvidia,amd", "all")


def test_no_opencl_at_all_says_how_to_install_a_driver(monkeypatch):
    def no_platform():
        raise cl.LogicError("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR")
    monkeypatch.setattr(cl, "get_platforms", no_platform)
    assert clnet.list_devices() == []
    with pytest.raises(clnet.DeviceNotFoundError, match="pocl-binary-distribution"):
        clnet.device()


def test_real_devices_are_listed_and_opened_by_environment(monkeypatch):
    infos = clnet.list_devices()
    assert infos, "the tests need at least one OpenCL device"
    last = infos[-1]
    monkeypatch.setenv("CLNET_DEVICE", str(last.index))
    dev = clnet.device()
    assert dev.info == last
    assert "Device" in repr(dev)
    monkeypatch.setenv("CLNET_PLATFORM", "no-such-platform")
    with pytest.raises(clnet.DeviceNotFoundError):
        clnet.device()
    assert clnet.device(platform=str(last.platform_index), device=str(last.device_index)).info == last


def test_kernel_sources_are_found_and_programs_cached(tmp_path):
    assert (kernel_dir() / "gemm_tiled.cl").is_file() and (kernel_dir() / "gemm_common.h").is_file() and (kernel_dir() / "common.h").is_file()
    dev = clnet.device(device=0)
    library = KernelLibrary(dev)
    first = library.program("elementwise.cl", ACT=1)
    assert library.program("elementwise.cl", ACT=1) is first
    assert KernelLibrary(dev).program("elementwise.cl", ACT=1) is first  # cached on the device
    assert library.program("elementwise.cl", ACT=2) is not first
    k1, k2 = library.kernel("elementwise.cl", "activation_forward", ACT=1), \
        library.kernel("elementwise.cl", "activation_forward", ACT=1)
    assert k1 is not k2  # a plan binds its own arguments to each launch's kernel


def test_a_kernel_that_does_not_build_reports_file_options_and_log(tmp_path):
    (tmp_path / "common.h").write_text("// header\n")
    (tmp_path / "broken.cl").write_text("__kernel void f(__global float* x) { x[0] = undefined_thing; }\n")
    library = KernelLibrary(clnet.device(device=0), source_dir=tmp_path)
    with pytest.raises(clnet.KernelBuildError) as caught:
        library.program("broken.cl", ACT=2, TILE=8)
    error = caught.value
    assert error.filename == "broken.cl" and error.options == ["-DACT=2", "-DTILE=8"]
    assert "undefined_thing" in error.log
    assert "broken.cl" in str(error) and "-DACT=2 -DTILE=8" in str(error)


def test_the_kernel_family_is_decided_when_the_device_is_opened(monkeypatch):
    monkeypatch.delenv("CLNET_GEMM", raising=False)
    dev = clnet.device(device=0)
    assert dev.family == ("cpu" if dev.info.type == "CPU" else "tiled")
    monkeypatch.setenv("CLNET_GEMM", "tiled")
    assert clnet.device(device=0).family == "tiled"
    assert clnet.device(device=0, family="cpu").family == "cpu"  # the keyword before the variable
    monkeypatch.setenv("CLNET_GEMM", "cpu")
    assert dev.family == ("cpu" if dev.info.type == "CPU" else "tiled")  # an opened device keeps its own
    monkeypatch.setenv("CLNET_GEMM", "fast")
    with pytest.raises(ValueError, match="CLNET_GEMM must be 'tiled' or 'cpu', not 'fast'"):
        clnet.device(device=0)
    with pytest.raises(ValueError, match="family must be 'tiled' or 'cpu', not 'gpu'"):
        clnet.device(device=0, family="gpu")


def test_kernel_files_include_headers_into_the_source_that_keys_the_build(tmp_path):
    """A file may #include the headers beside it (from any directory: this one has a space in its
    name); they are expanded into the program's source, which the drivers' caches key on, so that a
    changed header is a new program for them. Build logs name the file and line of an error."""
    folder = tmp_path / "kernel sources"
    folder.mkdir()
    (folder / "common.h").write_text("// header\n")
    (folder / "value.h").write_text("#define VALUE 3\n")
    (folder / "broken.h").write_text("\n#define BROKEN undefined_thing\n")
    (folder / "k.cl").write_text('#include "value.h"\n'
                                 "__kernel void f(__global int* x, const int xo) { x[xo] = VALUE; }\n")
    (folder / "bad.cl").write_text('#include "broken.h"\n\n'
                                   "__kernel void g(__global int* x) { x[0] = BROKEN; }\n")
    library = KernelLibrary(clnet.device(device=0), source_dir=folder)
    assert library.kernel("k.cl", "f").names == ["x"]
    assert "#define VALUE 3" in library.source("k.cl")
    with pytest.raises(clnet.KernelBuildError) as caught:
        library.program("bad.cl")
    assert "undefined_thing" in caught.value.log and "bad.cl:3" in caught.value.log


def test_a_build_log_numbered_by_the_program_names_the_files():
    """NVIDIA's compiler ignores #line and numbers the lines of the expanded program (<kernel>:11):
    the library turns those into the file and line they come from."""
    source = "\n".join(['#line 1 "common.h"', "// header", "", '#line 1 "bad.cl"', '#line 1 "broken.h"', "",
                        "#define BROKEN undefined_thing", '#line 2 "bad.cl"', "", "__kernel void g() { BROKEN; }"])
    log = "<kernel>:10:21: error: use of undeclared identifier\n<kernel>:7:16: note: expanded from macro\n<kernel>:99:1"
    assert _with_source_lines(log, source) == ("bad.cl:3:21: error: use of undeclared identifier\n"
                                               "broken.h:2:16: note: expanded from macro\n<kernel>:99:1")
