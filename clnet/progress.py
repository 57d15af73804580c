"""A one-line progress bar for training epochs; silent when the stream is not a terminal."""

import sys
import time


class ProgressBar:
    def __init__(self, total, label, stream=None, enabled=True, width=30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.shown = time.perf_counter()

    def update(self, done):
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.shown < 0.1 and done < self.total:  # redraw at most ten times a second
            return
        self.shown = now
        filled = int(self.width * done / max(self.total, 1))
        bar = "=" * filled + (">" if filled < self.width else "") + " " * (self.width - filled - 1)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total}")
        self.stream.flush()

    def close(self):
        if self.live:
            self.stream.write("\r" + " " * (len(self.label) + self.width + 24) + "\r")
            self.stream.flush()

    @property
    def elapsed(self):
        return time.perf_counter() - self.start
