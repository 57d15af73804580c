"""The tuning cache (what clnet-tune writes, what the GEMM launcher reads) and the tuner itself."""

import importlib
import json
import logging
import re

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet import tune, tuning
from clnet.ops.gemm import GEMM_TILED, SPECS, Call
from clnet.tuning import Case

TILED = GEMM_TILED.defaults
TUNED = {**TILED, "TILE_M": 32, "TILE_N": 64, "WPT_M": 2}


class FakeInfo:
    platform, name, driver = "Some Platform", "Some Device", "1.0"


class FakeDevice:
    info = FakeInfo()


def _store(path, cases, device=None):
    return tuning.store(device or FakeDevice(), {case: {"params": params} for case, params in cases.items()}, path)


def test_lookup_takes_the_nearest_case_of_the_same_kernel_and_layout(tmp_path):
    path = tmp_path / "tuning.json"
    near, far = dict(TUNED), {**TUNED, "TILE_K": 8}
    _store(path, {Case("gemm_tiled", "NT", 128, 256, 784): near, Case("gemm_tiled", "NT", 1024, 256, 784): far})
    device = FakeDevice()
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 128, 256, 784), path) == near
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 200, 300, 600), path) == near
    assert tuning.lookup(device, Case("gemm_tiled", "NT", 900, 256, 784), path) == far
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
    assert tuning.lookup(FakeDevice(), case, path) == TUNED and tuning.lookup(other, case, path) == TILED
    monkeypatch.setenv("CLNET_TUNING", "0")
    assert tuning.lookup(FakeDevice(), case, path) is None
    monkeypatch.delenv("CLNET_TUNING")
    monkeypatch.setattr(tuning, "source_hash", lambda: "changed-kernels")
    assert tuning.lookup(FakeDevice(), case, path) is None  # tuned for other kernel sources: stale
    _store(path, {Case("gemm_tiled", "NN", 8, 8, 8): TUNED})  # replaces the stale entry
    entry = json.loads(path.read_text())["devices"]["Some Platform | Some Device | 1.0"]
    assert entry["source"] == "changed-kernels" and list(entry["cases"]) == ["gemm_tiled NN 8x8x8"]


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
        assert tuning.lookup(FakeDevice(), case, path) == TUNED
    assert caplog.records[0].getMessage() == "Tuned parameters for gemm_tiled NN 64x64x64 from the tuning cache's " \
        "gemm_tiled NN 64x64x64"


def test_invalid_tuned_parameters_fall_back_to_the_defaults(device, monkeypatch):
    """A hand-edited cache with parameters a kernel cannot take changes nothing."""
    monkeypatch.setattr(device, "family", "tiled")
    model = clnet.Sequential([L.Dense(5, 3)], device=device, seed=0)
    x = np.random.default_rng(0).normal(size=(4, 5))
    expected = model.predict(x)
    for broken in ({"TILE_M": 64}, {**TILED, "WPT_M": 3}, {**TILED, "TILE_K": 0}, "fast"):
        monkeypatch.setattr(importlib.import_module("clnet.ops.gemm"), "lookup", lambda d, c: broken)
        model = clnet.Sequential([L.Dense(5, 3)], device=device, seed=0)
        np.testing.assert_array_equal(model.predict(x), expected)


def test_the_tuner_writes_what_later_plans_use(device, tmp_path, monkeypatch):
    """clnet-tune on one small network: every GEMM of its training graph is tuned and cached for
    this device, and a model built afterwards computes the same as with the defaults."""
    path = tmp_path / "cache" / "tuning.json"
    x = np.random.default_rng(0).normal(size=(8, 1, 28, 28))
    before = clnet.models.mlp(device=device, seed=0).predict(x)
    args = ["--device", str(device.info.index), "--models", "mlp", "--batch-sizes", "8", "--sizes", "40",
            "--min-time", "0.001", "--repeats", "1", "--output", str(path)]
    result = CliRunner().invoke(tune.main, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tuning 9 GEMMs" in out and f"wrote 9 tuned cases to {path}" in out
    entry = json.loads(path.read_text())["devices"][tuning.device_key(device)]
    assert len(entry["cases"]) == 9 and entry["source"] == tuning.source_hash()
    for key, result in entry["cases"].items():
        assert result["seconds"] <= result["default_seconds"] and tuning.lookup(device, Case.from_key(key), path)
    monkeypatch.setenv("CLNET_TUNING_FILE", str(path))
    np.testing.assert_allclose(clnet.models.mlp(device=device, seed=0).predict(x), before, rtol=1e-5, atol=1e-6)


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


def test_the_tuner_names_a_missing_device():
    result = CliRunner().invoke(tune.main, ["--platform", "no-such-platform"])
    assert result.exit_code == 1 and re.match("Error: .*no-such-platform", result.output)


def test_the_tuner_covers_what_chunked_convolutions_read(device, monkeypatch):
    """On the CPU family the input gradient of a strided convolution runs on chunks of dY: views whose
    leading dimension reaches past their own shape. The tuner's operands span all of it, and every
    candidate agrees."""
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


@pytest.mark.parametrize("kernel", ["gemm_tiled", "gemm_packed"])
def test_the_tuner_tries_only_what_the_launcher_takes(device, kernel):
    """One spec per kernel serves both: every candidate (and switch variant) of the tuner is a
    valid parameter set for the launcher, the default first."""
    spec = SPECS[kernel]
    for shape in ((300, 200, 1000), (16, 16, 4096)):
        call = Call(kernel, (("TRANS_B", 1),), shape, (0, 0), (0, 0), (0, 0, None), 0)
        found = spec.candidates(device, call)
        assert found[0] == spec.default(device, *shape, {"TRANS_B": 1}) and len(found) > 1
        for params in found:
            assert spec.valid(params), params
            assert all(spec.valid(variant) for variant in spec.variants(device, params))


@pytest.mark.parametrize("family", ["tiled", "cpu"])
def test_the_tuner_takes_grouped_convolutions(device, monkeypatch, family):
    """A grouped convolution's GEMMs are cases of their own, keyed by the number of groups (a tuned
    plain product of a group's size does not speak for them, nor for other group counts); the tuner
    launches them over every group's operands, and every candidate agrees with the default."""
    monkeypatch.setattr(device, "family", family)
    model = clnet.Sequential([L.Conv2D(6, 9, 3, padding=1), L.ReLU(), L.Conv2D(9, 6, 3, groups=3), L.Flatten(),
                              L.Dense(6 * 5 * 3, 3)], device=device, seed=0).compile("cross_entropy", "sgd")
    with tuning.recording() as calls:
        model._runner(5, (6, 7, 5), True, np.int32)
    grouped = [(case, call) for case, call in calls if call.groups > 1]
    assert grouped and all(case.layout.endswith("+g3") and call.groups == 3 for case, call in grouped)
    assert {case.layout for case, _ in grouped} >= {"NN+conv+g3", "NT+conv+g3"}
    for case, call in grouped:
        reports = []
        result = tune.tune_case(device, case, call, 0.001, 1, reports.append)
        assert not reports and SPECS[call.kernel].valid(result["params"]), (case.key, reports)
