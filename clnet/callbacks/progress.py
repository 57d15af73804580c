"""Progress: the progress bar during an epoch and a line of metrics after it."""

from ..progress import ProgressBar
from .base import Callback


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
                                                 trainer.batch_size, self.bar.elapsed) + "  " + running)

    def on_epoch_end(self, epoch, logs):
        self.bar.close()
        if self.trainer.verbose:
            text = "  ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}" for k, v in logs.items())
            print(f"Epoch {epoch}/{self.trainer.epochs}  {text}  ({self.bar.elapsed:.1f} s)", file=self.trainer.stream,
                  flush=True)

    def on_interrupt(self, epoch, steps):
        self.bar.close()

    def on_train_end(self):
        if self.bar is not None:
            self.bar.close()
