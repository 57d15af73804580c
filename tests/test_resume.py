"""Checkpointed training: a run interrupted (Ctrl-C, or killed outright) and resumed ends with the
same weights and history as one never interrupted."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import clnet

EPOCHS = 4
CHILD = textwrap.dedent("""
    import sys, time, clnet
    step = clnet.runner.Runner.train_resident  # 5 ms a step: the run outlasts the signal on fast devices
    clnet.runner.Runner.train_resident = lambda self, *args: (time.sleep(0.005), step(self, *args))[1]
    (x, y), _ = clnet.datasets.load_mnist_5k()
    model = clnet.models.lenet5(device=clnet.device(device=sys.argv[2]), seed=3)
    model.compile("cross_entropy", clnet.optim.Adam(lr=1e-3))
    model.fit(x[:600], y[:600], epochs=%d, batch_size=8, validation_split=0.1, verbose=0,
              augment="crop=2,flip", checkpoint=sys.argv[1], resume=True)
""" % EPOCHS)


def train(device, checkpoint=None, resume=False, epochs=EPOCHS):
    (x, y), _ = clnet.datasets.load_mnist_5k()
    model = clnet.models.lenet5(device=device, seed=3)
    model.compile("cross_entropy", clnet.optim.Adam(lr=1e-3))
    history = model.fit(x[:600], y[:600], epochs=epochs, batch_size=8, validation_split=0.1, verbose=0,
                        augment="crop=2,flip", checkpoint=checkpoint, resume=resume)
    return model, history


_straight = {}


@pytest.fixture
def straight(device):
    """The uninterrupted run's weights and history, once per device."""
    if device.info.index not in _straight:
        model, history = train(device)
        _straight[device.info.index] = model.state_dict(), history.history
    return _straight[device.info.index]


def assert_same_run(model, history, straight):
    weights, logs = straight
    for key in weights:
        np.testing.assert_array_equal(model.state_dict()[key], weights[key], err_msg=key)
    assert history.history == logs


def test_resuming_after_some_epochs_equals_training_straight(device, straight, tmp_path):
    checkpoint = tmp_path / "run.clnet"
    train(device, checkpoint, epochs=2)
    model, history = train(device, checkpoint, resume=True)
    assert_same_run(model, history, straight)
    assert clnet.load_checkpoint(checkpoint, device).epoch == EPOCHS


