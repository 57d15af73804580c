"""SaveBest: keep the best model so far in a file."""

from .base import NUMBER_OR_NULL, Callback, improvement_sign, monitored


class SaveBest(Callback):
    """Save the model (clnet's model file format) whenever `monitor` reaches its best value so far.

    Args:
        path: the model file, written atomically.
        monitor: the metric to watch.
        classes: class names to store in the file (default: the model's).

    Example:
        >>> model.fit(x, y, validation_split=0.1, callbacks=[SaveBest("best.clnet")])
    """

    def __init__(self, path, monitor="val_accuracy", classes=None):
        self.path, self.monitor, self.classes = str(path), monitor, classes
        self.best = None

    def on_epoch_end(self, epoch, logs):
        value = monitored(logs, self.monitor)
        if self.best is None or improvement_sign(self.monitor) * (value - self.best) > 0:
            self.best = value
            self.model.save(self.path, classes=self.classes)

    def state(self):
        return {"best": self.best}

    state_fields = {"best": NUMBER_OR_NULL}
