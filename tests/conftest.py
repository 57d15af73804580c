"""Test fixtures. Op and model tests run on every OpenCL device found, or on those chosen by
CLNET_TEST_DEVICES: comma-separated global indices or platform/device name substrings
(e.g. CLNET_TEST_DEVICES=pocl, or =0)."""

import os

import numpy as np
import pytest

import clnet
from clnet.device import INSTALL_HINT
from clnet.plan import Plan
from clnet.tensor import DeviceTensor


def _selected():
    infos = clnet.list_devices()
    wanted = [w.strip().lower() for w in os.environ.get("CLNET_TEST_DEVICES", "").split(",") if w.strip()]
    if wanted:
        infos = [i for i in infos if any(w == str(i.index) if w.isdigit() else
                                         w in i.name.lower() or i.matches_platform(w) for w in wanted)]
    return infos


DEVICES = _selected()
_opened = {}


def pytest_report_header(config):
    return [f"clnet test device {i.index}: {i.label}" for i in DEVICES] or ["clnet: no OpenCL device"]


def pytest_collection_modifyitems(config, items):
    if not DEVICES and any("device" in getattr(item, "fixturenames", ()) for item in items):
        raise pytest.UsageError("No OpenCL device for the tests (CLNET_TEST_DEVICES="
                                f"{os.environ.get('CLNET_TEST_DEVICES', '')!r}). {INSTALL_HINT}")


@pytest.fixture(params=DEVICES, ids=lambda i: f"dev{i.index}")
def device(request):
    """Each opened once per session, so programs are built once per device."""
    info = request.param
    if info.index not in _opened:
        _opened[info.index] = clnet.device(device=info.index)
    return _opened[info.index]


@pytest.fixture(params=["tiled", "cpu"])
def gemm_family(request, monkeypatch):
    """Runs a test with each GEMM kernel family (both work on any device)."""
    monkeypatch.setenv("CLNET_GEMM", request.param)
    return request.param


def upload(device, array, dtype=np.float32):
    return DeviceTensor.from_numpy(device, np.asarray(array), dtype)


def execute(plan):
    """Allocate and bind a plan recorded over device tensors (and values), run it, wait."""
    plan.finalize(plan.place())
    plan.run()
    plan.device.finish()
    return plan


def new_plan(device):
    return Plan(device)
