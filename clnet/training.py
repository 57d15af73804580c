"""What steers a fit from epoch to epoch: learning-rate schedules, early stopping, and callbacks
that keep the best model or plot the training curves.

Schedules give the learning rate for a point in training measured in epochs (1.5 = half-way
through the second epoch), so `fit` sets it before every step; ReduceLROnPlateau also watches a
metric at the end of each epoch. Every object can save and restore its state, so a checkpointed run
resumes exactly.
"""

import math
import os

import numpy as np

from .errors import ClnetError, InputError


def _mode(monitor):
    """+1 when larger is better (accuracy), -1 for losses."""
    return 1.0 if "acc" in monitor else -1.0


class Schedule:
    """Base: the learning rate at `progress` epochs, from the optimizer's `base` rate, after a
    linear warm-up over the first `warmup` epochs."""

    def __init__(self, warmup=0):
        if warmup < 0:
            raise ValueError(f"warmup must not be negative, got {warmup}")
        self.warmup = warmup

    def lr(self, base, progress):
        scale = min(1.0, (progress + 1e-9) / self.warmup) if self.warmup else 1.0
        return base * scale * self.factor(progress)

    def factor(self, progress):
        return 1.0

    def end_epoch(self, logs):
        """Called with each epoch's logs (ReduceLROnPlateau reacts to them)."""

    def state(self):
        return {}

    def load_state(self, state):
        self.__dict__.update(state)


class StepLR(Schedule):
    """The rate times `gamma` every `step_size` epochs."""

    def __init__(self, step_size, gamma=0.1, warmup=0):
        super().__init__(warmup)
        if step_size < 1:
            raise ValueError(f"step_size must be at least 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def factor(self, progress):
        return self.gamma ** int(progress // self.step_size)


class CosineLR(Schedule):
    """From the rate down to `min_lr` along half a cosine over `epochs` epochs (after the warm-up)."""

    def __init__(self, epochs, min_lr=0.0, warmup=0):
        super().__init__(warmup)
        if epochs <= warmup:
            raise InputError(f"a cosine schedule needs more epochs ({epochs}) than warm-up epochs ({warmup})")
        self.epochs, self.min_lr = epochs, float(min_lr)

    def lr(self, base, progress):
        if progress < self.warmup:
            return super().lr(base, progress)
        t = min(1.0, (progress - self.warmup) / (self.epochs - self.warmup))
        return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class ReduceLROnPlateau(Schedule):
    """The rate times `factor` when `monitor` has not improved for `patience` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=2, min_lr=0.0, warmup=0):
        super().__init__(warmup)
        if not 0 < factor < 1:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        self.monitor, self.reduction, self.patience, self.min_lr = monitor, float(factor), int(patience), min_lr
        self.best, self.wait, self.scale = None, 0, 1.0

    def factor(self, progress):
        return self.scale

    def lr(self, base, progress):
        return max(super().lr(base, progress), min(self.min_lr, base))

    def end_epoch(self, logs):
        value = _monitored(logs, self.monitor)
        if self.best is None or _mode(self.monitor) * (value - self.best) > 0:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.scale *= self.reduction
                self.wait = 0

    def state(self):
        return {"best": self.best, "wait": self.wait, "scale": self.scale}


def _monitored(logs, monitor):
    if monitor not in logs:
        raise InputError(f"cannot monitor {monitor!r}: the epoch reported {', '.join(logs)} "
                         "(val_ metrics need validation_split or validation_data)")
    return logs[monitor]


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs, and
    (restore_best) put back the weights of the best epoch."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=True):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, int(patience), min_delta, restore_best
        self.best, self.best_epoch, self.wait, self.weights = None, 0, 0, None

    def update(self, epoch, logs, model):
        """Record an epoch; True when training should stop (the best weights are then restored)."""
        value = _monitored(logs, self.monitor)
        if self.best is None or _mode(self.monitor) * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.weights = model.state_dict()
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        if self.restore_best and self.weights is not None:
            model.load_state_dict(self.weights)
        return True

    def state(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "weights": self.weights}

    def load_state(self, state):
        self.__dict__.update(state)
        if self.weights is not None:
            self.weights = {k: np.asarray(v) for k, v in self.weights.items()}


class Callback:
    """Called by fit after each epoch, once the epoch's metrics are known; its state goes into
    checkpoints so that a resumed run behaves as if it had never stopped."""

    def on_epoch_end(self, epoch, logs, model):
        pass

    def state(self):
        return {}

    def load_state(self, state):
        self.__dict__.update(state)


class SaveBest(Callback):
    """Save the model (clnet.io format) whenever `monitor` reaches its best value so far."""

    def __init__(self, path, monitor="val_accuracy", classes=None):
        self.path, self.monitor, self.classes = str(path), monitor, classes
        self.best = None

    def on_epoch_end(self, epoch, logs, model):
        value = _monitored(logs, self.monitor)
        if self.best is None or _mode(self.monitor) * (value - self.best) > 0:
            self.best = value
            model.save(self.path, classes=self.classes)

    def state(self):
        return {"best": self.best}


class PlotCurves(Callback):
    """Draw loss and accuracy (training and validation) per epoch into a PNG file (needs matplotlib:
    pip install "clnet[plot]")."""

    def __init__(self, path):
        try:
            import matplotlib
        except ImportError:
            raise ClnetError('plotting training curves needs matplotlib: pip install "clnet[plot]"') from None
        matplotlib.use("Agg")
        self.path = str(path)

    def on_epoch_end(self, epoch, logs, model):
        import matplotlib.pyplot as plt
        history = model.history.history
        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for key in (metric, f"val_{metric}"):
                if key in history:
                    ax.plot(model.history.epochs, history[key], marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.set_title(metric)
            ax.legend()
        figure.tight_layout()
        temporary = self.path + ".tmp.png"
        figure.savefig(temporary)
        plt.close(figure)
        os.replace(temporary, self.path)


SCHEDULES = {"step": lambda epochs, warmup: StepLR(max(1, epochs // 3), warmup=warmup),
             "cosine": lambda epochs, warmup: CosineLR(epochs, warmup=warmup),
             "plateau": lambda epochs, warmup: ReduceLROnPlateau(warmup=warmup),
             "constant": lambda epochs, warmup: Schedule(warmup)}
