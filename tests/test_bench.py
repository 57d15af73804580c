"""clnet-bench at tiny settings: the JSON it writes, the profile it prints, the checks that guard
its timings. Speed itself is never asserted."""

import json

import pytest
from click.testing import CliRunner

from clnet import bench, timing

TINY = ["--models", "mlp", "--batch-sizes", "4", "--steps", "1", "--repeats", "1", "--warmup", "0"]


def _bench(*args):
    """clnet-bench run with `args` through click's runner: its result (exit code, output)."""
    return CliRunner().invoke(bench.main, list(args))


def _positive(summary):
    return summary["median"] > 0 and summary["best"] >= summary["median"] and summary["steps"] >= 1


def test_json_has_every_number(device, tmp_path):
    path = tmp_path / "bench.json"
    result = _bench("--device", str(device.info.index), *TINY, "--torch-device", "none", "--gemm-sizes", "64",
                    "--json", str(path))
    assert result.exit_code == 0, result.output
    results = json.loads(path.read_text())
    assert set(results) == {"date", "command", "opencl", "cpu", "torch", "environment", "versions", "protocol",
                            "models", "gemm", "profile"}
    assert results["opencl"]["name"] == device.info.name and results["opencl"]["driver"] == device.info.driver
    assert results["torch"]["device"] is None
    assert results["protocol"]["repeats"] == 1 and results["protocol"]["steps_per_run"] == 1
    [row] = results["models"]
    assert (row["model"], row["batch"], row["check"], row["torch"]) == ("mlp", 4, None, None)
    assert _positive(row["clnet"]["train"]) and _positive(row["clnet"]["infer"])
    [result] = results["gemm"]
    assert result["n"] == 64 and result["reference"]["name"] == "numpy"
    assert _positive(result["clnet"]) and _positive(result["reference"]) and result["ratio"] > 0
    assert 0 <= result["max_relative_error"] <= bench.GEMM_RTOL
    assert results["profile"] == []


def test_profile_prints_every_kernel(device, monkeypatch):
    monkeypatch.setenv("CLNET_PROFILE", "1")
    out = _bench("--device", str(device.info.index), *TINY, "--torch-device", "none", "--no-gemm").output
    assert "Profile of one training step: mlp, batch 4" in out
    for name in ("gather_images", "softmax_cross_entropy", "sgd_step", "gemm_"):
        assert name in out


def test_profile_covers_the_step(device):
    profiling = bench.Device(device.info, device.cl_device, profiling=True)
    profile = bench.profile_step("mlp", 4, profiling, warmup=1)
    assert len(profile["launches"]) >= 8  # input stage, 3 forward GEMMs, loss, backward, optimizer
    assert all(launch["ms"] >= 0 for launch in profile["launches"])
    assert sum(k["launches"] for k in profile["kernels"]) == len(profile["launches"])
    assert sum(k["share"] for k in profile["kernels"]) == pytest.approx(1)
    assert 0 < profile["kernel_ms"] <= profile["span_ms"] * 1.001


def test_twin_is_checked_before_timing(device, tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    assert _bench("--device", str(device.info.index), *TINY, "--torch-device", "cpu", "--no-gemm",
                  "--json", str(path)).exit_code == 0
    results = json.loads(path.read_text())
    check = results["models"][0]["check"]
    assert check["max_probability_difference"] <= bench.PROB_ATOL
    assert check["loss"][0] == pytest.approx(check["loss"][1], rel=bench.LOSS_RTOL)
    assert check["loss_after_step"][0] != pytest.approx(check["loss"][0])  # the step changed the weights
    assert results["models"][0]["ratio"]["train"] > 0


def test_disagreement_aborts_before_timing(device, monkeypatch):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    monkeypatch.setattr(bench, "torch_twin", lambda network: nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.Tanh(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)))
    monkeypatch.setattr(bench, "measure", lambda *args: pytest.fail("timed after a failed check"))
    result = _bench("--device", str(device.info.index), *TINY, "--torch-device", "cpu", "--no-gemm")
    assert result.exit_code == 1
    assert ("Error: mlp at batch 4: clnet and PyTorch disagree, so nothing was timed: softmax outputs differ"
            in result.output)


def test_adaptive_steps_fill_the_minimum_time(monkeypatch):
    clock = [0.0]  # a step takes 1 ms of this clock
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def step():
        clock[0] += 0.001

    result = timing.measure(step, lambda: None, timing.Timing(warmup=2, steps=0, repeats=3, min_time=0.05))
    assert result.steps in (50, 51)  # calibrated on 1, then 10 steps
    assert result.seconds == pytest.approx([result.steps * 0.001] * 3)
    assert result.summary(10, "items/s")["median"] == pytest.approx(10_000)
