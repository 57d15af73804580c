"""The tuning cache (what clnet-tune writes, what the GEMM launcher reads) and the tuner itself."""

import importlib
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet import tune, tuning
from clnet.errors import ClnetError
from clnet.ops.gemm import GEMM_TILED, SPECS, Call, Matrix, gemm, record_gemm
from clnet.plan import Plan
from clnet.tensor import DeviceTensor
from clnet.tuning import Case, Tuned

from conftest import force_gemm_params

TILED = GEMM_TILED.defaults
TUNED = {**TILED, "TILE_M": 32, "TILE_N": 64, "WPT_M": 2}


@dataclass(frozen=True)
class FakeInfo:
    compute_units: int = 2
    platform: str = "Some Platform"
    platform_vendor: str = "Some Vendor"
    name: str = "Some Device"
    driver: str = "1.0"
    type: str = "GPU"
    local_mem: int = 49152


class FakeDevice:
    family = "tiled"
    max_work_group_size = 1024

    def __init__(self, compute_units=2):
        self.info = FakeInfo(compute_units)


def _reread_tables():
    """Forget the shipped tables read so far, and their current cases."""
    tuning.shipped_table.cache_clear()
    tuning.table_cases.cache_clear()


def cached(params):
    return Tuned(params, "the tuning cache")


def _store(path, cases, device=None):
    return tuning.store(device or FakeDevice(), {case: {"params": params} for case, params in cases.items()}, path)


def test_lookup_takes_the_nearest_case_of_the_same_kernel_and_layout(tmp_path):
    path = tmp_path / "tuning.json"
    near, far = dict(TUNED), {**TUNED, "TILE_K": 8}
    _store(path, {Case("gemm_tiled", "NT", 128, 256, 784): near, Case("gemm_tiled", "NT", 1024, 256, 784): far})
    device = FakeDevice()
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 128, 256, 784), path) == cached(near)
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 200, 300, 600), path) == cached(near)
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 900, 256, 784), path) == cached(far)
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 128, 1024, 784), path) is None  # 4x away
    assert tuning.lookup(device, Case("gemm_tiled", "NN", 128, 256, 784), path) is None   # another layout
    assert tuning.lookup(device, Case("gemm_packed", "NT", 128, 256, 784), path) is None     # another kernel
    assert tuning.lookup(device, Case("gemm_tiled", "NT+g4", 128, 256, 784), path) is None  # 4 groups of it


def test_entries_of_other_devices_and_other_sources_are_not_used(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    case = Case("gemm_tiled", "NN", 64, 64, 64)
    _store(path, {case: TUNED})
    other = FakeDevice()
    other.info = type("Info", (), {"platform": "Some Platform", "name": "Some Device", "driver": "2.0"})()
    _store(path, {case: TILED}, other)  # a driver upgrade is another entry; the first one is kept
    assert tuning.lookup(FakeDevice(), case, path) == cached(TUNED)
    assert tuning.lookup(other, case, path) == cached(TILED)
    monkeypatch.setenv("CLNET_TUNING", "0")
    assert tuning.lookup(FakeDevice(), case, path) is None
    monkeypatch.delenv("CLNET_TUNING")
    monkeypatch.setattr(tuning, "source_hash", lambda family: "changed-kernels")
    assert tuning.lookup(FakeDevice(), case, path) is None  # tuned for other kernel sources: stale
    _store(path, {Case("gemm_tiled", "NN", 8, 8, 8): TUNED})  # replaces the stale entry
    entry = json.loads(path.read_text())["devices"]["Some Platform | Some Device | 1.0"]
    assert entry["source"] == "changed-kernels" and list(entry["cases"]) == ["gemm_tiled NN 8x8x8"]


def test_a_cache_that_is_a_fifo_is_ignored_without_opening_it(tmp_path, caplog):
    os.mkfifo(tmp_path / "tuning.json")  # CLNET_TUNING_FILE=<a FIFO> would otherwise block every plan
    with caplog.at_level(logging.WARNING, logger="clnet"):
        assert tuning.lookup(FakeDevice(), Case("gemm_tiled", "NN", 64, 64, 64), tmp_path / "tuning.json") is None
    assert "is a FIFO, not a regular file" in caplog.records[0].getMessage()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "something else"}), "[]"])
def test_a_corrupt_cache_is_reported_ignored_and_replaced(tmp_path, content, caplog):
    path = tmp_path / "tuning.json"
    path.write_text(content)
    case = Case("gemm_tiled", "NN", 64, 64, 64)
    with caplog.at_level(logging.DEBUG, logger="clnet"):
        assert tuning.lookup(FakeDevice(), case, path) is None
    assert [(r.name, r.levelname) for r in caplog.records] == [("clnet.tuning", "WARNING")]
    assert re.search("ignoring the tuning cache .*clnet-tune", caplog.records[0].getMessage())
    _store(path, {case: TUNED})
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="clnet"):
        assert tuning.lookup(FakeDevice(), case, path) == cached(TUNED)
    assert caplog.records[0].getMessage() == "Tuned parameters for gemm_tiled NN 64x64x64 from the tuning cache's " \
        "gemm_tiled NN 64x64x64"


