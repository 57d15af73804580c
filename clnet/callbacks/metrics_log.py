"""MetricsLog: every epoch's metrics appended to a CSV or JSON file."""

import csv
import json
import os

from ..files import check_writable
from .base import Callback


class MetricsLog(Callback):
    """Append each epoch's metrics, seconds and images/s to `path`: a .json file holds a list of
    rows (rewritten each epoch), any other a CSV table (a header first).

    Example:
        >>> model.fit(x, y, epochs=10, callbacks=[MetricsLog("metrics.csv")])   # or fit(log=...)
    """

    def __init__(self, path):
        self.path = str(path)

    def on_epoch_end(self, epoch, logs):
        if not self.model.world.lead:  # under MPI, rank 0 writes
            return
        seconds = self.trainer.epoch_seconds
        self.append({"epoch": epoch, **logs, "seconds": round(seconds, 3),
                     "images_per_second": round(self.trainer.epoch_images / seconds, 1)})

    def append(self, row):
        check_writable(self.path)  # an append to a FIFO would block, to a device would write into it
        if self.path.endswith(".json"):
            rows = []
            if os.path.exists(self.path):
                with open(self.path) as f:
                    rows = json.load(f)
            with open(self.path, "w") as f:
                json.dump(rows + [row], f, indent=1)
            return
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
