"""Progress: the progress bar during an epoch and a line of metrics after it."""

import warnings

from ..datasets.stream import skipped_report
from ..progress import ProgressBar
from .base import Callback

WAIT_SHOWN = 0.05  # the share of an epoch spent waiting for input from which it is shown


def input_wait(trainer, elapsed):
    """ "  input wait 35%" when the steps waited for their input (decoding, disk) for a noticeable
    share of the epoch so far: the input pipeline, not the device, is then the bottleneck."""
    share = trainer.input_wait / max(elapsed, 1e-9)
    return f"  input wait {share:.0%}" if share >= WAIT_SHOWN else ""


def throughput(done, total, batch, elapsed):
    """ "120/450  5,120 img/s  ETA 3 s": the progress bar's text during an epoch."""
    rate = done * batch / max(elapsed, 1e-9)
    return f"{done}/{total}  {rate:,.0f} img/s  ETA {(total - done) * batch / max(rate, 1e-9):.0f} s"


class Progress(Callback):
    """A bar with the running loss and images/s while an epoch runs (on a terminal only), then
    "Epoch 3/10  loss 0.2134  accuracy 0.9372 ... (4.1 s)", on the trainer's stream when it is
    verbose. `fit` puts it first, so that the bar is closed before other callbacks print."""

    bar = None

    def on_epoch_begin(self, epoch):
        trainer = self.trainer
        self.bar = ProgressBar(trainer.steps_per_epoch, f"Epoch {epoch}/{trainer.epochs}", trainer.stream,
                               enabled=trainer.verbose)
        self.first = trainer.start_step

    def on_step_end(self, epoch, step):
        if self.bar.due():  # a terminal shows the running loss: one small read now and then
            trainer = self.trainer
            running = "  ".join(f"{k} {v:.4f}" for k, v in trainer.read_metrics().items())
            self.bar.update(step + 1, throughput(step + 1 - self.first, trainer.steps_per_epoch - self.first,
                                                 trainer.batch_size, self.bar.elapsed) + "  " + running
                            + input_wait(trainer, self.bar.elapsed))

    def on_epoch_end(self, epoch, logs):
        self.bar.close()
        if self.trainer.verbose:
            text = "  ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}" for k, v in logs.items())
            print(f"Epoch {epoch}/{self.trainer.epochs}  {text}  ({self.bar.elapsed:.1f} s"
                  f"{input_wait(self.trainer, self.bar.elapsed).replace('  ', ', ')})", file=self.trainer.stream,
                  flush=True)
        if self.trainer.skipped:  # a streamed epoch met unreadable images
            message = f"Epoch {epoch}: {skipped_report(self.trainer.skipped)}"
            if self.trainer.verbose:
                print(message, file=self.trainer.stream, flush=True)
            else:
                warnings.warn(message, stacklevel=2)

    def on_interrupt(self, epoch, steps):
        self.bar.close()

    def on_train_end(self):
        if self.bar is not None:
            self.bar.close()