def test_invalid_tuned_parameters_fall_back_to_the_defaults(device, monkeypatch):
    """A hand-edited cache with parameters a kernel cannot take changes nothing."""
    monkeypatch.setattr(device, "family", "tiled")
    model = clnet.Sequential([L.Dense(5, 3)], device=device, seed=0)
    x = np.random.default_rng(0).normal(size=(4, 5))
    expected = model.predict(x)
    for broken in ({"TILE_M": 64}, {**TILED, "WPT_M": 3}, {**TILED, "TILE_K": 0}, "fast"):
        force_gemm_params(monkeypatch, broken)
        model = clnet.Sequential([L.Dense(5, 3)], device=device, seed=0)
        np.testing.assert_array_equal(model.predict(x), expected)


def test_the_tuner_begins_no_case_that_would_end_past_its_time(device, tmp_path, monkeypatch):
    """--max-seconds: at 10 s a case, a budget of 35 s tunes 3 cases (the 4th would end at 40 s);
    a budget of 0 tunes none."""
    clock = [0.0]
    monkeypatch.setattr(tune.time, "perf_counter", lambda: clock[0])
    call = type("Call", (), {"groups": 1})()
    cases = [(Case("gemm_tiled", "NN", 8, 8, n), call) for n in range(8, 14)]
    monkeypatch.setattr(tune, "collect", lambda *args: cases)

    def tuned(device, case, call, min_time, repeats):
        clock[0] += 10
        return {"params": TILED, "seconds": 1.0, "default_seconds": 1.0}
    monkeypatch.setattr(tune, "tune_case", tuned)
    for budget, count in (("35", 3), ("0", 0)):
        result = CliRunner().invoke(tune.main, ["--device", str(device.info.index), "--models", "mlp", "--max-seconds",
                                                budget, "--output", str(tmp_path / f"{budget}.json")])
        assert result.exit_code == 0, result.output
        assert f"stopped after {10 * count} s of {budget}: {6 - count} cases left untuned" in result.output
        assert f"wrote {count} tuned cases" in result.output


