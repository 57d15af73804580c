"""MetricsLog: every epoch's metrics appended to a CSV or JSON file."""

import csv
import json
import os

from ..errors import ClnetError
from ..files import check_writable, refuse_special, replace_atomically
from .base import Callback, check_state, is_count


class MetricsLog(Callback):
    """Append each epoch's metrics, seconds and images/s to `path`: a .json file holds a list of
    rows (rewritten atomically each epoch), any other a CSV table (a header first).

    A checkpoint keeps how many rows the file held (`state`), and a resumed fit cuts the file back
    to them: a process killed after an epoch's row and before its checkpoint would else log that
    epoch twice.

    Example:
        >>> model.fit(x, y, epochs=10, callbacks=[MetricsLog("metrics.csv")])   # or fit(log=...)
    """

    def __init__(self, path):
        self.path = str(path)
        self.rows = None  # the rows the file holds after this log's last append; None: not counted yet

    def on_train_begin(self):
        if self.model.world.lead:  # a bad path fails before the first epoch, not after it
            check_writable(self.path)

    def on_epoch_end(self, epoch, logs):
        if not self.model.world.lead:  # under MPI, rank 0 writes
            return
        seconds = self.trainer.epoch_seconds
        self.append({"epoch": epoch, **logs, "seconds": round(seconds, 3),
                     "images_per_second": round(self.trainer.epoch_images / seconds, 1)})

    def append(self, row):
        check_writable(self.path)  # an append to a FIFO would block, to a device would write into it
        if self.path.endswith(".json"):
            rows = self._json_rows() + [row]
            replace_atomically(self.path, lambda f: f.write(json.dumps(rows, indent=1).encode()))
            self.rows = len(rows)
            return
        rows = self._count()
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.rows = rows + 1

    def state(self):
        refuse_special(self.path)  # counting the rows of a FIFO would block the checkpoint's writer
        return {"path": os.path.abspath(self.path), "rows": self._count()}

    def load_state(self, state):
        """Cut the file back to the rows the checkpoint covers (only this file: a log given another
        path on resuming is left as it is)."""
        check_state(state, {"path": (lambda v: isinstance(v, str), "a path"),
                            "rows": (is_count, "a whole number >= 0")})
        if state.get("path") != os.path.abspath(self.path) or "rows" not in state or not os.path.isfile(self.path):
            return
        keep = state["rows"]
        if self.path.endswith(".json"):
            rows = self._json_rows()
            if len(rows) > keep:
                replace_atomically(self.path, lambda f: f.write(json.dumps(rows[:keep], indent=1).encode()))
        else:
            with open(self.path, newline="") as f:
                lines = f.read().splitlines(keepends=True)
            if len(lines) > keep + 1:  # the header, then a line per row
                replace_atomically(self.path, lambda f: f.write("".join(lines[:keep + 1]).encode()))
        self.rows = None

    def _count(self):
        """The rows the file holds (counted once, then kept up to date by `append`)."""
        if self.rows is None:
            if self.path.endswith(".json"):
                self.rows = len(self._json_rows())
            else:
                try:
                    with open(self.path, newline="") as f:
                        self.rows = max(sum(1 for _ in f) - 1, 0)
                except FileNotFoundError:
                    self.rows = 0
        return self.rows

    def _json_rows(self):
        """The rows of the JSON log, or [] when it does not exist yet."""
        try:
            with open(self.path) as f:
                rows = json.load(f)
        except FileNotFoundError:
            return []
        except (ValueError, UnicodeDecodeError) as exc:
            raise ClnetError(f"{self.path}: not a metrics log of clnet (not valid JSON: {exc}); give a new --log "
                             "file or remove it") from None
        if not isinstance(rows, list):
            raise ClnetError(f"{self.path}: not a metrics log of clnet (not a JSON list of rows); give a new --log "
                             "file or remove it")
        return rows
