"""Checkpoint: everything a run needs to continue exactly, written after every epoch and on Ctrl-C."""

import logging
import os

import numpy as np

from .. import io
from ..errors import InputError
from .base import Callback
from .early_stopping import EarlyStopping
from .schedule import LearningRateScheduler

log = logging.getLogger(__name__)


class Checkpoint(Callback):
    """Write `path` atomically after every epoch and when Ctrl-C stops a fit mid-epoch: the weights
    and the optimizer (clnet.io's checkpoint format), the random state, the epoch's sample order and
    the metrics summed so far, the history, and the state of every callback that has one. With
    `resume`, an existing file is loaded into the model when training begins, so that a run
    interrupted and resumed with the same arguments ends with the same weights as one never
    interrupted. Under MPI rank 0 writes the file, which records the number of ranks: a run resumes
    with as many (every rank reads the file, so it must lie where every rank sees it).

    Example:
        >>> model.fit(x, y, epochs=30, checkpoint="run.clnet", resume=True)   # adds one
    """

    def __init__(self, path, resume=False):
        self.path, self.resume = os.fspath(path), bool(resume)

    def on_train_begin(self):
        if self.resume and self.model.world.share(os.path.exists(self.path), "the checkpoint's presence"):
            self._restore()

    def on_epoch_end(self, epoch, logs):
        self._save(epoch, 0, None)

    def on_interrupt(self, epoch, steps):
        self._save(epoch - 1, steps, self.trainer.order)

    def _save(self, epochs_done, steps_done, order):
        trainer, model = self.trainer, self.model
        state = {"rng": trainer.rng.bit_generator.state, "history": trainer.history.history,
                 "epochs": trainer.history.epochs, "order": order,
                 "metrics": model.metrics.state() if order is not None else None,
                 "callbacks": [[type(c).__name__, c.state()] for c in trainer.callbacks if _keeps_state(c)],
                 "ranks": model.world.size}
        if model.world.lead:
            io.save_checkpoint(self.path, model, state, epoch=epochs_done, step=steps_done)

    def _restore(self):
        """Load the checkpoint into the model and the trainer; the trainer continues from the
        epoch and step it names. Each saved callback state goes to the callback of its class in
        its place among those of that class; a callback the checkpoint has no state for starts
        afresh."""
        trainer, model = self.trainer, self.model
        saved = io.read_checkpoint(self.path)
        state = saved.state
        ranks = state.get("ranks", 1)
        if ranks != model.world.size:
            raise InputError(f"{self.path} was written by a run of {ranks} process{'es' if ranks > 1 else ''} "
                             f"(MPI ranks) and this one has {model.world.size}: resume it with "
                             + (f"mpirun -n {ranks}" if ranks > 1 else "one process, without mpirun"))
        model.restore(saved, self.path)
        trainer.rng.bit_generator.state = state["rng"]
        by_class = {}
        for name, callback_state in (state["callbacks"] if "schedule" not in state
                                     else _states_of_the_first_layout(trainer, state)):
            by_class.setdefault(name, []).append(callback_state)
        for callback in filter(_keeps_state, trainer.callbacks):
            states = by_class.get(type(callback).__name__)
            if states:
                callback.load_state(states.pop(0))
        trainer.history.history, trainer.history.epochs = state["history"], state["epochs"]
        trainer.start_epoch = saved.epoch + 1
        if state["order"] is not None:
            model.metrics.load_state(state["metrics"])
            trainer.start_step, trainer.order = saved.step, np.asarray(state["order"])
        log.info("Resuming from %s at epoch %d, step %d", self.path, trainer.start_epoch, trainer.start_step)


def _keeps_state(callback):
    return type(callback).state is not Callback.state


def _states_of_the_first_layout(trainer, state):
    """Checkpoints written before clnet had a Trainer kept the schedule's and early stopping's
    states under keys of their own, and the states of fit's `callbacks` in a list (an empty one
    for those without a state): (class name, state) pairs as checkpoints keep them now."""
    given = iter([saved for saved in state["callbacks"] if saved])
    pairs = []
    for callback in filter(_keeps_state, trainer.callbacks):
        if isinstance(callback, LearningRateScheduler):
            saved = None if state["schedule"] is None else {"base_lr": state["base_lr"], "schedule": state["schedule"]}
        elif isinstance(callback, EarlyStopping):
            saved = state["early"]
        else:
            saved = next(given, None)
        if saved is not None:
            pairs.append([type(callback).__name__, saved])
    return pairs
