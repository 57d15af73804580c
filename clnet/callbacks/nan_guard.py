"""NaNGuard: stop training when the loss or the weights are no longer numbers, and put back the
last good weights."""

from typing import NamedTuple

import numpy as np

from ..errors import TrainingError
from .base import Callback
from .checkpoint import Checkpoint


class Snapshot(NamedTuple):
    """A model's state as the guard keeps it: the flat buffers each read once (the first replica's,
    `ParamStore.flat_state`), put back as they were read."""
    flats: dict  # {"params", "buffers"}: the flat arrays
    state: list  # the optimizer state, flat arrays
    steps: int
    optimizer: object  # the hyper-parameters, as an optimizer of the model's class


class NaNGuard(Callback):
    """Raise a TrainingError, saying what to change, when an epoch's loss is NaN or infinite, or
    the weights are at its end: as soon as the epoch's training metrics are read, before
    validation, the history or a checkpoint takes in the diverged epoch. The model then gets back
    the last good weights, layer buffers and optimizer state (and its step count and
    hyper-parameters), which the guard keeps in host memory from the end of every good epoch and
    from the start of the fit: it is never left with NaN weights.

    Example:
        >>> model.fit(x, y, epochs=10)   # fit adds one; on divergence model holds the last good epoch
    """

    def on_train_begin(self):
        self.good = None  # (the snapshot, what it is, the (epochs, steps) it holds)

    def on_epoch_begin(self, epoch):
        if self.good is None:  # the first epoch of this fit, after a checkpoint it resumes is loaded
            self.good = self._snapshot(), "the weights the fit started from", (epoch - 1, self.trainer.start_step)

    def on_epoch_metrics(self, epoch, logs):
        if not np.isfinite(logs["loss"]):
            problem = f"the loss became {logs['loss']} in epoch {epoch}"
        else:
            snapshot = self._snapshot()
            if all(np.isfinite(a).all() for a in [*snapshot.flats.values(), *snapshot.state]):
                self.good = snapshot, f"the weights of epoch {epoch} (the last good one)", (epoch, 0)
                return
            problem = f"the weights became NaN or infinite in epoch {epoch}"
        rate = self.model.optimizer.lr
        snapshot, what, holds = self.good
        self.model._restore_optimizer(snapshot.optimizer, snapshot.state, snapshot.steps, snapshot.flats)
        kept = "".join(f"; {c.path} keeps them too" for c in self.trainer.callbacks
                       if isinstance(c, Checkpoint) and c.holds == holds)
        raise TrainingError(f"{problem}: lower the learning rate (now {rate:g}) or normalise the inputs; "
                            f"{what} are restored{kept}")

    def _snapshot(self):
        optimizer = self.model.optimizer
        return Snapshot(*self.model.param_store.flat_state(), type(optimizer)(**optimizer.config()))
