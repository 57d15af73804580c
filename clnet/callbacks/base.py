"""Callback: what a Trainer calls at each point of a fit, as Keras's callbacks; subclass it to add
your own. `self.trainer` is the Trainer running (set before `on_train_begin`), `self.model` its
model."""

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

    def load_state(self, state: dict) -> None:
        self.__dict__.update(state)


def improvement_sign(monitor: str) -> float:
    """+1 when larger is better (accuracy), -1 for losses."""
    return 1.0 if "acc" in monitor else -1.0


def monitored(logs: dict, monitor: str) -> float:
    """logs[monitor], or an InputError saying which metrics the epoch reported."""
    if monitor not in logs:
        raise InputError(f"cannot monitor {monitor!r}: the epoch reported {', '.join(logs)} "
                         "(val_ metrics need validation_split or validation_data)")
    return logs[monitor]