def test_the_tuner_writes_what_later_plans_use(device, tmp_path, monkeypatch):
    """clnet-tune on one small network: every GEMM of its training graph is tuned and cached for
    this device, and a model built afterwards computes the same as with the defaults."""
    monkeypatch.setenv("CLNET_DENSE_CHAIN", "0")  # the mlp's Dense layers as GEMMs, not a chain
    path = tmp_path / "cache" / "tuning.json"
    x = np.random.default_rng(0).normal(size=(8, 1, 28, 28))
    before = clnet.models.mlp(device=device, seed=0).predict(x)
    table = tmp_path / "some-class.json"
    args = ["--device", str(device.info.index), "--models", "mlp", "--batch-sizes", "8", "--sizes", "40",
            "--min-time", "0.001", "--repeats", "1", "--output", str(path), "--export-table", str(table),
            "--table-class", "some-class"]
    result = CliRunner().invoke(tune.main, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tuning 9 GEMMs" in out and f"wrote 9 tuned cases to {path}" in out
    entry = json.loads(path.read_text())["devices"][tuning.device_key(device)]
    assert len(entry["cases"]) == 9 and entry["source"] == tuning.source_hash(device.family)
    assert json.loads(table.read_text())["cases"] == entry["cases"]
    result = CliRunner().invoke(tune.main, args + ["--skip-tuned"])  # nothing left to do
    assert result.exit_code == 0 and "tuning 0 GEMMs" in result.output, result.output
    for key, result in entry["cases"].items():
        assert result["seconds"] <= result["default_seconds"] and tuning.lookup(device, Case.from_key(key), path)
    monkeypatch.setenv("CLNET_TUNING_FILE", str(path))
    np.testing.assert_allclose(clnet.models.mlp(device=device, seed=0).predict(x), before, rtol=1e-5, atol=1e-6)


def test_the_tuner_collects_what_the_steps_launch_the_most_work_first(device):
    """The cases of a network's plans, recorded without allocating them, are those its real training and
    inference steps launch: its convolutions' forward, weight and input gradients included."""
    cases = tune.collect(device, ["lenet5"], [4], [])
    with tuning.recording() as calls:
        model = clnet.models.lenet5(device=device, seed=0).compile("cross_entropy", "sgd")
        model._runner(4, (1, 28, 28), True, np.int32)
        model._runner(4, (1, 28, 28), False)
    assert {case for case, _ in cases} == {case for case, _ in calls}
    assert {"NN+conv", "NT+conv"} <= {case.layout for case, _ in cases}
    work = [sum(c.m * c.n * c.k for c, _ in calls if c == case) for case, _ in cases]  # launches x FLOPs
    assert work == sorted(work, reverse=True)


def test_the_tuner_checks_each_candidate_against_the_default(device, monkeypatch):
    """A candidate whose result differs is reported and never chosen (programs built by several
    threads, as on GPUs)."""
    calls = tune.collect(device, [], [], [48])
    (case, call), = calls
    real, default = tune.Operands.record, SPECS[call.kernel].candidates(device, call)[0]

    def broken(self, params):
        plan = real(self, params)
        if params != default:
            plan.launches.clear()  # the "kernel" leaves C as it was: a wrong result
        return plan
    monkeypatch.setattr(tune.Operands, "record", broken)
    reports = []
    result = tune.tune_case(device, case, call, 0.001, 1, reports.append, builders=4)
    assert result["params"] == default
    assert reports and all("differs from the default" in line for line in reports)


def test_exporting_a_table_needs_a_class(device, monkeypatch, tmp_path):
    """A device of no known class: --export-table is a usage error naming --table-class, before any tuning."""
    monkeypatch.setattr(tuning, "device_class", lambda info: None)
    monkeypatch.setattr(tune, "collect", lambda *args: pytest.fail("tuned without a class for the table"))
    result = CliRunner().invoke(tune.main, ["--device", str(device.info.index), "--export-table",
                                            str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "--table-class" in result.output, result.output


@pytest.mark.parametrize("option", ["--output", "--export-table"])
def test_the_tuner_refuses_a_special_output_before_tuning(device, monkeypatch, tmp_path, option):
    """A FIFO given to write is refused before any case is tuned (the table's old cases are read
    first: a FIFO would block that read)."""
    os.mkfifo(tmp_path / "fifo.json")
    monkeypatch.setattr(tune, "collect", lambda *args: pytest.fail("tuned before checking the output"))
    result = CliRunner().invoke(tune.main, ["--device", str(device.info.index), option, str(tmp_path / "fifo.json"),
                                            "--table-class", "some-class"])
    assert result.exit_code == 1 and "fifo.json is a FIFO, not a regular file" in result.output, result.output
    with pytest.raises(ClnetError, match="fifo.json is a FIFO"):
        tuning.export_table(device, {}, tmp_path / "fifo.json", "some-class")


def test_the_tuner_names_a_missing_device():
    result = CliRunner().invoke(tune.main, ["--platform", "no-such-platform"])
    assert result.exit_code == 1 and re.match("Error: .*no-such-platform", result.output)


def test_the_tuner_covers_what_chunked_convolutions_read(device, monkeypatch):
    """On the CPU family the input gradient of a strided convolution runs on chunks of dY: views whose
    leading dimension reaches past their own shape. The tuner's operands span all of it, and every
    candidate agrees."""
    if not 2 <= device.info.compute_units <= 15:
        pytest.skip("the table's, the default's and the rebalanced chunks coincide on this count")
    monkeypatch.setattr(device, "family", "cpu")
    monkeypatch.setattr(importlib.import_module("clnet.ops.conv"), "COLUMNS", 3 * 27 * 4)  # 3 images a chunk
    model = clnet.Sequential([L.Conv2D(2, 3, 3, padding=1), L.ReLU(), L.Conv2D(3, 2, 3, stride=2), L.Flatten(),
                              L.Dense(2 * 2 * 2, 3)], device=device, seed=0).compile("cross_entropy", "sgd")
    with tuning.recording() as calls:
        model._runner(7, (2, 6, 5), True, np.int32)
    chunked = [(case, call) for case, call in calls if case.layout == "TN" and call.b[1] > call.shape[1]]
    assert chunked
    for case, call in chunked:
        m, n, k = call.shape
        assert call.b[0] >= (k - 1) * call.b[1] + n, case.key
        reports = []
        tune.tune_case(device, case, call, 0.001, 1, reports.append)
        assert not reports, reports


@pytest.mark.parametrize("kernel", ["gemm_tiled", "gemm_packed", "gemm_direct"])
def test_the_tuner_tries_only_what_the_launcher_takes(device, kernel):
    """One spec per kernel serves both: every candidate (and switch variant) of the tuner is a
    valid parameter set for the launcher, the default first."""
    spec = SPECS[kernel]
    for shape in ((300, 200, 1000), (16, 16, 4096)):
        call = Call(kernel, (("TRANS_B", 1),), shape, (0, 0, None), (0, 0, None), (0, 0, None), 0)
        found = spec.candidates(device, call)
        assert found[0] == spec.default(device, *shape, {"TRANS_B": 1}) and len(found) > 1
        for params in found:
            assert spec.valid(params), params
            assert all(spec.valid(variant) for variant in spec.variants(device, params))


def test_the_tuner_times_a_split_tile_shape_unsplit_and_half_and_twice_as_split():
    """Where a tile shape splits K to give every compute unit 4 work-groups, the tuner also times it
    unsplit, in half as many slices and in twice as many: a product with enough tiles to fill the
    device once or twice may run faster so. A tile shape that fills the device unsplit stays unsplit."""
    big = (GEMM_TILED.big["TILE_M"], GEMM_TILED.big["TILE_N"], GEMM_TILED.big["TILE_K"])

    def big_tile_slices(n):
        call = Call("gemm_tiled", (("TRANS_A", 0), ("TRANS_B", 0)), (n, n, n), (0, 0, None), (0, 0, None),
                    (0, 0, None), 0)
        found = GEMM_TILED.candidates(FakeDevice(132), call)
        return sorted(p["SLICES"] for p in found if (p["TILE_M"], p["TILE_N"], p["TILE_K"]) == big)

    assert GEMM_TILED.split_k(FakeDevice(132), 1024, 1024, 1024, GEMM_TILED.big) == 8  # 64 tiles, K / 128 slices
    assert big_tile_slices(1024) == [1, 4, 8, 16]
    assert GEMM_TILED.split_k(FakeDevice(132), 4096, 4096, 4096, GEMM_TILED.big) == 1  # 1024 tiles
    assert big_tile_slices(4096) == [1]


@pytest.mark.parametrize("family", ["tiled", "cpu"])
def test_the_tuner_takes_grouped_convolutions(device, monkeypatch, family):
    """A grouped convolution's GEMMs are cases of their own, keyed by the number of groups (a tuned
    plain product of a group's size does not speak for them, nor for other group counts); the tuner
    launches them over every group's operands, in their layouts (on the GPU family the gradient GEMMs
    read dY's images: its call records the same GEMM again), and every candidate agrees with the
    default."""
    monkeypatch.setattr(device, "family", family)
    model = clnet.Sequential([L.Conv2D(6, 9, 3, padding=1), L.ReLU(), L.Conv2D(9, 6, 3, groups=3), L.Flatten(),
                              L.Dense(6 * 5 * 3, 3)], device=device, seed=0).compile("cross_entropy", "sgd")
    with tuning.recording() as calls:
        model._runner(5, (6, 7, 5), True, np.int32)
    grouped = [(case, call) for case, call in calls if call.groups > 1]
    assert grouped and all(case.layout.endswith("+g3") and call.groups == 3 for case, call in grouped)
    assert {case.layout for case, _ in grouped} >= {"NN+conv+g3", "NT+conv+g3"}
    images = {case.layout: (call.a[2], call.b[2]) for case, call in grouped}  # dY's pixels (5 x 3) per image
    assert images["NT+conv+g3"] == ((15, None) if family == "tiled" else (None, None))
    assert images.get("NN+conv-dx+g3") == ((None, 15) if family == "tiled" else None)
    for case, call in grouped:
        with tuning.recording() as again:
            tune.Operands(device, call, np.random.default_rng(0)).record(None)
        def without_spans(recorded):  # the tuner's operands are buffers of the call's spans
            return replace(recorded, a=recorded.a[1:], b=recorded.b[1:], c=recorded.c[1:])
        assert [(c, without_spans(k)) for c, k in again] == [(case, without_spans(call))], case.key
        reports = []
        result = tune.tune_case(device, case, call, 0.001, 1, reports.append)
        assert not reports and SPECS[call.kernel].valid(result["params"]), (case.key, reports)


# ---------------------------------------------------------------------- the shipped tables

def _info(platform, vendor, name, kind):
    return clnet.DeviceInfo(0, 0, 0, platform, vendor, "", name, kind, 1, 1, 1, 1, False, False, "", "1.0")


@pytest.mark.parametrize("platform, vendor, name, kind, expected", [
    ("NVIDIA CUDA", "NVIDIA Corporation", "NVIDIA H200", "GPU", "nvidia-hopper"),
    ("NVIDIA CUDA", "NVIDIA Corporation", "NVIDIA H100 80GB HBM3", "GPU", "nvidia-hopper"),
    ("NVIDIA CUDA", "NVIDIA Corporation", "NVIDIA A100-SXM4-80GB", "GPU", "nvidia-ampere"),
    ("NVIDIA CUDA", "NVIDIA Corporation", "NVIDIA GeForce RTX 3090", "GPU", "nvidia-ampere"),
    ("NVIDIA CUDA", "NVIDIA Corporation", "NVIDIA GeForce RTX 4090", "GPU", "nvidia-ada"),
    ("NVIDIA CUDA", "NVIDIA Corporation", "Tesla V100-SXM2-16GB", "GPU", "nvidia-gpu"),
    ("AMD Accelerated Parallel Processing", "Advanced Micro Devices, Inc.", "gfx90a:sramecc+:xnack-", "GPU",
     "amd-gpu"),
    ("Intel(R) OpenCL Graphics", "Intel(R) Corporation", "Intel(R) Arc(TM) A770 Graphics", "GPU", "intel-gpu"),
    ("Portable Computing Language", "The pocl project", "NVIDIA H100 80GB HBM3", "GPU", None),  # PoCL's CUDA
    ("Portable Computing Language", "The pocl project", "cpu-znver3-AMD EPYC 7B13", "CPU", "cpu-avx2-amd"),
    ("Portable Computing Language", "The pocl project", "pthread-skylake-avx512-AMD EPYC", "CPU",
     "cpu-avx512-amd"),
    ("Portable Computing Language", "The pocl project", "cpu-skylake-avx512-Intel(R) Xeon(R) Processor", "CPU",
     "cpu-avx512-intel"),
    ("Portable Computing Language", "The pocl project", "cpu-sapphirerapids-Intel(R) Xeon(R) Platinum 8480+",
     "CPU", "cpu-avx512-intel"),
    ("Portable Computing Language", "The pocl project", "cpu-haswell-Intel(R) Core(TM) i7-4770", "CPU",
     "cpu-avx2-intel"),
    ("Portable Computing Language", "The pocl project", "cpu-znver4-AMD Ryzen 9 7950X", "CPU", "cpu-avx512-amd"),
])
def test_device_classes(platform, vendor, name, kind, expected):
    assert tuning.device_class(_info(platform, vendor, name, kind)) == expected


def test_a_cpu_without_an_llvm_name_is_classed_by_the_hosts_flags(monkeypatch):
    monkeypatch.setattr(tuning, "_host_cpu", {"flags": " fpu sse2 avx avx2 fma"}.get)
    info = _info("Intel(R) CPU Runtime for OpenCL(TM) Applications", "Intel(R) Corporation",
                 "Intel(R) Xeon(R) CPU E5-2690 v4", "CPU")
    assert tuning.device_class(info) == "cpu-avx2-intel"


@pytest.mark.parametrize("cpuinfo, expected", [
    ({"flags": " fpu avx2 avx512f", "vendor_id": " AuthenticAMD"}, "cpu-avx512-amd"),
    ({"flags": " fpu avx2", "vendor_id": " GenuineIntel"}, "cpu-avx2-intel"),
    ({"flags": " fpu avx2", "vendor_id": " HygonGenuine"}, "cpu-avx2"),
    ({"flags": " fpu sse2", "vendor_id": " GenuineIntel"}, "cpu-intel"),
])
def test_a_cpu_whose_name_has_no_brand_takes_the_hosts_vendor(monkeypatch, cpuinfo, expected):
    """The /proc/cpuinfo lines of the host (the device is its CPU) name the vendor, a vendor without
    tables of its own none."""
    monkeypatch.setattr(tuning, "_host_cpu", lambda field: cpuinfo.get(field, ""))
    tuning.device_class.cache_clear()  # (cached by the DeviceInfo, which is the same in every case)
    try:
        assert tuning.device_class(_info("Some CPU Runtime", "Someone", "Some CPU", "CPU")) == expected
    finally:
        tuning.device_class.cache_clear()


def test_the_host_s_cpuinfo_is_read_by_field(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2\nflags\t\t: other\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                         *a, **k))
    assert (tuning._host_cpu("vendor_id"), tuning._host_cpu("flags"), tuning._host_cpu("bugs")) == \
        (" AuthenticAMD\n", " fpu avx2\n", "")


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """Shipped tables read from a folder of the test's own; the fake device is of class "test-class"."""
    monkeypatch.setattr(tuning, "TABLES", tmp_path / "tuned")
    monkeypatch.setattr(tuning, "device_class", lambda info: "test-class")
    monkeypatch.setenv("CLNET_TUNING", "1")
    _reread_tables()
    yield tmp_path / "tuned"
    _reread_tables()


def test_the_cache_wins_over_the_shipped_table(tables, tmp_path, monkeypatch):
    """The cache answers where its case is as near as the table's, the table where the cache has
    nothing as near; CLNET_TUNING=cache and =0 turn the table off."""
    tables.mkdir()
    device, near, far = FakeDevice(), Case("gemm_tiled", "NN", 128, 128, 128), Case("gemm_tiled", "NN", 4096, 64, 64)
    shipped = {**TILED, "TILE_K": 8}
    tuning.export_table(device, {near: {"params": shipped}, far: {"params": shipped}},
                        tuning.table_path("test-class"), note="a test")
    path = tmp_path / "tuning.json"
    _store(path, {near: TUNED})
    assert tuning.lookup(device, near, path) == cached(TUNED)
    assert tuning.lookup(device, far, path) == Tuned(shipped, "the shipped test-class table", 2)
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 4096, 64, 64), path) is None
    assert tuning.describe(device.info, device.family, path) == {
        "mode": "the cache, then the table", "cache": str(path), "cache_cases": 1, "class": "test-class",
        "table_cases": 2, "table_stale_cases": 0}
    _store(path, {Case("gemm_tiled", "NN", 4096, 64, 128): TUNED})  # within reach of `far`, not at it
    assert tuning.lookup(device, far, path) == Tuned(shipped, "the shipped test-class table", 2)
    assert tuning.lookup(device, Case("gemm_tiled", "NN", 4096, 64, 256), path) == cached(TUNED)  # nearer
    monkeypatch.setenv("CLNET_TUNING", "cache")
    assert tuning.lookup(device, far, path) == cached(TUNED)
    monkeypatch.setenv("CLNET_TUNING", "0")
    assert tuning.lookup(device, near, path) is None


