"""Trainer: the epoch loop of a fit, in one short place, calling its callbacks at every point.

It shuffles with its seeded generator, feeds the compiled training step from a dataset held on the
device or from host batches, reads the metrics once an epoch, validates, and records the history;
everything else (progress, logs, checkpoints, schedules, early stopping) is a callback.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import closing, nullcontext

import numpy as np

from .datasets import Dataset, ImageStream
from .datasets.batches import host_batches
from .datasets.feed import DeviceDataset, parse_augment
from .datasets.stream import skipped_report
from .callbacks import Callback
from .errors import InputError

log = logging.getLogger(__name__)


class History:
    """What `fit` returns: per-epoch metrics in `history` ({"loss": [...], "accuracy": [...], ...})
    and the epochs they belong to in `epochs`."""

    def __init__(self):
        self.history = {}
        self.epochs = []

    def record(self, epoch, logs):
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History({self.history})"


class _InterruptBetweenSteps:
    """Ctrl-C during a fit takes effect after the step under way (or the end-of-epoch work), so that
    a checkpoint never holds half a step; a second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._request)
        return self

    def _request(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class Trainer:
    """Trains a compiled model with a list of callbacks (`clnet.callbacks`).

    What callbacks may read: `model`, `epochs`, `steps_per_epoch`, `batch_size`, `history`,
    `samples` (how many the fit trains on), `sample_shape` (of one input),
    `rng` (the generator of the sample order), `order` (this epoch's, over the training samples:
    `rows` maps it to rows of x when some are held out), `start_epoch` and
    `start_step` (where the loop begins, moved by a resumed checkpoint), `epoch_seconds` and
    `epoch_images` (at the end of an epoch), `input_wait` (the seconds this epoch's steps waited for
    their input: decoding, reading from disk), `skipped` (the unreadable images a streamed epoch
    replaced, [(file, reason)]), `read_metrics()` (the running metrics: one small read from the
    device), `verbose` and `stream`; setting `stop_training` ends the fit after the epoch.

    Args:
        model: a compiled clnet model.
        callbacks: called in order at each point of training.
        validation_data: (x, targets) or a Dataset, evaluated after every epoch, or (x, targets,
            rows) for rows of validated inputs held out of the training set; a callback that
            monitors a "val_" metric needs it.
        verbose: whether callbacks should print; stream: where to (default stdout).

    Example:
        >>> x, targets = model._prepare(x, y)   # validated inputs, and targets as the loss takes them
        >>> trainer = Trainer(model, [callbacks.Progress(), callbacks.NaNGuard()])
        >>> history = trainer.fit(x, targets, epochs=5, batch_size=64, rng=np.random.default_rng(0))
    """

    def __init__(self, model, callbacks: Sequence[Callback] = (), validation_data=None, verbose: bool = True,
                 stream=None):
        monitors = [c.monitor for c in callbacks if getattr(c, "monitor", None)]
        if validation_data is None and any(m.startswith("val_") for m in monitors):
            raise InputError(f"{', '.join(monitors)} needs validation data: pass validation_split or validation_data")
        self.model, self.callbacks, self.validation_data = model, list(callbacks), validation_data
        self.verbose, self.stream = bool(verbose) and model.world.lead, stream or sys.stdout  # rank 0 prints

    def _call(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def read_metrics(self) -> dict:
        """The running metrics of this process's replicas (not a collective: under MPI, rank 0's
        shards only, for the progress bar)."""
        return self.model._read_metrics(self.targets, local=True)

    @property
    def epoch_seconds(self):
        return time.perf_counter() - self._epoch_start

    def fit(self, x: np.ndarray, targets: np.ndarray, epochs: int, batch_size: int, rng: np.random.Generator,
            shuffle: bool = True, augment: str | dict | None = None, resident: bool | str = "auto",
            rows: np.ndarray | None = None) -> History:
        """Train on validated inputs `x` (an array, or an ImageStream) and the loss's `targets`;
        returns the History.

        rng: the generator of every epoch's sample order; augment: as `Model.fit` (a stream's own
        when None); resident: keep the training set in device memory ("auto": when it fits); rows:
        the indices of the training samples in x (default all), so that held-out rows are never
        copied out of x, which may be a memory-mapped file: only batches are read from it."""
        model = self.model
        self.targets, self.epochs, self.rng, self.rows = targets, epochs, rng, rows
        samples = self.samples = len(x) if rows is None else len(rows)
        self.sample_shape = x.shape[1:]
        self.history = model.history = History()
        self.start_epoch, self.start_step, self.order = 1, 0, None
        self.stop_training = False
        self.input_wait, self.skipped = 0.0, []
        self.batch_size = min(batch_size, samples)
        self.steps_per_epoch = -(-samples // self.batch_size)
        for callback in self.callbacks:
            callback.trainer = self
        try:
            self._call("on_train_begin")  # a checkpoint resumes here, normalisation included
            if isinstance(x, ImageStream):  # the workers crop and flip; a padded crop is the device's
                if resident is True:
                    raise InputError("resident=True needs images in memory: a stream is decoded batch by batch "
                                     "(pass resident='auto' or False)")
                self._augment = augment if augment is not None else x.augment
                crop, flip = parse_augment(self._augment).crop, False
                resident = False
            else:
                crop, flip, resized_crop = parse_augment(augment)
                if resized_crop:
                    raise InputError("random-resized-crop needs a streamed image folder (ImageFolder(..., "
                                     "stream=True), --stream): use crop and flip for images in memory")
            runner = model._runner(self.batch_size, x.shape[1:], True, targets.dtype, model._spec(x, crop, flip))
            model._broadcast()  # under MPI, every rank starts from rank 0's state
            if len(model.replicas) > 1 or model.world.size > 1:  # each shard is uploaded: no dataset on one device
                if resident is True:
                    raise InputError("resident=True needs a model on one device of one process: a replicated "
                                     "model's fit uploads each replica's shard (pass resident='auto' or False)")
                resident = False
            if resident == "auto":
                in_use = runner.plan.arena_bytes + 4 * model.param_store.params.nbytes
                resident = DeviceDataset.fits(model.device, x, targets, in_use)
            data = DeviceDataset(model.device, x, targets) if resident else None
            with _InterruptBetweenSteps() as interrupt:
                for epoch in range(self.start_epoch, epochs + 1):
                    self._epoch(epoch, runner, x, targets, samples, data, shuffle, interrupt)
                    if self._interrupted(interrupt):
                        raise KeyboardInterrupt
                    if self.stop_training:
                        break
        finally:
            self._call("on_train_end")
            val = self.validation_data
            for data in (x, val, val[0] if isinstance(val, tuple) else None):
                if isinstance(data, ImageStream):
                    data.close()
        return self.history

    def _interrupted(self, interrupt):
        """Whether Ctrl-C was pressed: here, or on any rank under MPI (all ranks stop at the same step)."""
        world = self.model.world
        if world.size == 1:
            return interrupt.requested
        return world.any(interrupt.requested, "the check for Ctrl-C after a step")

    def _rows_of(self, positions):
        """The rows of x at these positions of the training samples."""
        return positions if self.rows is None else self.rows[positions]

    def _epoch(self, epoch, runner, x, targets, samples, data, shuffle, interrupt):
        model, size, steps = self.model, self.batch_size, self.steps_per_epoch
        if self.order is None:
            model.metrics.fill(0)
            self.order = self.rng.permutation(samples) if shuffle else np.arange(samples)
        if data is not None:
            data.shuffle(self._rows_of(self.order))
        self._epoch_start = time.perf_counter()
        self.input_wait, self.skipped = 0.0, []
        self._call("on_epoch_begin", epoch)
        feed = nullcontext()  # a dataset held on the device: no host batches
        if data is None:  # this rank reads (a stream's workers decode) its rows of every batch
            stream = dict(seed=model.seed, epoch=epoch, train=True, augment=self._augment) \
                if isinstance(x, ImageStream) else {}
            feed = closing(host_batches(x, self._rows_of(self.order), size, model._rank_part, self.start_step,
                                        **stream))
        with feed as batches:  # closing it waits for a stream's batches in flight
            for step in range(self.start_step, steps):
                self._call("on_step_begin", epoch, step)
                waiting = time.perf_counter()
                if batches is None:
                    runner.train_resident(data, step * size, min(size, samples - step * size))
                else:
                    images, used, n = next(batches)
                    self.input_wait += time.perf_counter() - waiting
                    runner.train(images, targets[used], **model._rank_batch(n))
                self._call("on_step_end", epoch, step)
                # keep what is done, then stop; after the last step fit's own check asks (under MPI
                # each check is a collective)
                if step + 1 < steps and self._interrupted(interrupt):
                    runner.sync()
                    self._call("on_interrupt", epoch, step + 1)
                    raise KeyboardInterrupt
        if isinstance(x, ImageStream) and x.skipped:
            self.skipped = x.skipped
            log.warning("Epoch %d: %s", epoch, skipped_report(x.skipped))
        images = samples - self.start_step * size  # a resumed epoch's steps, its short last batch included
        self.start_step = 0
        logs = model._read_metrics(self.targets)  # over every rank
        runner.sync()
        self._call("on_epoch_metrics", epoch, logs)
        if self.validation_data is not None:
            val = (model.evaluate(self.validation_data, batch_size=size)
                   if isinstance(self.validation_data, (Dataset, ImageStream))
                   else model._evaluate(*self.validation_data, batch_size=size) if len(self.validation_data) == 3
                   else model.evaluate(*self.validation_data, batch_size=size))
            logs.update({f"val_{k}": v for k, v in val.items()})
        logs["lr"] = model.optimizer.lr
        self.epoch_images = images
        self.history.record(epoch, logs)
        self.order = None
        self._call("on_epoch_end", epoch, logs)
