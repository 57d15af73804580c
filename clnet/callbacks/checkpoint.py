"""Checkpoint: everything a run needs to continue exactly, written after every epoch and on Ctrl-C."""

import os

import numpy as np

from .. import io
from ..errors import InputError
from .base import Callback
from .early_stopping import EarlyStopping
from .schedule import LearningRateScheduler


class Checkpoint(Callback):
    """Write `path` atomically after every epoch and when Ctrl-C stops a fit mid-epoch: the weights
    and the optimizer (clnet.io's checkpoint format), the random state, the epoch's sample order and
    the metrics summed so far, the history, and every callback's state. With `resume`, an existing
    file is loaded into the model when training begins, so that a run interrupted and resumed with
    the same arguments ends with the same weights as one never interrupted.

    Example:
        >>> model.fit(x, y, epochs=30, checkpoint="run.clnet", resume=True)   # adds one
    """

    def __init__(self, path, resume=False):
        self.path, self.resume = os.fspath(path), bool(resume)

    def on_train_begin(self):
        if self.resume and os.path.exists(self.path):
            self._restore()

    def on_epoch_end(self, epoch, logs):
        self._save(epoch, 0, None)

    def on_interrupt(self, epoch, steps):
        self._save(epoch - 1, steps, self.trainer.order)

    def _save(self, epochs_done, steps_done, order):
        trainer, model = self.trainer, self.model
        state = {"rng": trainer.rng.bit_generator.state, "history": trainer.history.history,
                 "epochs": trainer.history.epochs, "order": order,
                 "metrics": model.metrics.download() if order is not None else None,
                 "callbacks": [callback.state() for callback in trainer.callbacks]}
        io.save_checkpoint(self.path, model, state, epoch=epochs_done, step=steps_done)

    def _restore(self):
        """Load the checkpoint into the model and the trainer; the trainer continues from the
        epoch and step it names."""
        trainer, model = self.trainer, self.model
        saved = io.read_checkpoint(self.path)
        model.restore(saved, self.path)
        state = saved.state
        trainer.rng.bit_generator.state = state["rng"]
        states = state["callbacks"] if "schedule" not in state else _states_of_the_first_layout(trainer, state)
        if len(states) != len(trainer.callbacks):
            raise InputError(f"{self.path} was written by a fit with {len(states)} callbacks, this one has "
                             f"{len(trainer.callbacks)}: resume with the arguments the run was started with")
        for callback, callback_state in zip(trainer.callbacks, states):
            if callback_state is not None:
                callback.load_state(callback_state)
        trainer.history.history, trainer.history.epochs = state["history"], state["epochs"]
        trainer.start_epoch = saved.epoch + 1
        if state["order"] is not None:
            model.metrics.upload(np.asarray(state["metrics"], np.float32))
            trainer.start_step, trainer.order = saved.step, np.asarray(state["order"])


def _states_of_the_first_layout(trainer, state):
    """Checkpoints written before clnet had a Trainer kept the schedule's and early stopping's
    states under keys of their own, and the states of fit's `callbacks` in a list: each callback's
    state in the order of `trainer.callbacks`, None where nothing was saved (callbacks without a
    state of their own, such as those fit adds, had none or an empty one)."""
    given = iter([saved for saved in state["callbacks"] if saved])
    states = []
    for callback in trainer.callbacks:
        if isinstance(callback, LearningRateScheduler):
            states.append(state["schedule"] and {"base_lr": state["base_lr"], "schedule": state["schedule"]})
        elif isinstance(callback, EarlyStopping):
            states.append(state["early"])
        elif type(callback).state is Callback.state:
            states.append(None)
        else:
            states.append(next(given, None))
    return states
