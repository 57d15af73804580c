"""Learning-rate schedules, and the callback that applies one before every step.

A schedule gives the learning rate for a point in training measured in epochs (1.5 = half-way
through the second epoch) from the optimizer's rate when training began; ReduceLROnPlateau also
watches a metric at the end of each epoch. Every schedule saves and restores its state, so a
checkpointed run resumes exactly.
"""

import math

from ..errors import InputError
from .base import NUMBER_OR_NULL, Callback, check_state, improvement_sign, is_count, is_rate, load_checked_state, monitored


class Schedule:
    """A constant rate after a linear warm-up over the first `warmup` epochs; the base of the others.

    Args:
        warmup: epochs over which the rate rises linearly from 0 to the base rate.

    Example:
        >>> StepLR(10, gamma=0.5, warmup=1).lr(0.1, 12.0)
        0.05
    """

    def __init__(self, warmup=0):
        if warmup < 0:
            raise ValueError(f"warmup must not be negative, got {warmup}")
        self.warmup = warmup

    def lr(self, base, progress):
        """The rate at `progress` epochs, from the `base` rate."""
        scale = min(1.0, (progress + 1e-9) / self.warmup) if self.warmup else 1.0
        return base * scale * self.factor(progress)

    def factor(self, progress):
        return 1.0

    def end_epoch(self, logs):
        """Called with each epoch's logs (ReduceLROnPlateau reacts to them)."""

    def state(self):
        return {}

    def load_state(self, state):
        """`state()` as a checkpoint keeps it, checked (an InputError names the field)."""
        load_checked_state(self, state)

    state_fields = {}  # {key: (test, what the value must be)} of what state() returns


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
        value = monitored(logs, self.monitor)
        if self.best is None or improvement_sign(self.monitor) * (value - self.best) > 0:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.scale *= self.reduction
                self.wait = 0

    def state(self):
        return {"best": self.best, "wait": self.wait, "scale": self.scale}

    state_fields = {"best": NUMBER_OR_NULL,
                    "wait": (is_count, "a whole number >= 0"), "scale": (is_rate, "a finite number > 0")}


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate before every step from `schedule`, taking the rate the
    optimizer had when training began as the base (`fit(schedule=...)` adds one)."""

    def __init__(self, schedule):
        self.schedule, self.base_lr = schedule, None
        self.monitor = getattr(schedule, "monitor", None)

    def on_train_begin(self):
        if self.base_lr is None:  # a resumed run keeps the base it started with
            self.base_lr = self.model.optimizer.lr

    def on_step_begin(self, epoch, step):
        self.model.optimizer.lr = self.schedule.lr(self.base_lr, epoch - 1 + step / self.trainer.steps_per_epoch)

    def on_epoch_end(self, epoch, logs):
        self.schedule.end_epoch(logs)

    def state(self):
        return {"base_lr": self.base_lr, "schedule": self.schedule.state()}

    def load_state(self, state):
        check_state(state, {"base_lr": (is_rate, "a finite number > 0"),
                            "schedule": (lambda v: isinstance(v, dict), "an object")})
        try:
            self.schedule.load_state(state.get("schedule", {}))
        except InputError as exc:
            raise InputError(f"'schedule' ({type(self.schedule).__name__}): {exc}") from None
        self.base_lr = state.get("base_lr", self.base_lr)


#: The schedules of clnet-train --lr-schedule, made for a run of `epochs` with `warmup`.
SCHEDULES = {"step": lambda epochs, warmup: StepLR(max(1, epochs // 3), warmup=warmup),
             "cosine": lambda epochs, warmup: CosineLR(epochs, warmup=warmup),
             "plateau": lambda epochs, warmup: ReduceLROnPlateau(warmup=warmup),
             "constant": lambda epochs, warmup: Schedule(warmup)}
