"""EarlyStopping: end training when a metric stops improving, keeping the best weights."""

from .base import NUMBER_OR_NULL, Callback, check_state, improvement_sign, is_count, monitored


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs, and
    (restore_best) put back the weights of the best epoch.

    Args:
        monitor: the metric to watch ("val_loss", "val_accuracy", "loss", ...).
        patience: epochs without improvement before stopping.
        min_delta: the least change that counts as an improvement.
        restore_best: load the best epoch's weights when stopping.

    Example:
        >>> model.fit(x, y, validation_split=0.1, epochs=100, early_stopping=EarlyStopping(patience=5))
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=True):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, int(patience), min_delta, restore_best
        self.best, self.best_epoch, self.wait, self.weights = None, 0, 0, None

    def update(self, epoch, logs, model):
        """Record an epoch; True when training should stop (the best weights are then restored)."""
        value = monitored(logs, self.monitor)
        if self.best is None or improvement_sign(self.monitor) * (value - self.best) > self.min_delta:
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

    def on_epoch_end(self, epoch, logs):
        if not self.update(epoch, logs, self.model):
            return
        self.trainer.stop_training = True
        if self.trainer.verbose:
            print(f"Early stopping: {self.monitor} has not improved since epoch {self.best_epoch}"
                  + (", whose weights are restored" if self.restore_best else ""),
                  file=self.trainer.stream, flush=True)

    def state(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "weights": self.weights}

    def load_state(self, state):
        check_state(state, {"best": NUMBER_OR_NULL,
                            "best_epoch": (is_count, "a whole number >= 0"), "wait": (is_count, "a whole number >= 0"),
                            "weights": (lambda v: v is None or isinstance(v, dict), "a state_dict or null")})
        weights = state.get("weights")
        if weights is not None:  # the keys, shapes and values this model takes, checked before they are needed
            weights, _ = self.model.param_store.check_state_dict(weights)
        self.__dict__.update(state, weights=weights)