@pytest.mark.parametrize("mode, cls, table_cases, stale, says", [
    ("1", "test-class", 2, 1, "shipped table: the test-class table (2 cases, 1 of them made for other kernel sources)"),
    ("1", "test-class", 2, 0, "shipped table: the test-class table (2 cases)"),
    ("1", "amd-gpu", 0, 0, "shipped table: none for class amd-gpu"),
    ("1", None, 0, 0, "shipped table: none (the device has no class)"),
    ("cache", "test-class", 0, 0, "the cache only; cache c.json: 3 cases for this device; shipped table: not used"),
])
def test_what_tuned_parameters_a_device_takes_in_a_line(mode, cls, table_cases, stale, says):
    described = {"mode": tuning.MODES[mode], "cache": "c.json", "cache_cases": 3, "class": cls,
                 "table_cases": table_cases, "table_stale_cases": stale}
    assert tuning.describe_text(described).endswith(says)


def test_a_table_for_other_kernel_sources_is_used_with_a_note(tables, tmp_path, monkeypatch, caplog):
    tables.mkdir()
    case, shipped = Case("gemm_tiled", "NN", 128, 128, 128), {**TILED, "TILE_K": 8}
    tuning.export_table(FakeDevice(), {case: {"params": shipped}}, tuning.table_path("test-class"))
    monkeypatch.setattr(tuning, "source_hash", lambda family: "changed-kernels")
    with caplog.at_level(logging.INFO, logger="clnet.tuning"):
        found = tuning.lookup(FakeDevice(), case, tmp_path / "none.json")
    assert found == Tuned(shipped, "the shipped test-class table", 2)
    assert "1 of the 1 cases of the shipped tuned table" in caplog.text
    assert "made for other kernel sources" in caplog.text
    assert tuning.describe(FakeInfo(2), "tiled", tmp_path / "none.json")["table_stale_cases"] == 1


