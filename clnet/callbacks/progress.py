"""Progress: the progress bar during an epoch and a line of metrics after it."""

from ..progress import ProgressBar
from .base import Callback


WAIT_SHOWN = 0.05  # the share of an epoch spent waiting for input from which it is shown


def images_per_second(images, seconds):
    """ "3,840 img/s": the rate of `images` in `seconds`."""
    return f"{images / max(seconds, 1e-9):,.0f} img/s"


def input_wait(waited, seconds):
    """["input wait 35%"] when the steps waited for their input (decoding, disk) for a noticeable
    share of `seconds`: the input pipeline, not the device, is then the bottleneck; else []."""
    share = waited / max(seconds, 1e-9)
    return [f"input wait {share:.0%}"] if share >= WAIT_SHOWN else []


class Progress(Callback):
    """A bar with the running loss and accuracy and images/s while an epoch runs, then
    "Epoch 3/10  loss 0.2134  accuracy 0.9372 ... (4.1 s, 5,120 img/s)" (", input wait 35%" when
    the input pipeline held the steps up), on the trainer's stream when it is verbose. The bar is
    tqdm's on a terminal (fitted to its width) and in a notebook; in a pipe or a file it is a plain
    line every half minute (clnet.progress). `fit` puts it first, so that the bar is closed before
    other callbacks print."""

    bar = None

    def on_epoch_begin(self, epoch):
        trainer = self.trainer
        self.first = trainer.start_step
        self.bar = ProgressBar(trainer.steps_per_epoch, f"Epoch {epoch}/{trainer.epochs}", trainer.stream,
                               enabled=trainer.verbose, initial=self.first)

    def on_step_end(self, epoch, step):
        if self.bar.due():  # the running metrics are one small read: only when they will be shown
            self.bar.update(step + 1, ", ".join(self.figures(step)))

    def figures(self, step):
        """What the bar shows after `step` (counted in the epoch from 0), most telling first (a
        narrow terminal cuts the line's end): the running metrics, images/s, and the share of the
        epoch spent waiting for input when it is 5% or more. A figure of your own goes here:
        override, and append to what this returns.

        Args:
            step: the step that has just ended.

        Example:
            >>> Progress().figures(119)     # during a fit
            ['loss 0.2134', 'accuracy 0.9372', '5,120 img/s']
        """
        trainer = self.trainer
        rate = images_per_second((step + 1 - self.first) * trainer.batch_size, self.bar.elapsed)
        return ([f"{k} {v:.4f}" for k, v in trainer.read_metrics().items()] + [rate]
                + input_wait(trainer.input_wait, self.bar.elapsed))

    def on_epoch_end(self, epoch, logs):
        self.bar.close()
        if self.trainer.verbose:
            trainer = self.trainer
            text = "  ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}" for k, v in logs.items())
            seconds = trainer.epoch_seconds  # validation included, as the metrics log counts it
            figures = [images_per_second(trainer.epoch_images, seconds)] + input_wait(trainer.input_wait, seconds)
            print(f"Epoch {epoch}/{trainer.epochs}  {text}  ({seconds:.1f} s, {', '.join(figures)})",
                  file=trainer.stream, flush=True)

    def on_interrupt(self, epoch, steps):
        self.bar.close()

    def on_train_end(self):
        if self.bar is not None:
            self.bar.close()
