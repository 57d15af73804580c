"""Callback: what a Trainer calls at each point of a fit, as Keras's callbacks; subclass it to add
your own. `self.trainer` is the Trainer running (set before `on_train_begin`), `self.model` its
model."""

import math

from ..errors import InputError


class Callback:
    """Override the hooks you need; each does nothing by default.

    Hooks, in the order a fit calls them:
        on_train_begin()            before the first epoch (a checkpoint resumes here)
        on_epoch_begin(epoch)       epochs count from 1
        on_step_begin(epoch, step)  before the step's launches are queued (step counts from 0)
        on_step_end(epoch, step)    after they are queued (the device may still be running them)
        on_epoch_metrics(epoch, logs)  with the epoch's training metrics (loss, accuracy), before
                                    validation and before the epoch enters the history
        on_epoch_end(epoch, logs)   with all the epoch's metrics: loss, accuracy, val_loss, ..., lr
        on_interrupt(epoch, steps)  Ctrl-C: after the step under way, `steps` of the epoch done
        on_train_end()              when training ends, normally or by an exception

    A callback that must remember something across a resume overrides `state()` (JSON values and
    numpy arrays) and `load_state(state)`: checkpoints keep the state of every such callback, by
    class and order, and a resumed fit gives it back to the callback of that class in that place.
    The state comes from a file: the default `load_state` takes only the keys `state()` returns,
    and one that takes more checks them (`check_state`); an InputError it raises is reported with
    the checkpoint's name.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, epoch: int, logs: dict) -> None:
        ...         print(epoch, logs["loss"])
        >>> model.fit(x, y, callbacks=[PrintLoss()])
    """

    trainer = None

    @property
    def model(self):
        return self.trainer.model

    def on_train_begin(self) -> None:
        pass

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_step_begin(self, epoch: int, step: int) -> None:
        pass

    def on_step_end(self, epoch: int, step: int) -> None:
        pass

    def on_epoch_metrics(self, epoch: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        pass

    def on_interrupt(self, epoch: int, steps: int) -> None:
        pass

    def on_train_end(self) -> None:
        pass

    def state(self) -> dict:
        return {}

    state_fields = {}  # {key: (test, what the value must be)} of what state() returns; none: any value

    def load_state(self, state: dict) -> None:
        load_checked_state(self, state)


def load_checked_state(keeper, state: dict) -> None:
    """`state` (as a checkpoint keeps a callback's or a schedule's `state()`) into `keeper`'s
    attributes, checked against its `state_fields`, or else for its keys only (an InputError names
    the field)."""
    fields = keeper.state_fields or {key: (lambda value: True, "") for key in keeper.state()}
    keeper.__dict__.update(check_state(state, fields))


def is_count(value) -> bool:
    """A whole number >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value) -> bool:
    """An int or float that is not NaN (infinities are kept: a metric may overflow)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


NUMBER_OR_NULL = (lambda value: value is None or is_number(value), "a number or null")  # a best value yet to come


def is_rate(value) -> bool:
    """A finite number > 0."""
    return is_number(value) and 0 < value < math.inf


def check_state(state, fields: dict) -> dict:
    """`state` as a checkpoint gives it to `load_state`, checked: a dict whose keys are among
    `fields` ({key: (test, what the value must be)}) and whose values pass their tests; a key left
    out keeps its current value. Returns `state`; an InputError names the first field that fails.

    Args:
        state: what the checkpoint holds for the callback.
        fields: for each key the callback takes, a predicate and its description.

    Example:
        >>> check_state({"wait": 2}, {"wait": (is_count, "a whole number >= 0")})
        {'wait': 2}
    """
    if not isinstance(state, dict):
        raise InputError(f"the state must be an object, got {type(state).__name__}")
    for key, value in state.items():
        if key not in fields:
            raise InputError(f"unknown field {key!r} (this callback keeps {', '.join(map(repr, fields)) or 'none'})")
        test, what = fields[key]
        if not test(value):
            raise InputError(f"{key!r} must be {what}, got {_short(value)}")
    return state


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def improvement_sign(monitor: str) -> float:
    """+1 when larger is better (accuracy), -1 for losses."""
    return 1.0 if "acc" in monitor else -1.0


def monitored(logs: dict, monitor: str) -> float:
    """logs[monitor], or an InputError saying which metrics the epoch reported."""
    if monitor not in logs:
        raise InputError(f"cannot monitor {monitor!r}: the epoch reported {', '.join(logs)} "
                         "(val_ metrics need validation_split or validation_data)")
    return logs[monitor]