def test_a_table_s_cases_for_the_current_kernel_sources_come_first(tables, tmp_path):
    """A table merging cases of several kernel sources (a case's own "source" over the table's)
    answers with its nearest current case within reach, even where a stale one is nearer; with the
    stale one where no current case is near."""
    tables.mkdir()
    near, far = Case("gemm_tiled", "NN", 128, 128, 128), Case("gemm_tiled", "NN", 128, 256, 128)
    stale, current = {**TILED, "TILE_K": 8}, {**TILED, "TILE_K": 32}
    path = tuning.table_path("test-class")
    tuning.export_table(FakeDevice(), {near: {"params": stale}, far: {"params": current}}, path)
    table = json.loads(path.read_text())
    table["cases"][near.key]["source"] = "older-kernels"
    path.write_text(json.dumps(table))
    _reread_tables()
    none, origin = tmp_path / "none.json", "the shipped test-class table"
    assert tuning.lookup(FakeDevice(), near, none) == Tuned(current, origin, 2)
    assert tuning.lookup(FakeDevice(), Case("gemm_tiled", "NN", 128, 64, 128), none) == Tuned(stale, origin, 2)
    assert tuning.describe(FakeInfo(2), "tiled", none)["table_stale_cases"] == 1
    table = {**table, "source": "older-kernels"}  # a table of older sources with one current case
    table["cases"] = {near.key: {"params": stale}, far.key: {"params": current, "source": tuning.source_hash("tiled")}}
    path.write_text(json.dumps(table))
    _reread_tables()
    assert tuning.lookup(FakeDevice(), near, none) == Tuned(current, origin, 2)
    assert tuning.describe(FakeInfo(2), "tiled", none)["table_stale_cases"] == 1


