"""PlotCurves: the training curves, drawn into a PNG after every epoch."""

from ..errors import ClnetError
from ..files import replace_atomically
from .base import Callback


class PlotCurves(Callback):
    """Draw loss and accuracy (training and validation) per epoch into a PNG file (needs matplotlib:
    pip install matplotlib, or clnet's plot extra).

    Example:
        >>> model.fit(x, y, epochs=20, callbacks=[PlotCurves("curves.png")])
    """

    def __init__(self, path):
        try:
            import matplotlib
        except ImportError:
            raise ClnetError("plotting training curves needs matplotlib: pip install matplotlib (or clnet's plot "
                             'extra: pip install ".[plot]" in its checkout)') from None
        matplotlib.use("Agg")
        self.path = str(path)

    def on_epoch_end(self, epoch, logs):
        if not self.model.world.lead:  # under MPI, rank 0 draws
            return
        import matplotlib.pyplot as plt
        history = self.trainer.history
        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for key in (metric, f"val_{metric}"):
                if key in history.history:
                    ax.plot(history.epochs, history.history[key], marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.set_title(metric)
            ax.legend()
        figure.tight_layout()
        try:  # atomically, as every file clnet writes: a special file refused, a symlink written through
            replace_atomically(self.path, lambda f: figure.savefig(f, format="png"))
        finally:
            plt.close(figure)
