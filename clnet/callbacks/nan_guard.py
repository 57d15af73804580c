"""NaNGuard: stop training when the loss is no longer a number."""

import numpy as np

from ..errors import TrainingError
from .base import Callback
from .checkpoint import Checkpoint


class NaNGuard(Callback):
    """Raise a TrainingError, saying what to change, when an epoch's loss is NaN or infinite: as
    soon as the epoch's training metrics are read, before validation, the history or a checkpoint
    takes in the diverged epoch."""

    def on_epoch_metrics(self, epoch, logs):
        if np.isfinite(logs["loss"]):
            return
        kept = "".join(f"; {c.path} keeps the last good epoch" for c in self.trainer.callbacks
                       if isinstance(c, Checkpoint))
        raise TrainingError(f"the loss became {logs['loss']} in epoch {epoch}: lower the learning "
                            f"rate (now {self.model.optimizer.lr:g}) or normalise the inputs{kept}")
