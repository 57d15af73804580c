"""Checkpointed training: a run interrupted (Ctrl-C, or killed outright) and resumed ends with the
same weights and history as one never interrupted."""

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet.callbacks import EarlyStopping, ReduceLROnPlateau, SaveBest
from clnet.cli import train as train_command
from clnet.files import replace_atomically

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
    model, history = train(device, checkpoint, resume=True)
    assert_same_run(model, history, straight)
    assert os.listdir(tmp_path) == ["run.clnet"]  # no temporary file left, a killed writer's included


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
    before = model.state_dict()
    model.optimizer.lr = 1e12  # the next run's weights blow up
    with pytest.raises(clnet.TrainingError, match=r"the loss became (nan|inf) in epoch 1: lower the learning "
                                                  r"rate \(now 1e\+12\) or normalise the inputs; the weights the "
                                                  r"fit started from are restored$") as error:
        model.fit(x[:256], y[:256], epochs=3, verbose=0, checkpoint=checkpoint)
    assert "keeps" not in str(error.value)  # this fit wrote no checkpoint: it claims none
    assert model.history.epochs == []  # stopped before the diverged epoch was validated or recorded
    saved = clnet.load_checkpoint(checkpoint, device)
    assert saved.epoch == 1 and all(np.isfinite(v).all() for v in saved.model.state_dict().values())
    for key, value in model.state_dict().items():  # issue 17, item 12: the model keeps no NaN weights
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert np.isfinite(model.predict(x[:10])).all()


class Diverge(clnet.callbacks.Callback):
    """Makes epoch `epoch` diverge: a huge learning rate, or (`weights`) NaN weights after its last
    step, which the epoch's loss (computed before each update) does not show."""

    def __init__(self, epoch, weights=False):
        self.epoch, self.weights = epoch, weights

    def on_step_begin(self, epoch, step):
        if epoch == self.epoch and not self.weights:
            self.model.optimizer.lr = 1e12

    def on_step_end(self, epoch, step):
        if epoch == self.epoch and self.weights and step == self.trainer.steps_per_epoch - 1:
            store = self.model.param_store
            store.params.upload(np.full(store.params.size, np.nan, np.float32))


