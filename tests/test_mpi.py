"""MPI across processes (clnet/distributed.py): `mpiexec -n 2` of a small training script
(tests/mpi_fit.py) and of clnet-train, against the same run in one process; a rank killed, stuck
or failing ends the run within a bounded time with a loadable checkpoint. Skipped without mpi4py or
mpiexec; every run has a timeout, so a hang fails the test instead of blocking CI."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import clnet
import mpi_fit
from clnet.errors import InputError

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120  # seconds: a run that takes longer has hung


def mpiexec(*command, ranks=2, env=None):
    """Run `command` on `ranks` processes; (exit status, stdout, stderr, seconds)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
    start = time.perf_counter()
    done = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *map(str, command)], capture_output=True,
                          text=True, env=environment, timeout=TIMEOUT)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


def fit_script(mode, device, out):
    return mpiexec(ROOT / "tests" / "mpi_fit.py", mode, device.info.index, out)


def test_two_ranks_match_one_process(device, tmp_path):
    """Three steps on two ranks equal one process's with the global batch (1e-5 relative), a fit
    reaches its accuracy, only rank 0 writes files, and a checkpoint of two ranks resumes only
    with two."""
    status, out, err, _ = fit_script("step", device, tmp_path)
    assert status == 0, err
    one = tmp_path / "one"
    one.mkdir()
    mpi_fit.main("step", device.info.index, one)
    single, ranks = np.load(one / "step.npz"), np.load(tmp_path / "step.npz")
    for key in single:
        scale = max(float(np.abs(single[key]).max()), 1e-6)
        assert np.abs(ranks[key] - single[key]).max() <= 1e-5 * scale, key
    accuracy = [json.loads((folder / "result.json").read_text())["accuracy"] for folder in (one, tmp_path)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.005 and accuracy[0] > 0.7, accuracy
    np.testing.assert_allclose(np.load(tmp_path / "predictions.npy"), np.load(one / "predictions.npy"), atol=1e-4)
    assert sorted(p.name for p in tmp_path.glob("saved-*")) == ["saved-0.clnet"]  # rank 1 wrote nothing
    model = mpi_fit.mlp(device)
    x, y, _, _ = mpi_fit.data()
    with pytest.raises(InputError, match="written by a run of 2 processes .* resume it with mpirun -n 2"):
        model.fit(x, y, checkpoint=tmp_path / "run.ckpt", resume=True, **mpi_fit.FIT)


@pytest.mark.parametrize("mode, says", [
    ("kill", "KILLED BY SIGNAL: 9|signal 9"),
    ("hang", "rank 0 of 2 waited 3 s for the other ranks"),
    ("fail", "RuntimeError: rank 1 fails on purpose.*rank 1 of 2 failed; ending every rank")],
    ids=["kill", "hang", "fail"])
def test_a_rank_that_stops_ends_the_run(device, tmp_path, mode, says):
    """Rank 1 killed, stuck or raising mid-epoch: the run ends with a clear message within seconds
    (the watchdog waits CLNET_MPI_TIMEOUT=3 s), and the checkpoint of the last epoch loads."""
    status, out, err, seconds = mpiexec(ROOT / "tests" / "mpi_fit.py", mode, device.info.index, tmp_path,
                                        env={"CLNET_MPI_TIMEOUT": "3"})
    assert status != 0 and seconds < 60
    assert re.search(says, out + err, flags=re.S), out + err
    loaded = clnet.load_checkpoint(tmp_path / "run.ckpt", device=device)
    assert loaded.epoch == 1 and not (tmp_path / "result.json").exists()
    if mode == "kill":  # resumed on two ranks, the run ends as one process's uninterrupted
        status, out, err, _ = fit_script("resume", device, tmp_path)
        assert status == 0, err
        one = tmp_path / "one"
        one.mkdir()
        mpi_fit.main("fit", device.info.index, one)
        resumed, single = (clnet.load(folder / "saved-0.clnet", device=device).state_dict()
                           for folder in (tmp_path, one))
        for key, value in single.items():
            assert np.abs(resumed[key] - value).max() <= 1e-4 * np.abs(value).max(), key


def test_clnet_train_on_two_ranks(device, tmp_path):
    """clnet-train under mpiexec: rank 0 alone prints and writes the run folder; the test accuracy
    is one process's."""
    options = ["--device", str(device.info.index), "--model", "mlp", "--epochs", "2", "--batch-size", "64",
               "--seed", "1", "--quiet"]
    status, out, err, _ = mpiexec("-c", "from clnet.cli import train; train()", *options, "--checkpoint-dir",
                                  tmp_path / "run")
    assert status == 0, err
    assert out.count("Test accuracy") == 1, out
    alone = subprocess.run([sys.executable, "-c", "from clnet.cli import train; train()", *options],
                           capture_output=True, text=True, timeout=TIMEOUT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    accuracy = [float(text.split("Test accuracy ")[1].split()[0]) for text in (alone.stdout, out)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.005, accuracy
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.clnet", "checkpoint.clnet", "metrics.csv",
                                                                    "model.clnet", "options.json"]
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3  # a header and two epochs


def test_replicas_on_ranks_draw_one_devices_masks(device, tmp_path):
    """Two ranks of two replicas each (shards of 12 and 13 rows): dropout masks, crops and flips
    keyed by each sample's row in the global batch, so the fit is one device's."""
    status, out, err, _ = fit_script("dropout", device, tmp_path)
    assert status == 0, err
    single, ranks = mpi_fit.fit_dropout(device).state_dict(), np.load(tmp_path / "dropout.npz")
    for key, value in single.items():
        assert np.abs(ranks[key] - value).max() <= 1e-5 * np.abs(value).max(), key


@pytest.mark.parametrize("variables, several", [
    ({}, False), ({"PMI_SIZE": "1"}, False), ({"PMI_SIZE": "4"}, True), ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "1"}, False), ({"PMIX_RANK": "0"}, True)])