def test_exporting_extends_a_table_of_the_same_class_and_compute_units(tmp_path, monkeypatch, caplog):
    """Bounded runs build one table, their notes kept in order (a run's note once, for all its
    cases); after a kernel change its older cases stay, each naming the sources it was tuned for; a
    table of another class, or made on another count of compute units, is replaced with a warning."""
    path, one, two = tmp_path / "t.json", Case("gemm_tiled", "NN", 8, 8, 8), Case("gemm_tiled", "NT", 8, 8, 8)
    tuning.export_table(FakeDevice(), {one: {"params": TILED}}, path, "some-class", note="run 10")
    tuning.export_table(FakeDevice(), {two: {"params": TILED}}, path, "some-class", note="run 10")
    tuning.export_table(FakeDevice(), {two: {"params": TUNED}}, path, "some-class", note="run 1")
    tuning.export_table(FakeDevice(), {}, path, "some-class")
    table = json.loads(path.read_text())
    assert table["cases"] == {one.key: {"params": TILED}, two.key: {"params": TUNED}}
    assert table["tuned_on"]["note"] == "run 10; run 1"
    older = tuning.source_hash("tiled")
    monkeypatch.setattr(tuning, "source_hash", lambda family: "changed-kernels")
    tuning.export_table(FakeDevice(), {two: {"params": TILED}}, path, "some-class", note="run 2")
    table = json.loads(path.read_text())
    assert table["source"] == "changed-kernels" and table["tuned_on"]["note"] == "run 10; run 1; run 2"
    assert table["cases"] == {one.key: {"params": TILED, "source": older}, two.key: {"params": TILED}}
    with caplog.at_level(logging.WARNING, logger="clnet.tuning"):
        tuning.export_table(FakeDevice(16), {one: {"params": TUNED}}, path, "some-class", note="run 3")
    assert "made for class some-class on 2 compute units, this one is some-class on 16" in caplog.text
    table = json.loads(path.read_text())
    assert table["cases"] == {one.key: {"params": TUNED}} and table["tuned_on"]["note"] == "run 3"
    assert table["tuned_on"]["compute_units"] == 16
    tuning.export_table(FakeDevice(), {two: {"params": TUNED}}, path, "another-class")  # replaced
    table = json.loads(path.read_text())
    assert set(table["cases"]) == {two.key} and table["class"] == "another-class"
    assert table["tuned_on"]["device"] == "Some Device"
    assert table["tuned_on"]["compute_units"] == 2  # what a device of another unit count rebalances by
    with pytest.raises(ValueError, match="no device class"):
        tuning.export_table(type("Other", (), {"info": _info("P", "V", "x", "OTHER")})(), {}, path)


# ---------------------------------------------------------------------- a table of other compute units

def _defines(layout):
    """A product's fixed options for its layout's name, as record_gemm gives them to the specs."""
    return {"TRANS_A": int(layout[0] == "T"), "TRANS_B": int(layout[1] == "T"),
            "CONV_B": int(layout.endswith("+conv")), "GROUPS": int(layout.partition("+g")[2] or 1)}


DIRECT = {"CPU_ROWS": 8, "CHUNKS": 1, "SLICES": 1}


