"""A one-line progress bar (training epochs, downloads); silent unless the stream is a terminal."""

import sys
import time


class ProgressBar:
    """`label [=====>    ] text`, redrawn at most ten times a second; without a total, no bar."""

    def __init__(self, total, label, stream=None, enabled=True, width=30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.shown = time.perf_counter()
        self.drawn = 0  # length of the line on screen

    def due(self, interval=0.25):
        """Whether a redraw is due: the bar is live and `interval` seconds have passed since the last."""
        return self.live and time.perf_counter() - self.shown >= interval

    def update(self, done, text=None):
        """Show `done` (of total), described by `text` (default "done/total")."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.shown < 0.1 and done != self.total:
            return
        self.shown = now
        text = text if text is not None else f"{done}/{self.total}"
        if self.total:
            filled = min(self.width, int(self.width * done / self.total))
            bar = "=" * filled + (">" if filled < self.width else "") + " " * (self.width - filled - 1)
            line = f"{self.label} [{bar}] {text}"
        else:
            line = f"{self.label} {text}"
        self.stream.write("\r" + line.ljust(self.drawn))
        self.stream.flush()
        self.drawn = len(line)

    def close(self, keep=False):
        """End the bar: keep its last line, or wipe it (the caller prints its own summary)."""
        if self.drawn:
            self.stream.write("\n" if keep else "\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn = 0

    @property
    def elapsed(self):
        return time.perf_counter() - self.start
