"""Test fixtures. Op and model tests run on every OpenCL device found, or on those chosen by
CLNET_TEST_DEVICES: comma-separated global indices or platform/device name substrings
(e.g. CLNET_TEST_DEVICES=pocl, or =0)."""

import importlib
import os
import tempfile

import numpy as np
import pytest

import clnet
from clnet.device import INSTALL_HINT
from clnet.plan import ALIGN, Plan
from clnet.tensor import DeviceTensor
from clnet.tuning import Tuned


# The tests never read the developer's tuning cache (clnet-tune), nor the shipped tables of tuned
# parameters (test_tuning.py checks those): defaults unless a test says otherwise.
os.environ["CLNET_TUNING_FILE"] = os.path.join(tempfile.mkdtemp(prefix="clnet-tests-"), "tuning.json")
os.environ["CLNET_TUNING"] = "cache"
# The GPU family's small 3x3 convolutions run as implicit GEMMs in the tests (unless the run says
# otherwise), which cover those paths with the family forced onto any device; test_direct_conv.py
# turns the direct kernel (the default) on for its own tests.
os.environ.setdefault("CLNET_DIRECT_CONV", "0")
# Likewise consecutive Dense layers run a GEMM each, whatever the CPU's compute units (the chains
# from 8): the tests that cover the chains turn them on.
os.environ.setdefault("CLNET_DENSE_CHAIN", "0")


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
    """Runs a test with each kernel family (both work on any device) on the test's device."""
    if "device" in request.fixturenames:
        monkeypatch.setattr(request.getfixturevalue("device"), "family", request.param)
    return request.param


def upload(device, array, dtype=np.float32):
    return DeviceTensor.from_numpy(device, np.asarray(array), dtype)


def force_gemm_params(monkeypatch, params):
    """Every GEMM recorded from now on takes `params`, as though tuned so: parameters clnet-tune may
    pick, under test."""
    gemm_module = importlib.import_module("clnet.ops.gemm")  # clnet.ops.gemm is also the function's name
    monkeypatch.setattr(gemm_module, "lookup", lambda device, case: Tuned(params, "a test"))


def execute(plan):
    """Allocate and bind a plan recorded over device tensors (and values), run it, wait."""
    plan.finalize(plan.place())
    plan.run()
    plan.device.finish()
    return plan


def new_plan(device):
    return Plan(device)


GUARD = 12345.0        # around float outputs
INT_GUARD = -777       # around int32 outputs
INT_UNWRITTEN = -5     # inside int32 outputs before the launch: never a valid index


class Slot:
    """`array` at element `offset` of a larger buffer whose other elements hold `fill`.

    Inputs are surrounded by NaN, so a kernel that ignores an offset or reads past its tensor
    poisons its own result; outputs (`Slot.output`) start unwritten and are surrounded by a guard
    value that `read` checks, so a stray write or a forgotten element is caught."""

    def __init__(self, device, array, offset, fill=np.nan, dtype=np.float32, tail=29):
        array = np.asarray(array, dtype)
        self.shape, self.offset, self.size, self.fill = array.shape, offset, array.size, fill
        flat = np.full(offset + array.size + tail, fill, dtype)
        flat[offset:offset + array.size] = array.reshape(-1)
        self.whole = DeviceTensor.from_numpy(device, flat, dtype)
        self.tensor = self.whole.view(array.shape, offset)

    @classmethod
    def output(cls, device, shape, offset, dtype=np.float32):
        """An output: NaN (int32: INT_UNWRITTEN) until written, GUARD (INT_GUARD) around it."""
        if np.dtype(dtype) == np.int32:
            return cls(device, np.full(shape, INT_UNWRITTEN), offset, fill=INT_GUARD, dtype=np.int32)
        return cls(device, np.full(shape, np.nan), offset, fill=GUARD)

    def read(self):
        """The tensor's contents, after checking that nothing around it changed."""
        flat = self.whole.download()
        around = np.concatenate([flat[:self.offset], flat[self.offset + self.size:]])
        if np.isnan(self.fill):
            assert np.isnan(around).all(), "a kernel wrote outside its tensor"
        else:
            assert (around == self.fill).all(), "a kernel wrote outside its tensor"
        return flat[self.offset:self.offset + self.size].reshape(self.shape)


class SlotPlan(Plan):
    """A plan whose values are `Slot.output`s at odd offsets, each in a buffer of its own: a layer's
    outputs (made with ctx.plan.value) are then checked as an op's, unwritten elements and stray
    writes included, by `read`. Run it with `execute`. `aligned`: at offsets of whole ALIGN blocks
    instead, as the arena places values (the CPU family's GEMM panels are stored as aligned float16)."""

    def __init__(self, device, aligned=False):
        super().__init__(device)
        self.slots = {}  # id of a value's tensor -> its Slot
        self.aligned = aligned

    def value(self, shape, name, dtype=np.float32):
        offset = ALIGN * (1 + len(self.slots)) if self.aligned else 3 + 2 * len(self.slots)
        slot = Slot.output(self.device, shape, offset, dtype)
        self.slots[id(slot.tensor)] = slot
        return slot.tensor

    def read(self, value):
        """The contents of a value this plan made, after checking the guard around it."""
        return self.slots[id(value)].read()