@pytest.mark.parametrize("key, params, then, now, expected", [
    # gemm_direct: CHUNKS by the defaults' ratio, at most one per block of rows (128 / 8 = 16); K kept
    ("gemm_direct NT 128x10x128", DIRECT, 2, 16, {"CHUNKS": 8}),  # the mlp's last layer: 1 of 2, now 8 of 16
    ("gemm_direct NT 128x10x128", {**DIRECT, "CHUNKS": 4}, 2, 16, {"CHUNKS": 16}),  # 32: one per row block
    ("gemm_direct NT 128x10x4096", {**DIRECT, "CHUNKS": 4, "SLICES": 2}, 2, 16, {"CHUNKS": 16}),
    ("gemm_direct NT 128x10x128", {**DIRECT, "CHUNKS": 16}, 16, 2, {"CHUNKS": 2}),
    ("gemm_direct NT 128x10x128", {**DIRECT, "CHUNKS": 2}, 16, 2, {"CHUNKS": 1}),  # 0.25: at least 1
    ("gemm_direct NT 128x256x784", DIRECT, 2, 16, {}),  # the mlp's first layer: 16 panels, one chunk each on both
    ("gemm_direct NN 512x512x512", {**DIRECT, "CHUNKS": 2}, 2, 16, {}),  # 32 panels: the defaults agree
    ("gemm_direct NT 24x10x128", {**DIRECT, "CPU_ROWS": 4, "CHUNKS": 2}, 2, 16, {"CHUNKS": 3}),  # the defaults'
    # own 3 blocks of 8 rows bound their ratio (2 and 3), where this row block has 6
    # gemm_packed: its defaults do not depend on the compute units
    ("gemm_packed NT+conv 32x288x32768", {"CPU_ROWS": 4, "SLICES": 1}, 2, 16, {}),
    ("gemm_packed NT 128x128x9216", {"CPU_ROWS": 4, "SLICES": 8}, 2, 16, {}),
    # gemm_tiled: SLICES by the defaults' ratio (their 64 x 64 tiles), at most K / 128
    ("gemm_tiled NT+conv 64x576x131072", {**TILED, "SLICES": 118}, 132, 114, {"SLICES": 102}),  # 59 and 51
    ("gemm_tiled NT 1024x128x9216", {**TILED, "SLICES": 33}, 132, 528, {"SLICES": 72}),  # 33 * 66 / 17 > 72
    ("gemm_tiled NN 1024x1024x1024", {**GEMM_TILED.big, "SLICES": 4}, 66, 132, {"SLICES": 6}),  # 2 and 3
    ("gemm_tiled NN 4096x4096x4096", {**GEMM_TILED.big, "SLICES": 1}, 66, 132, {}),  # 4096 tiles: unsplit on both
    ("gemm_tiled NT+conv 64x576x131072", {**TILED, "SLICES": 118}, 132, 8, {"SLICES": 8}),  # 59 and 4
    ("gemm_tiled NN+g4 64x64x4096", {**TILED, "SLICES": 32}, 132, 8, {"SLICES": 8}),  # 4 groups' tiles: 32 and 8
    ("gemm_tiled NN 64x64x4096", {**TILED, "SLICES": 32}, 132, 8, {}),  # one group's: 32 on both
])
def test_parameters_tuned_on_other_compute_units_are_rebalanced(key, params, then, now, expected):
    """The parameters that divide a product's work among the compute units, tuned on a device of
    `then` units, keep their ratio to the spec's default on a device of `now`, within the kernel's
    bounds; the rest kept."""
    case = Case.from_key(key)
    spec = SPECS[case.kernel]
    got = spec.rebalance(FakeDevice(now), case.m, case.n, case.k, _defines(case.layout), params, then)
    assert got == {**params, **expected} and spec.valid(got)


def test_only_a_shipped_table_that_names_its_units_is_rebalanced(tables, tmp_path, monkeypatch, caplog):
    """lookup says where parameters come from and a table's compute units; the launcher rebalances a
    table's for a device of another count, with a note in the log. The cache's (tuned on this very
    device) and those of a table that does not name its units are taken as they are."""
    tables.mkdir()
    gemm_module = importlib.import_module("clnet.ops.gemm")
    case, defines, table = Case("gemm_direct", "NT", 128, 10, 128), _defines("NT"), tuning.table_path("test-class")
    tuning.export_table(FakeDevice(2), {case: {"params": DIRECT}}, table)
    xeon, origin = FakeDevice(16), "the shipped test-class table"
    monkeypatch.setenv("CLNET_TUNING_FILE", str(tmp_path / "none.json"))
    assert tuning.lookup(xeon, case) == Tuned(DIRECT, origin, 2)
    with caplog.at_level(logging.DEBUG, logger="clnet.ops.gemm"):
        assert gemm_module._tuned(xeon, SPECS["gemm_direct"], case, defines) == {**DIRECT, "CHUNKS": 8}
    assert caplog.records[-1].getMessage() == "gemm_direct NT 128x10x128: parameters from the shipped test-class " \
        "table (tuned on 2 compute units) rebalanced for 16: CHUNKS 1 -> 8"
    assert gemm_module._tuned(FakeDevice(2), SPECS["gemm_direct"], case, defines) == DIRECT
    monkeypatch.setenv("CLNET_TUNING_FILE", str(_store(tmp_path / "tuning.json", {case: DIRECT}, xeon)))
    assert tuning.lookup(xeon, case) == cached(DIRECT)
    assert gemm_module._tuned(xeon, SPECS["gemm_direct"], case, defines) == DIRECT
    monkeypatch.setenv("CLNET_TUNING_FILE", str(tmp_path / "none.json"))
    older = json.loads(table.read_text())
    del older["tuned_on"]["compute_units"]
    table.write_text(json.dumps(older))
    _reread_tables()
    assert tuning.lookup(xeon, case) == Tuned(DIRECT, origin, None)
    assert gemm_module._tuned(xeon, SPECS["gemm_direct"], case, defines) == DIRECT