@pytest.mark.parametrize("weights", [False, True], ids=["loss", "weights"])
@pytest.mark.parametrize("with_checkpoint", [False, True], ids=["", "checkpoint"])
def test_a_diverged_fit_restores_the_last_good_epoch(device, tmp_path, weights, with_checkpoint):
    """Issue 17, item 12: after a NaN stop the model holds the weights, buffers and optimizer state
    of the last good epoch, the checkpoint is named only when it holds them, and predict on NaN
    weights warns once."""
    (x, y), _ = clnet.datasets.load_mnist_5k()
    checkpoint = tmp_path / "run.clnet" if with_checkpoint else None
    model = clnet.models.mlp(device=device, seed=0)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))
    good = []

    class Remember(clnet.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            good.append((self.model.state_dict(), self.model.optimizer_state_dict()))

    problem = "the weights became NaN or infinite in epoch 2" if weights else r"the loss became (nan|inf) in epoch 2"
    kept = f"; {re.escape(str(checkpoint))} keeps them too" if with_checkpoint else ""
    with pytest.raises(clnet.TrainingError, match=f"^{problem}: .*; the weights of epoch 1 \\(the last good one\\) "
                                                  f"are restored{kept}$"):
        model.fit(x[:256], y[:256], epochs=3, verbose=0, checkpoint=checkpoint,
                  callbacks=[Diverge(2, weights), Remember()])
    assert model.history.epochs == [1] and len(good) == 1
    weights_1, optimizer_1 = good[0]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, weights_1[key], err_msg=key)
    restored = model.optimizer_state_dict()
    assert restored["steps"] == optimizer_1["steps"] == 8 and restored["config"] == optimizer_1["config"]
    np.testing.assert_array_equal(restored["state"][0], optimizer_1["state"][0])
    if with_checkpoint:
        assert clnet.load_checkpoint(checkpoint, device).epoch == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(model.predict(x[:10])).all()
    store = model.param_store
    store.params.upload(np.full(store.params.size, np.nan, np.float32))
    with pytest.warns(RuntimeWarning, match="predict: the model's outputs are NaN or infinite, so its weights are "
                                            "not finite"):
        model.predict(x[:10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x[:10])  # once


def flat_states(model):
    """Every replica's flat parameters, buffers and optimizer state, and its step count, as they run."""
    stores = [replica.store for replica in model.replicas]
    model._lag.current(stores)
    return [(store.params.download(), store.buffers.download(), [t.download() for t in store.optimizer_state],
             store.steps) for store in stores]


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_diverged_fit_restores_the_last_good_state_exactly(device, replicas):
    """After NaN weights in epoch 2, every replica holds epoch 1's weights, BatchNorm buffers,
    Adam's two moments and step count bit for bit, and its hyper-parameters (a learning rate
    changed in epoch 2 is put back)."""
    (x, y), _ = clnet.datasets.load_mnist_5k()
    model = clnet.Sequential([L.Conv2D(1, 8, 3, stride=2), L.BatchNorm2D(8), L.ReLU(), L.Flatten(),
                              L.Dense(8 * 13 * 13, 10)], device=[device] * replicas if replicas > 1 else device, seed=4)
    model.compile("cross_entropy", clnet.optim.Adam(lr=1e-3))
    good = []

    class Remember(clnet.callbacks.Callback):
        def on_epoch_begin(self, epoch):
            if epoch == 2:
                self.model.optimizer.lr = 0.5

        def on_epoch_end(self, epoch, logs):
            good.append(flat_states(self.model))

    with pytest.raises(clnet.TrainingError, match="weights became NaN .* the weights of epoch 1 .* are restored$"):
        model.fit(x[:256], y[:256], epochs=3, batch_size=32, verbose=0, callbacks=[Diverge(2, weights=True),
                                                                                   Remember()])
    assert len(good) == 1 and model.optimizer.lr == 1e-3
    after = flat_states(model)
    assert len(after) == replicas
    for (params, buffers, state, steps), (params_1, buffers_1, state_1, steps_1) in zip(after, good[0]):
        np.testing.assert_array_equal(params, params_1)
        np.testing.assert_array_equal(buffers, buffers_1)
        assert len(state) == len(state_1) == 2 and steps == steps_1 == 8
        for moment, moment_1 in zip(state, state_1):
            np.testing.assert_array_equal(moment, moment_1)


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_metrics_log(device, tmp_path, suffix):
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
    from pathlib import Path
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
    from pathlib import Path
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


# ---------------------------------------------------------------------- crafted checkpoints (issue 17, item 2)
def small_fit(device, checkpoint, epochs, resume=False, batch_size=30, hidden=8, **extra):
    """A fit of a small network on 300 random samples (10 steps an epoch), with every callback
    that keeps a state."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = clnet.Sequential([L.Dense(12, hidden), L.ReLU(), L.Dense(hidden, 2)], device=device, seed=1)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, validation_data=(x[:30], y[:30]),
                        schedule=ReduceLROnPlateau(patience=1), early_stopping=EarlyStopping(patience=3),
                        callbacks=[SaveBest(checkpoint.parent / "best.clnet", monitor="val_loss")],
                        checkpoint=checkpoint, resume=resume, **extra)
    return model, history


def members_of(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rewrite(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.fixture
def mid_epoch_checkpoint(device, tmp_path, monkeypatch):
    """A checkpoint of small_fit interrupted (Ctrl-C) after 3 steps of its second epoch: it keeps
    the epoch's order and metrics."""
    checkpoint = tmp_path / "run.clnet"
    real_step, calls = clnet.runner.Runner.train_resident, []

    def step(self, *args):
        calls.append(1)
        if len(calls) == 13:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args)

    monkeypatch.setattr(clnet.runner.Runner, "train_resident", step)
    with pytest.raises(KeyboardInterrupt):
        small_fit(device, checkpoint, epochs=3)
    monkeypatch.undo()
    return checkpoint


def with_state(change):
    """A change of checkpoint.json's record, given the record and its state."""
    return lambda record: change(record, record["state"])


