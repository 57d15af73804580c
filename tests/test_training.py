"""Learning-rate schedules and early stopping, alone and inside fit (also across a resume)."""

import numpy as np
import pytest

import clnet
from clnet.callbacks import CosineLR, EarlyStopping, ReduceLROnPlateau, Schedule, StepLR


def test_schedules():
    assert [StepLR(2, 0.5).lr(1.0, e) for e in (0, 1.9, 2, 4.5)] == [1.0, 1.0, 0.5, 0.25]
    cosine = CosineLR(10, min_lr=0.1, warmup=2)
    assert cosine.lr(1.0, 1.0) == pytest.approx(0.5)  # half-way through the warm-up
    assert cosine.lr(1.0, 2.0) == pytest.approx(1.0)
    assert cosine.lr(1.0, 6.0) == pytest.approx(0.55)
    assert cosine.lr(1.0, 10.0) == pytest.approx(0.1)
    assert Schedule(warmup=4).lr(0.2, 1.0) == pytest.approx(0.05)
    plateau = ReduceLROnPlateau(patience=2, factor=0.5)
    for loss in (1.0, 0.9, 0.95, 0.91, 0.92, 0.93):
        plateau.end_epoch({"val_loss": loss})
    assert plateau.lr(1.0, 6) == 0.25 and plateau.wait == 0  # reduced after epochs 4 and 6
    with pytest.raises(clnet.InputError, match="val_ metrics need validation"):
        plateau.end_epoch({"loss": 1.0})
    with pytest.raises(ValueError):
        CosineLR(2, warmup=3)


class Weights:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"w": np.array([self.value])}

    def load_state_dict(self, state):
        self.value = int(state["w"][0])


def test_early_stopping_restores_the_best_weights():
    model, stop = Weights(), EarlyStopping("val_accuracy", patience=3)
    for epoch, accuracy in enumerate([0.5, 0.7, 0.69, 0.7], start=1):
        model.value = epoch
        assert not stop.update(epoch, {"val_accuracy": accuracy}, model)
    model.value = 5
    assert stop.update(5, {"val_accuracy": 0.6}, model)
    assert model.value == 2 and stop.best_epoch == 2  # 0.7 again is not better than 0.7


def test_fit_follows_the_schedule_and_stops_early(device):
    (x, y), _ = clnet.datasets.load_mnist_5k()
    model = clnet.models.mlp(device=device, seed=0)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
    history = model.fit(x[:400], y[:400], epochs=4, batch_size=50, validation_split=0.25, verbose=0,
                        schedule=StepLR(1, 0.5))
    assert history.history["lr"] == pytest.approx([0.1 * 0.5 ** e for e in (0, 1, 2, 3)], rel=1e-6)

    model = clnet.models.mlp(device=device, seed=0)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.5, momentum=0.9))  # too fast: overfits at once
    stop = EarlyStopping("val_loss", patience=2)
    history = model.fit(x[:200], y[:200], epochs=30, batch_size=20, validation_split=0.5, verbose=0,
                        early_stopping=stop)
    epochs = len(history.history["val_loss"])
    assert epochs < 30 and epochs == stop.best_epoch + 2
    assert model.evaluate(x[200:400], y[200:400])["loss"] < history.history["val_loss"][-1] + 1.0
    np.testing.assert_array_equal(model.state_dict()["1.weight"], stop.weights["1.weight"])


def test_schedule_and_early_stopping_resume_exactly(device, tmp_path):
    (x, y), _ = clnet.datasets.load_mnist_5k()

    def run(epochs, checkpoint=None, resume=False):
        model = clnet.models.mlp(device=device, seed=0)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.2, momentum=0.9))
        history = model.fit(x[:300], y[:300], epochs=epochs, batch_size=30, validation_split=0.3, verbose=0,
                            schedule=ReduceLROnPlateau(patience=1, factor=0.5, warmup=1),
                            early_stopping=EarlyStopping(patience=3), checkpoint=checkpoint, resume=resume)
        return model.state_dict(), history.history

    straight = run(6)
    run(3, tmp_path / "run.clnet")
    resumed = run(6, tmp_path / "run.clnet", resume=True)
    assert resumed[1] == straight[1]
    for key in straight[0]:
        np.testing.assert_array_equal(resumed[0][key], straight[0][key])


def test_a_callback_of_ones_own_sees_every_hook_in_order_and_can_stop_training(device):
    (x, y), _ = clnet.datasets.load_mnist_5k()
    calls = []

    class Recorder(clnet.callbacks.Callback):
        def on_train_begin(self):
            calls.append(("train_begin", self.trainer.steps_per_epoch, self.model is model))

        def on_epoch_begin(self, epoch):
            calls.append(("epoch_begin", epoch))

        def on_step_begin(self, epoch, step):
            calls.append(("step_begin", epoch, step))

        def on_step_end(self, epoch, step):
            calls.append(("step_end", epoch, step))

        def on_epoch_end(self, epoch, logs):
            calls.append(("epoch_end", epoch, sorted(logs)))
            self.trainer.stop_training = epoch == 2

        def on_train_end(self):
            calls.append(("train_end", self.trainer.history.epochs))

    model = clnet.models.mlp(device=device, seed=0)
    model.compile("cross_entropy", "sgd")
    model.fit(x[:100], y[:100], epochs=5, batch_size=40, validation_split=0.2, verbose=0, callbacks=[Recorder()])
    epoch = lambda e: [("epoch_begin", e), ("step_begin", e, 0), ("step_end", e, 0), ("step_begin", e, 1),
                       ("step_end", e, 1), ("epoch_end", e, ["accuracy", "loss", "lr", "val_accuracy", "val_loss"])]
    assert calls == [("train_begin", 2, True), *epoch(1), *epoch(2), ("train_end", [1, 2])]