def run_child(device, checkpoint, stop, when):
    """Train in a subprocess and `stop` it (a signal) once the checkpoint exists, `when` seconds on."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(checkpoint), str(device.info.index)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(when)
    child.send_signal(stop)
    out, err = child.communicate(timeout=120)
    return child.returncode, err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_process_resumes_to_the_same_weights(device, straight, tmp_path, stop):
    checkpoint = tmp_path / "run.clnet"
    code, err = run_child(device, checkpoint, stop, when=0.3)
    assert code != 0, "the child finished before it was interrupted: make its run longer"
    if stop == signal.SIGINT:
        assert "KeyboardInterrupt" in err and "Traceback" in err
    assert not [p for p in os.listdir(tmp_path) if p != "run.clnet"]  # no temporary file left
    model, history = train(device, checkpoint, resume=True)
    assert_same_run(model, history, straight)


def test_ctrl_c_mid_epoch_saves_the_steps_done(device, straight, tmp_path, monkeypatch):
    """Ctrl-C arriving during the 20th step of the second epoch: that step completes, the checkpoint
    holds the 20 steps, the epoch's order and the metrics summed so far, and the resumed run ends
    where the straight one does."""
    checkpoint = tmp_path / "run.clnet"
    real_step, calls = clnet.runner.Runner.train_resident, []

    def step(self, *args):
        calls.append(1)
        if len(calls) == 68 + 20:  # 539 training images in batches of 8: 68 steps an epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args)

    monkeypatch.setattr(clnet.runner.Runner, "train_resident", step)
    with pytest.raises(KeyboardInterrupt):
        train(device, checkpoint)
    monkeypatch.undo()
    saved = clnet.load_checkpoint(checkpoint, device)
    assert (saved.epoch, saved.step) == (1, 20) and len(saved.state["order"]) == 539
    model, history = train(device, checkpoint, resume=True)
    assert_same_run(model, history, straight)


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(device, tmp_path):
    (x, y), _ = clnet.datasets.load_mnist_5k()
    checkpoint = tmp_path / "run.clnet"
    model = clnet.models.mlp(device=device, seed=0)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.05))
    model.fit(x[:256], y[:256], epochs=1, verbose=0, checkpoint=checkpoint)
    model.optimizer.lr = 1e12  # the next run's weights blow up
    with pytest.raises(clnet.TrainingError, match=r"the loss became (nan|inf) in epoch 1: lower the learning "
                                                  r"rate \(now 1e\+12\).*run.clnet keeps the last good epoch"):
        model.fit(x[:256], y[:256], epochs=3, verbose=0, checkpoint=checkpoint)
    assert model.history.epochs == []  # stopped before the diverged epoch was validated or recorded
    saved = clnet.load_checkpoint(checkpoint, device)
    assert saved.epoch == 1 and all(np.isfinite(v).all() for v in saved.model.state_dict().values())


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_metrics_log(device, tmp_path, suffix):
    import csv
    import json
    (x, y), _ = clnet.datasets.load_mnist_5k()
    model = clnet.models.mlp(device=device, seed=0)
    model.compile("cross_entropy", "sgd")
    log = tmp_path / f"metrics.{suffix}"
    history = model.fit(x[:300], y[:300], epochs=3, validation_split=0.2, verbose=0, log=log)
    rows = json.loads(log.read_text()) if suffix == "json" else list(csv.DictReader(log.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_accuracy"]) for r in rows] == pytest.approx(history.history["val_accuracy"])
    assert all(float(r["images_per_second"]) > 0 and float(r["seconds"]) > 0 for r in rows)


def test_a_checkpoint_resumes_on_another_device(tmp_path):
    """Started on one device, continued on another: the run goes on where it stopped (results
    agree with an uninterrupted run on the second device to float32 rounding)."""
    from conftest import DEVICES
    if len(DEVICES) < 2:
        pytest.skip("needs two OpenCL devices")
    first, second = (clnet.device(device=info.index) for info in DEVICES[:2])
    (x, y), _ = clnet.datasets.load_mnist_5k()

    def run(device, epochs, checkpoint=None, resume=False):
        model = clnet.models.mlp(device=device, seed=2)
        model.compile("cross_entropy", clnet.optim.Adam(lr=1e-3))
        history = model.fit(x[:500], y[:500], epochs=epochs, batch_size=50, validation_split=0.1, verbose=0,
                            checkpoint=checkpoint, resume=resume)
        return model, history

    run(first, 2, tmp_path / "run.clnet")
    moved, history = run(second, 4, tmp_path / "run.clnet", resume=True)
    straight, straight_history = run(second, 4)
    assert history.epochs == [1, 2, 3, 4]
    np.testing.assert_allclose(history.history["loss"], straight_history.history["loss"], rtol=1e-4)
    for key, value in straight.state_dict().items():
        np.testing.assert_allclose(moved.state_dict()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_a_checkpoint_written_before_the_trainer_resumes(device, tmp_path):
    """tests/data/checkpoint-0.1.0.clnet was written by clnet at f0c1ae7, which kept the schedule's
    and early stopping's states under keys of their own: after 2 of 4 epochs of the fit below. Its
    weights, optimizer and every callback's state come back, and the run goes on from epoch 3."""
    import shutil
    from pathlib import Path
    from clnet import layers as L
    from clnet.callbacks import EarlyStopping, ReduceLROnPlateau, SaveBest
    checkpoint = tmp_path / "run.clnet"
    shutil.copy(Path(__file__).parent / "data" / "checkpoint-0.1.0.clnet", checkpoint)
    saved = clnet.load_checkpoint(checkpoint, device)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)

    def fit(epochs):
        model = clnet.Sequential([L.Dense(12, 8), L.ReLU(), L.Dense(8, 3)], device=device, seed=4)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
        callbacks = (ReduceLROnPlateau(patience=1, factor=0.5, warmup=1), EarlyStopping(patience=3),
                     SaveBest(tmp_path / "best.clnet", monitor="val_loss"))
        history = model.fit(x, y, epochs=epochs, batch_size=16, validation_split=0.25, verbose=0,
                            schedule=callbacks[0], early_stopping=callbacks[1], callbacks=[callbacks[2]],
                            checkpoint=checkpoint, resume=True)
        return model, history, callbacks

    model, history, (schedule, stop, best) = fit(2)  # nothing left to run: the checkpoint, loaded
    assert history.epochs == [1, 2] and history.history == saved.state["history"]
    assert schedule.state() == saved.state["schedule"] and stop.best == saved.state["early"]["best"]
    assert best.best == saved.state["callbacks"][0]["best"]
    for key, value in saved.model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    assert model.optimizer_state_dict()["steps"] == saved.model.optimizer_state_dict()["steps"] == 6
    model, history, _ = fit(4)
    assert history.epochs == [1, 2, 3, 4] and history.history["loss"][:2] == saved.state["history"]["loss"]


def test_a_checkpoint_written_before_the_trainer_with_a_stateless_schedule_resumes(device, tmp_path):
    """tests/data/checkpoint-0.1.0-steplr.clnet (clnet at f0c1ae7: Adam, StepLR(1, 0.5), a log; 2 of
    4 epochs), whose schedule saved an empty state: the base rate comes back, so the rate keeps
    halving from where the run stopped."""
    import shutil
    from pathlib import Path
    from clnet import layers as L
    from clnet.callbacks import StepLR
    checkpoint = tmp_path / "run.clnet"
    shutil.copy(Path(__file__).parent / "data" / "checkpoint-0.1.0-steplr.clnet", checkpoint)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
    model = clnet.Sequential([L.Dense(12, 8), L.ReLU(), L.Dense(8, 3)], device=device, seed=4)
    model.compile("cross_entropy", clnet.optim.Adam(lr=0.5))  # the checkpoint's rate, 0.01, comes back
    history = model.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0, schedule=StepLR(1, 0.5),
                        log=tmp_path / "log.csv", checkpoint=checkpoint, resume=True)
    assert history.epochs == [1, 2, 3, 4]
    assert history.history["lr"] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    assert model.optimizer_state_dict()["steps"] == 12


def test_a_run_resumed_with_a_log_added_ends_as_the_straight_one(device, tmp_path):
    """Callback states are matched by class: a stateless callback more (a log) changes nothing."""
    (x, y), _ = clnet.datasets.load_mnist_5k()

    def run(epochs, **extra):
        model = clnet.models.mlp(device=device, seed=2)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
        history = model.fit(x[:300], y[:300], epochs=epochs, batch_size=30, validation_split=0.2, verbose=0,
                            schedule=clnet.callbacks.StepLR(1, 0.5), **extra)
        return model.state_dict(), history.history

    straight = run(3)
    run(2, checkpoint=tmp_path / "run.clnet")
    resumed = run(3, checkpoint=tmp_path / "run.clnet", resume=True, log=tmp_path / "log.csv")
    assert resumed[1] == straight[1]
    for key in straight[0]:
        np.testing.assert_array_equal(resumed[0][key], straight[0][key], err_msg=key)