CRAFTED = {  # what is changed -> what the error says
    "order past the samples": (with_state(lambda r, s: s.update(order=list(range(300, 600)))),
                               r"state.order must be a permutation of this fit's 300 training samples \(0 to 299\), "
                               r"got 300 indices from 300 to 599"),
    "order far out": (with_state(lambda r, s: s.update(order=[10 ** 9] * 300)), r"state.order .* from 1000000000"),
    "order negative": (with_state(lambda r, s: s.update(order=[-100000] * 300)), r"state.order .* from -100000"),
    "order repeated": (with_state(lambda r, s: s.update(order=[0] * 300)), "state.order must be a permutation"),
    "order short": (with_state(lambda r, s: s.update(order=list(range(299)))), "got 299 indices"),
    "order of floats": (with_state(lambda r, s: s.update(order=[float(i) for i in range(300)])), "state.order"),
    "order nested": (with_state(lambda r, s: s.update(order=[[i] for i in range(300)])), "state.order"),
    "order a string": (with_state(lambda r, s: s.update(order="0123")), "state.order"),
    "step past the epoch": (lambda r: r.update(step=10 ** 9), r"'step' is 1000000000, but an epoch of this fit has "
                                                             r"10 steps \(batches of 30\): resume with the batch size"),
    "step without an order": (with_state(lambda r, s: s.update(order=None)), "'step' is 3, but state.order is null"),
    "epoch beyond the history": (lambda r: r.update(epoch=10 ** 9), r"state.epochs must list the epochs done, "
                                                                   r"1 to 1000000000"),
    "epoch of 31 digits": (lambda r: r.update(epoch=10 ** 30), "'epoch' must be an integer from 0 to 9223372036854775807"),
    "history too short": (with_state(lambda r, s: s["history"].update(loss=[])), "state.history must map each metric"),
    "generator position": (with_state(lambda r, s: s["rng"].update(buffer_pos=-5)), "state.rng.buffer_pos must be a "
                                                                                    "whole number >= 0"),
    "generator position past": (with_state(lambda r, s: s["rng"].update(buffer_pos=99)),
                                "state.rng.buffer_pos must lie in 0 to 4, got 99"),
    "generator of another kind": (with_state(lambda r, s: s["rng"].update(bit_generator="PCG64")),
                                  "state.rng.bit_generator must be 'Philox'"),
    "generator flag": (with_state(lambda r, s: s["rng"].update(has_uint32=7)), "state.rng.has_uint32 must be 0 or 1"),
    "generator of floats": (with_state(lambda r, s: s["rng"].update(uinteger=1.5)), "state.rng.uinteger must be"),
    "no generator": (with_state(lambda r, s: s.pop("rng")), "'state' has no 'rng'"),
    "state a list": (lambda r: r.update(state=[1, 2]), "'state' must be an object, got list"),
    "metrics not finite": (with_state(lambda r, s: s.update(metrics=[float("nan"), 0, 0, 0])),
                           "state.metrics must be 4 finite numbers"),
    "metrics of another shape": (with_state(lambda r, s: s.update(metrics=[1, 2, 3])), r"got shape \(3,\)"),
    "metrics of replicas": (with_state(lambda r, s: s.update(metrics=[[1, 2, 3]] * 2)), r"got shape \(2, 3\)"),
    "callbacks not pairs": (with_state(lambda r, s: s.update(callbacks=[1])), "state.callbacks must be a list of"),
    "schedule's scale": (with_state(lambda r, s: s["callbacks"][0][1]["schedule"].update(scale=-1)),
                         r"the state of LearningRateScheduler: 'schedule' \(ReduceLROnPlateau\): 'scale' must be a "
                         r"finite number > 0, got -1"),
    "schedule's base": (with_state(lambda r, s: s["callbacks"][0][1].update(base_lr=None)),
                        "'base_lr' must be a finite number > 0, got None"),
    "schedule's unknown field": (with_state(lambda r, s: s["callbacks"][0][1]["schedule"].update(step_size=0)),
                                 "unknown field 'step_size'"),
    "early stopping's wait": (with_state(lambda r, s: s["callbacks"][1][1].update(wait="2")),
                              "the state of EarlyStopping: 'wait' must be a whole number >= 0, got '2'"),
    "early stopping's weights": (with_state(lambda r, s: s["callbacks"][1][1].update(weights={"0.weight": [1.0]})),
                                 "the state of EarlyStopping: state_dict does not fit this model"),
    "a path for SaveBest": (with_state(lambda r, s: s["callbacks"][2][1].update(path="/tmp/elsewhere.clnet")),
                            "the state of SaveBest: unknown field 'path'"),
    "optimizer rate": (lambda r: r["optimizer"]["config"].update(lr=float("nan")),
                       "the optimizer's 'lr' must be a finite number, got nan"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_checkpoint_is_refused_before_anything_runs(device, mid_epoch_checkpoint, case):
    """Issue 17, item 2: each value a resumed fit takes from a checkpoint is checked against the fit,
    and a bad one is a ModelFileError naming the file and the field (a crafted order used to index
    outside the training set on the device: a segfault). The file is left as it is."""
    change, message = CRAFTED[case]
    members = members_of(mid_epoch_checkpoint)
    record = json.loads(members["checkpoint.json"])
    if isinstance(record["state"], dict) and record["state"].get("order") is not None:
        assert len(record["state"]["callbacks"]) == 3  # the schedule, early stopping, SaveBest
    change(record)
    members["checkpoint.json"] = json.dumps(record).encode()
    rewrite(mid_epoch_checkpoint, members)
    crafted = mid_epoch_checkpoint.read_bytes()
    with pytest.raises(clnet.ModelFileError, match=f"^{re.escape(str(mid_epoch_checkpoint))}: .*{message}"):
        small_fit(device, mid_epoch_checkpoint, epochs=3, resume=True)
    assert mid_epoch_checkpoint.read_bytes() == crafted


def test_the_checkpoint_the_crafted_cases_start_from_resumes(device, mid_epoch_checkpoint):
    """The cases above fail by their change alone: unchanged, the checkpoint resumes to the end."""
    state = json.loads(members_of(mid_epoch_checkpoint)["checkpoint.json"])["state"]
    assert state["order"] is not None and [name for name, _ in state["callbacks"]] == [
        "LearningRateScheduler", "EarlyStopping", "SaveBest"]
    model, history = small_fit(device, mid_epoch_checkpoint, epochs=3, resume=True)
    assert history.epochs == [1, 2, 3]


def test_optimizer_state_that_is_not_finite_is_refused(device, mid_epoch_checkpoint):
    members = members_of(mid_epoch_checkpoint)
    with np.load(io.BytesIO(members["optimizer.npz"])) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["0"][5] = np.inf
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    rewrite(mid_epoch_checkpoint, {**members, "optimizer.npz": buffer.getvalue()})
    with pytest.raises(clnet.ModelFileError, match=f"^{re.escape(str(mid_epoch_checkpoint))}: optimizer.npz array 0 "
                                                   "holds NaN or infinity$"):
        small_fit(device, mid_epoch_checkpoint, epochs=3, resume=True)


def test_a_callbacks_state_sets_only_its_own_fields():
    """The default load_state takes the keys state() returns and no others (a file could otherwise
    set any attribute: a path to write, the trainer)."""
    class Counter(clnet.callbacks.Callback):
        def __init__(self):
            self.count, self.path = 0, "mine.txt"

        def state(self):
            return {"count": self.count}

    counter = Counter()
    counter.load_state({"count": 3})
    assert counter.count == 3
    with pytest.raises(clnet.InputError, match=r"unknown field 'path' \(this callback keeps 'count'\)"):
        counter.load_state({"count": 4, "path": "/etc/elsewhere"})
    assert counter.path == "mine.txt"
    with pytest.raises(clnet.InputError, match="the state must be an object, got list"):
        counter.load_state([1])


def test_a_corrupt_json_log_is_named(tmp_path):
    log = tmp_path / "metrics.json"
    log.write_text('[{"epoch": 1}')
    with pytest.raises(clnet.ClnetError, match=f"^{re.escape(str(log))}: not a metrics log of clnet"):
        clnet.callbacks.MetricsLog(log).append({"epoch": 2})
    assert log.read_text() == '[{"epoch": 1}'


def test_another_runs_checkpoint_names_the_file(device, tmp_path):
    """Issue 17, item 10: a checkpoint of another model says which file does not fit."""
    checkpoint = tmp_path / "other.clnet"
    small_fit(device, checkpoint, epochs=1, hidden=5)
    message = r"the weights do not fit this model \(a checkpoint of another run\?\): state_dict\['0.weight'\] has shape"
    with pytest.raises(clnet.ModelFileError, match=f"^{re.escape(str(checkpoint))}: {message}"):
        small_fit(device, checkpoint, epochs=2, resume=True)


# ---------------------------------------------------------------------- leftovers (issue 17, item 14)
def dead_pid():
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "run.clnet"
    target.write_bytes(b"old")
    dead = dead_pid()
    stale = tmp_path / f".run.clnet.{dead}.abcd_123.tmp"
    kept = [tmp_path / f".run.clnet.{os.getpid()}.abcdefgh.tmp",  # a live writer's (this process)
            tmp_path / ".run.clnet.1.abcdefgh.tmp",               # a live writer's (init)
            tmp_path / ".run.clnet.abcdefgh.tmp",                 # not clnet's naming: no pid
            tmp_path / f".other.clnet.{dead}.abcdefgh.tmp",       # another target's
            tmp_path / f"run.clnet.{dead}.abcdefgh.tmp",          # not hidden: a user's
            tmp_path / f".run.clnet.{dead}.abcdefgh.tmp.bak"]     # a user's
    for path in [stale, *kept]:
        path.write_bytes(b"partial")
    folder = tmp_path / f".run.clnet.{dead}.zzzzzzzz.tmp"  # not a regular file
    folder.mkdir()
    replace_atomically(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and not stale.exists() and folder.is_dir()
    assert all(path.read_bytes() == b"partial" for path in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, folder.name] + [p.name for p in kept])


def test_a_writer_killed_mid_write_leaves_a_temporary_that_the_next_run_removes(device, tmp_path):
    """SIGKILL during an atomic write leaves `.<name>.<pid>.<random>.tmp`; the target is untouched,
    and the next fit with that checkpoint (or the next write) removes the leftover."""
    target = tmp_path / "run.clnet"
    target.write_bytes(b"previous")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from clnet.files import replace_atomically
        def write(f):
            f.write(b"half")
            f.flush()
            time.sleep(60)
        replace_atomically(sys.argv[1], write)
        """), str(target)])
    deadline = time.monotonic() + 60
    try:
        while not any(p.stat().st_size for p in tmp_path.iterdir() if p != target) and time.monotonic() < deadline:
            assert child.poll() is None, "the writer ended before it was killed"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait(timeout=30)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != target.name]
    assert len(leftovers) == 1 and re.fullmatch(rf"\.run\.clnet\.{child.pid}\.[a-z0-9_]{{8}}\.tmp", leftovers[0])
    assert target.read_bytes() == b"previous"
    target.unlink()
    small_fit(device, target, epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.clnet", "run.clnet"]


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_a_kill_between_the_log_and_the_checkpoint_repeats_no_row(device, tmp_path, monkeypatch, suffix):
    """The log gets an epoch's row before the checkpoint is written; a process that dies between
    the two left that row in the log, which the checkpoint does not cover: the resumed fit cuts the
    log back to the checkpoint's rows, so every epoch has one row."""
    from clnet.callbacks import checkpoint as checkpoint_module
    log, checkpoint = tmp_path / f"metrics.{suffix}", tmp_path / "run.clnet"
    real_save, saves = checkpoint_module.io.save_checkpoint, []

    def save(*args, **kwargs):
        saves.append(kwargs["epoch"])
        if kwargs["epoch"] == 2:
            raise SystemExit("killed")  # as if the process died here
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.io, "save_checkpoint", save)
    with pytest.raises(SystemExit):
        small_fit(device, checkpoint, epochs=3, log=log)
    monkeypatch.undo()
    rows = lambda: json.loads(log.read_text()) if suffix == "json" else list(csv.DictReader(log.open()))
    assert [int(r["epoch"]) for r in rows()] == [1, 2]  # epoch 2 logged, not checkpointed
    small_fit(device, checkpoint, epochs=3, resume=True, log=log)
    assert [int(r["epoch"]) for r in rows()] == [1, 2, 3]
    assert clnet.load_checkpoint(checkpoint, device).epoch == 3


# ---------------------------------------------------------------------- clnet-train --resume (issue 17, item 10)
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder of one epoch of clnet-train --checkpoint-dir."""
    run = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(train_command, ["--device", "0", "--quiet", "--model", "mlp", "--epochs", "1",
                                        "--validation-split", "0", "--checkpoint-dir", str(run)])
    assert result.exit_code == 0, result.output
    return run


DAMAGED_OPTIONS = {  # options.json -> what the error says after naming the file
    "a list": (lambda o: [o], "holds a JSON list, not an object of options"),
    "empty": (lambda o: {}, "the field 'platform' is missing"),
    "an unknown key": (lambda o: {**o, "colour": "blue"}, "unknown field 'colour'"),
    "an unknown optimizer": (lambda o: {**o, "optimizer": "nosuch"},
                             "the field 'optimizer': 'nosuch' is not one of 'adam', 'adamw', 'sgd'"),
    "epochs as text": (lambda o: {**o, "epochs": "10"}, "the field 'epochs' must be a whole number, got '10'"),
    "epochs as a float": (lambda o: {**o, "epochs": 2.5}, "the field 'epochs' must be a whole number, got 2.5"),
    "epochs of zero": (lambda o: {**o, "epochs": 0}, "the field 'epochs': 0 is not in the range x>=1"),
    "a flag as a number": (lambda o: {**o, "nesterov": 1}, "the field 'nesterov' must be true or false, got 1"),
    "a count as a flag": (lambda o: {**o, "batch_size": True},
                          "the field 'batch_size' must be a whole number, got True"),
    "a rate not finite": (lambda o: {**o, "lr": float("inf")}, "the field 'lr': .*inf"),
    "momentum NaN": (lambda o: {**o, "momentum": float("nan")}, "the field 'momentum': .*nan"),
    "a required null": (lambda o: {**o, "seed": None}, "the field 'seed' must be a whole number, got None"),
    "a preset unknown": (lambda o: {**o, "model_name": "resnet"},
                         "the field 'model_name': 'resnet' is neither a preset"),
    "an image size": (lambda o: {**o, "image_size": [0, 28]}, "the field 'image_size': '0x28' is not HxW"),
    "an augmentation": (lambda o: {**o, "augment": "crop=abc"}, "the field 'augment': unknown augmentation"),
}


@pytest.mark.parametrize("case", DAMAGED_OPTIONS)
def test_resume_checks_options_json_as_the_command_line(run_folder, tmp_path, case):
    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    options = json.loads((run / "options.json").read_text())
    damage, message = DAMAGED_OPTIONS[case]
    (run / "options.json").write_text(json.dumps(damage(options)))
    result = CliRunner().invoke(train_command, ["--resume", str(run), "--device", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.fullmatch(f"Error: {re.escape(str(run / 'options.json'))}: {message}.*; it should hold the options of "
                        "clnet-train --checkpoint-dir as it wrote them\n", result.output), result.output


def test_resume_of_a_good_run_folder_and_the_folder_options(run_folder, tmp_path):
    """The folder the cases above damage resumes; --checkpoint-dir that cannot be a folder, or with
    a checkpoint path that is not a regular file, fails in one line before training."""
    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    options = json.loads((run / "options.json").read_text())
    (run / "options.json").write_text(json.dumps({**options, "epochs": 2, "image_size": [28, 28]}))
    result = CliRunner().invoke(train_command, ["--resume", str(run), "--device", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().split()] == ["epoch", "1", "2"]
    (tmp_path / "file").write_text("")
    for folder, message in [(tmp_path / "file", "is a file"),
                            (tmp_path / "file" / "sub", f"cannot make the --checkpoint-dir folder {tmp_path / 'file'}"
                                                        "/sub: Not a directory")]:
        result = CliRunner().invoke(train_command, ["--device", "0", "--model", "mlp", "--checkpoint-dir", str(folder)])
        assert result.exit_code in (1, 2) and message in result.output and "Device:" not in result.output
    for name in ("checkpoint.clnet", "options.json"):  # never opened: a FIFO would block
        os.remove(run / name)
        os.mkfifo(run / name)
        result = CliRunner().invoke(train_command, ["--resume", str(run), "--device", "0"])
        assert result.exit_code == 1 and f"{name} is a FIFO" in result.output and "Device:" not in result.output


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_again(run_folder, tmp_path):
    """Killed between the first epoch's row and the first checkpoint: resuming starts the run
    again, and its own metrics.csv with it."""
    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    os.remove(run / "checkpoint.clnet")
    result = CliRunner().invoke(train_command, ["--resume", str(run), "--device", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().split()] == ["epoch", "1"]


def test_a_resumed_epoch_counts_the_images_of_its_own_steps(device):
    """epoch_images (the images/s shown and logged) of an epoch resumed at step 2 of 4, batches
    of 32 over 100 samples: the 36 of steps 2 and 3, the short last batch counted as 4."""
    class ResumeAtStep2(clnet.callbacks.Callback):
        def on_train_begin(self):
            self.trainer.start_step = 2

        def on_epoch_end(self, epoch, logs):
            self.images = self.trainer.epoch_images

    model = clnet.Sequential([L.Flatten(), L.Dense(16, 4)], device=device, seed=0)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.1))
    rng = np.random.default_rng(0)
    seen = ResumeAtStep2()
    model.fit(rng.random((100, 1, 4, 4), np.float32), rng.integers(0, 4, 100), epochs=1, batch_size=32,
              callbacks=[seen], verbose=0)
    assert seen.images == 36
