"""Progress bars (training epochs, downloads) that fit where they are shown, drawn by tqdm.

On a terminal, tqdm's bar, trimmed to the terminal's width as it is now (a redraw that wrapped
would leave a stale row each time); in a notebook, tqdm's widget (tqdm.autonotebook); in a pipe or a file
(`| cat`, a log, captured output), no carriage returns: the same figures as a plain line now and
then, and a last one when the bar is closed to be kept.
"""

import sys
import time

from tqdm.autonotebook import tqdm as chosen_tqdm  # the notebook's widget there, else the terminal's bar
from tqdm.std import tqdm as terminal_tqdm

# "Epoch 1/5  45%|████▌     | 120/450 [00:03<00:08, 5,120 img/s, loss 0.2134]": the caller's figures
# after the time left; without a total, the count and the time so far
FORMATS = {"bar": ("{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
                   "{desc} {n_fmt} [{elapsed}{postfix}]"),
           "lines": ("{desc} {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
                     "{desc} {n_fmt} [{elapsed}{postfix}]")}


def beside_bars(stream):
    """A context in which `stream` may be written to without breaking a bar drawn there (or on the
    terminal's other standard stream): the bars are wiped first and drawn again after.

    Args:
        stream: the stream about to be written to.

    Example:
        >>> with beside_bars(sys.stderr):
        ...     print("a kernel built", file=sys.stderr)
    """
    return terminal_tqdm.external_write_mode(file=stream)


def _in_notebook() -> bool:
    """Whether tqdm.autonotebook draws widgets here (a Jupyter kernel with ipywidgets)."""
    return chosen_tqdm is not terminal_tqdm


class ProgressBar:
    """A bar of `done` out of `total`, with the caller's figures after it.

    Args:
        total: the amount of work (steps, bytes), or None when it is not known.
        label: what the bar is about ("Epoch 3/10", a file's name).
        stream: where it is drawn (default stderr); in a notebook, a widget replaces sys.stdout
            and sys.stderr.
        enabled: False shows nothing.
        initial: the work done before the bar was made (a resumed epoch's steps), left out of
            the rate.
        scaled: write amounts as 1.5M, 2.0G (bytes).

    Example:
        >>> bar = ProgressBar(450, "Epoch 1/5", sys.stdout)
        >>> bar.update(120, "5,120 img/s, loss 0.2134")
        >>> bar.close()
    """

    REDRAW_S = 0.25  # the least time between two redraws of a bar
    LINE_S = 30.0    # the least time between two lines in a pipe or a file

    def __init__(self, total, label, stream=None, enabled=True, initial=0, scaled=False):
        self.total, self.label, self.initial, self.scaled = total, label, initial, scaled
        self.stream = stream or sys.stderr
        self.start = self.shown = time.perf_counter()
        self.done, self.text = initial, None
        self.bar = None
        if not enabled:
            self.mode = "off"
        elif (hasattr(self.stream, "isatty") and self.stream.isatty()) or \
                (_in_notebook() and self.stream in (sys.stdout, sys.stderr)):
            self.mode = "bar"
            tqdm_class = chosen_tqdm
            self.bar = tqdm_class(total=total, desc=label, file=self.stream, initial=initial, unit_scale=scaled,
                                  bar_format=self._format(), dynamic_ncols=True, mininterval=self.REDRAW_S,
                                  leave=False)
        else:
            self.mode = "lines"

    def _format(self):
        return FORMATS[self.mode][0 if self.total else 1]

    def due(self) -> bool:
        """Whether an update would be shown now, so worth its figures: a bar redraws every
        REDRAW_S seconds at most, a pipe gets a line every LINE_S."""
        interval = {"bar": self.REDRAW_S, "lines": self.LINE_S}.get(self.mode)
        return interval is not None and time.perf_counter() - self.shown >= interval

    def update(self, done, text=None):
        """Show `done` (of total), followed by `text` (figures such as "5,120 img/s, loss 0.2134")."""
        if self.mode == "off":
            return
        self.done, self.text = done, text
        if self.mode == "bar":
            self.bar.set_postfix_str(text or "", refresh=False)
            self.bar.update(done - self.bar.n)  # tqdm redraws when REDRAW_S has passed
            self.shown = time.perf_counter()
        elif self.due():
            self._line()

    def close(self, keep=False):
        """End the bar: keep its last state, or wipe it (the caller prints its own summary)."""
        if self.mode == "bar":
            self.bar.leave = keep
            self.bar.close()
        elif self.mode == "lines" and keep and self.done != self.initial:
            self._line()
        self.mode = "off"

    def _line(self):
        line = terminal_tqdm.format_meter(self.done, self.total, self.elapsed, prefix=self.label,
                                          postfix=self.text, initial=self.initial, unit_scale=self.scaled,
                                          bar_format=self._format())
        self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the bar was made."""
        return time.perf_counter() - self.start