def test_a_rebalanced_table_runs_on_the_device(device, tables, tmp_path, monkeypatch):
    """On the test's device, the mlp's last layer (gemm_direct) with a shipped table tuned on one
    compute unit: CHUNKS 3 times the device's units (at most its 16 row blocks), not the table's 3 nor
    the default's; the product still right."""
    if not 2 <= device.info.compute_units <= 15:
        pytest.skip("the table's, the default's and the rebalanced chunks coincide on this count")
    monkeypatch.setattr(device, "family", "cpu")
    monkeypatch.setenv("CLNET_TUNING_FILE", str(tmp_path / "none.json"))
    tables.mkdir()
    tuning.export_table(FakeDevice(1), {Case("gemm_direct", "NT", 128, 10, 128): {"params": {**DIRECT, "CHUNKS": 3}}},
                        tuning.table_path("test-class"))
    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1, 1, (128, 128)).astype(np.float32), rng.uniform(-1, 1, (10, 128)).astype(np.float32)
    plan, c = Plan(device), DeviceTensor.empty(device, (128, 10))
    gemm(plan, DeviceTensor.from_numpy(device, a), DeviceTensor.from_numpy(device, b), c, trans_b=True)
    launch, = [launch for launch in plan.launches if launch.kernel.function_name == "gemm_direct"]
    assert tuple(launch.global_size) == (1, min(3 * device.info.compute_units, 16))
    plan.finalize(plan.place())
    plan.run()
    np.testing.assert_allclose(c.download(), a.astype(np.float64) @ b.astype(np.float64).T, rtol=1e-5, atol=1e-4)


SHIPPED = sorted(Path(tuning.TABLES).glob("*.json"))


def _checked_gemm(device, kernel, params, m, n, k):
    """The largest error of one GEMM with `params`, relative to the largest |entry| of C."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (m, k)), rng.uniform(-1, 1, (k, n))
    plan, c = Plan(device), DeviceTensor.empty(device, (m, n))
    defines = dict(TRANS_A=0, TRANS_B=0, HAS_BIAS=False, BIAS_PER_ROW=False, ACT=0)
    record_gemm(plan, kernel, defines, (m, n, k), Matrix(DeviceTensor.from_numpy(device, a), m, k),
                Matrix(DeviceTensor.from_numpy(device, b), k, n), Matrix(c, m, n), params=params)
    plan.finalize(plan.place())
    plan.run()
    expected = a @ b
    return float(np.abs(c.download() - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_table_is_sound(device, path):
    """Each shipped table names its class and kernel sources, and every parameter set in it is one
    its kernel takes, builds with the current sources and computes a GEMM correctly (on the test's
    device: both kernel families run anywhere). Cases made for older kernel sources pass: their
    parameters are speed hints, used with a note, until `clnet-tune --export-table` refreshes them."""
    table = json.loads(path.read_text())
    assert table["format"] == tuning.TABLE_FORMAT and table["class"] == path.stem and table["source"]
    assert tuning._table_units(table) == table["tuned_on"]["compute_units"]  # a positive int
    distinct = set()
    for key, result in table["cases"].items():
        case = Case.from_key(key)
        assert SPECS[case.kernel].valid(result["params"]), key
        assert re.fullmatch("[0-9a-f]{16}", result.get("source", table["source"])), key  # a source_hash()
        distinct.add((case.kernel, tuple(sorted(result["params"].items()))))
    for kernel, params in sorted(distinct):
        assert _checked_gemm(device, kernel, dict(params), 37, 50, 300) <= 1e-5, (kernel, params)


def test_tables_ship_in_the_package():
    assert SHIPPED, "no table in clnet/tuned"
    assert "tuned/*.json" in (Path(__file__).resolve().parent.parent / "setup.cfg").read_text()


# ---------------------------------------------------------------------- the cache under a lock

WRITER = """
import sys, time
from pathlib import Path
from clnet import tuning
class Info:
    platform, name, driver = "Some Platform", "Some Device", "1.0"
class Device:
    info, family = Info(), "tiled"
layout, count, path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
Path(f"{path}.{layout}.ready").touch()
while len(list(path.parent.glob("*.ready"))) < 2:  # both started: their writes overlap
    time.sleep(0.001)
for i in range(count):
    tuning.store(Device(), {tuning.Case("gemm_tiled", layout, 8, 8, i + 1): {"params": {}}}, path)
"""


def test_two_tuners_writing_at_once_lose_nothing(tmp_path):
    """Each writer reads, merges and writes under the file lock: every case of both is kept (without
    the lock, most runs lose some)."""
    path, count = tmp_path / "tuning.json", 100
    env = {**os.environ, "PYTHONPATH": str(Path(clnet.__file__).resolve().parent.parent)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, layout, str(count), str(path)], env=env)
               for layout in ("NN", "NT")]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    cases = json.loads(path.read_text())["devices"]["Some Platform | Some Device | 1.0"]["cases"]
    assert len(cases) == 2 * count


def test_the_cache_lives_in_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("CLNET_TUNING_FILE")
    monkeypatch.setattr(tuning.platformdirs, "user_cache_dir", lambda name: str(tmp_path / name))
    assert tuning.cache_path() == tmp_path / "clnet" / "tuning.json"


def test_each_kernel_family_s_tunings_follow_its_own_sources(monkeypatch):
    """An edit to the CPU family's GEMM kernels changes its source hash (staling its tunings) and
    leaves the GPU family's, and back."""
    original = tuning.program_source
    before = {family: tuning.source_hash(family) for family in tuning.SOURCES}
    for edited, kept in (("gemm_packed.cl", "tiled"), ("gemm_tiled.cl", "cpu")):
        monkeypatch.setattr(tuning, "program_source",
                            lambda folder, name, edited=edited: original(folder, name) + ("//" if name == edited else ""))
        tuning.source_hash.cache_clear()
        changed = {family for family in tuning.SOURCES if tuning.source_hash(family) != before[family]}
        assert changed == set(tuning.SOURCES) - {kept}, edited
    monkeypatch.undo()
    tuning.source_hash.cache_clear()
    assert {family: tuning.source_hash(family) for family in tuning.SOURCES} == before