def test_launcher_variables(monkeypatch, variables, several):
    """A plain run (or a launcher's single task) never imports MPI; several processes do."""
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert clnet.distributed.launched() is several


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(device, tmp_path):
    """Ctrl-C reaching rank 0 alone: every rank stops after the same step, the checkpoint holds it
    (every rank's metrics), and the run resumed on two ranks ends as one process's."""
    status, out, err, seconds = fit_script("interrupt", device, tmp_path)
    assert status != 0 and seconds < 60 and "KeyboardInterrupt" in err and "failed; ending" not in err, err
    saved = clnet.io.read_checkpoint(tmp_path / "run.ckpt")
    assert (saved.epoch, saved.step) == (1, 4) and np.shape(saved.state["metrics"]) == (2, 4)
    status, out, err, _ = fit_script("resume", device, tmp_path)
    assert status == 0, err
    one = tmp_path / "one"
    one.mkdir()
    mpi_fit.main("fit", device.info.index, one)
    resumed, alone = (json.loads((folder / "result.json").read_text()) for folder in (tmp_path, one))
    assert resumed == pytest.approx(alone, rel=1e-4)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_timeout_is_named(monkeypatch, value):
    monkeypatch.setenv("CLNET_MPI_TIMEOUT", value)
    with pytest.raises(clnet.ClnetError, match=f"CLNET_MPI_TIMEOUT must be a number of seconds above 0 .*'{value}'"):
        clnet.distributed.timeout()
    monkeypatch.setenv("CLNET_MPI_TIMEOUT", "2.5")
    assert clnet.distributed.timeout() == 2.5


def test_ranks_stream_their_rows_of_an_image_folder(device, tmp_path):
    """A streamed image folder on two ranks: each rank's workers decode only its rows of every
    global batch (the last, shorter ones included), so that the two ranks decode each sample of an
    epoch once between them; the epoch's weights, the evaluation and the predictions are one
    process's (1e-5 relative)."""
    mpi_fit.write_images(tmp_path / "images")
    status, out, err, _ = fit_script("stream", device, tmp_path)
    assert status == 0, err
    one = tmp_path / "one"
    one.mkdir()
    model, result, predictions = mpi_fit.fit_stream(device, tmp_path / "images", one)
    ranks = np.load(tmp_path / "stream.npz")
    for key, value in {**model.state_dict(), "predictions": predictions}.items():
        assert np.abs(ranks[key] - value).max() <= 1e-5 * np.abs(value).max(), key
    assert {k: float(ranks[f"evaluate.{k}"]) for k in result} == pytest.approx(result, rel=1e-5)
    files = sorted(str(p) for p in (tmp_path / "images").rglob("*.*"))
    for phase in ("fit", "evaluate", "predict"):
        decoded = [(folder / f"decoded-{phase}-{rank}.txt").read_text().split()
                   for folder, rank in ((tmp_path, 0), (tmp_path, 1), (one, 0))]
        assert sorted(decoded[0] + decoded[1]) == sorted(decoded[2]) == files, phase  # each file once
        assert 0 < len(decoded[1]) < len(decoded[0]), phase  # rank 0's part of an odd batch is the larger
