"""Checkpoint: everything a run needs to continue exactly, written after every epoch and on Ctrl-C."""

import logging
import os

import numpy as np

from .. import io
from ..datasets.feed import image_dims
from ..errors import InputError, ModelFileError
from ..files import remove_stale_temporaries
from .base import Callback, is_count
from .early_stopping import EarlyStopping
from .metrics_log import MetricsLog
from .schedule import LearningRateScheduler

log = logging.getLogger(__name__)


class Checkpoint(Callback):
    """Write `path` atomically after every epoch and when Ctrl-C stops a fit mid-epoch: the weights
    and the optimizer (clnet.io's checkpoint format), the random state, the epoch's sample order and
    the metrics summed so far, the history, and the state of every callback that has one. With
    `resume`, an existing file is loaded into the model when training begins, so that a run
    interrupted and resumed with the same arguments ends with the same weights as one never
    interrupted. Everything a resumed fit takes from the file is checked against this fit first
    (a ModelFileError names the file and the field); `holds` is the (epochs, steps) of this fit
    that the file holds, once it was written or resumed from. Under MPI rank 0 writes the file,
    which records the number of ranks: a run resumes with as many (every rank reads the file, so it
    must lie where every rank sees it).

    Example:
        >>> model.fit(x, y, epochs=30, checkpoint="run.clnet", resume=True)   # adds one
    """

    def __init__(self, path, resume=False):
        self.path, self.resume = os.fspath(path), bool(resume)
        self.holds = None

    def on_train_begin(self):
        self.holds = None
        if self.model.world.lead:
            remove_stale_temporaries(self.path)  # those of a writer killed mid-write
        if self.resume and self.model.world.share(os.path.exists(self.path), "the checkpoint's presence"):
            self._restore()

    def on_epoch_end(self, epoch, logs):
        self._save(epoch, 0, None)

    def on_interrupt(self, epoch, steps):
        self._save(epoch - 1, steps, self.trainer.order)

    def _save(self, epochs_done, steps_done, order):
        trainer, model = self.trainer, self.model
        state = {"rng": trainer.rng.bit_generator.state, "history": trainer.history.history,
                 "epochs": trainer.history.epochs, "order": order,
                 "metrics": model.metrics.state() if order is not None else None,
                 "callbacks": [[type(c).__name__, c.state()] for c in trainer.callbacks if _keeps_state(c)],
                 "ranks": model.world.size}
        if model.world.lead:
            io.save_checkpoint(self.path, model, state, epoch=epochs_done, step=steps_done)
        self.holds = (epochs_done, steps_done)

    def _restore(self):
        """Load the checkpoint into the model and the trainer; the trainer continues from the
        epoch and step it names. Each saved callback state goes to the callback of its class in
        its place among those of that class; a callback the checkpoint has no state for starts
        afresh."""
        trainer, model = self.trainer, self.model
        saved = io.read_checkpoint(self.path)
        ranks = saved.state.get("ranks", 1) if isinstance(saved.state, dict) else 1
        if ranks != model.world.size:
            raise InputError(f"{self.path} was written by a run of {ranks} process{'es' if ranks > 1 else ''} "
                             f"(MPI ranks) and this one has {model.world.size}: resume it with "
                             + (f"mpirun -n {ranks}" if ranks > 1 else "one process, without mpirun"))
        state = _checked_state(saved, self.path, trainer)
        model.restore(saved, self.path)
        by_class = {}
        for name, callback_state in (state["callbacks"] if "schedule" not in state
                                     else _states_of_the_first_layout(trainer, state)):
            by_class.setdefault(name, []).append(callback_state)
        for callback in filter(_keeps_state, trainer.callbacks):
            name = type(callback).__name__
            states = by_class.get(name)
            if states:
                try:
                    callback.load_state(states.pop(0))
                except (ValueError, TypeError, KeyError) as exc:  # InputError included
                    raise ModelFileError(self.path, f"checkpoint.json is invalid: the state of {name}: {exc}") from None
        trainer.rng.bit_generator.state = state["rng"]
        trainer.history.history, trainer.history.epochs = state["history"], state["epochs"]
        trainer.start_epoch = saved.epoch + 1
        if state["order"] is not None:
            model.metrics.load_state(state["metrics"])
            trainer.start_step, trainer.order = saved.step, state["order"]
        self.holds = (saved.epoch, saved.step)
        log.info("Resuming from %s at epoch %d, step %d", self.path, trainer.start_epoch, trainer.start_step)


def _checked_state(saved, path, trainer):
    """The training loop's state in a checkpoint (io.SavedCheckpoint), every value checked against
    this fit before any reaches the model or a kernel (a crafted data order would index outside the
    training set); the order comes back as an int64 array. A ModelFileError names the file and the
    field."""
    def fail(field, problem):
        raise ModelFileError(path, f"checkpoint.json is invalid: {field} {problem}")

    state = saved.state
    if not isinstance(state, dict):
        fail("'state'", f"must be an object, got {type(state).__name__}")
    first_layout = ("base_lr", "schedule", "early") if "schedule" in state else ()
    for key in ("rng", "history", "epochs", "order", "metrics", "callbacks") + first_layout:
        if key not in state:
            fail("'state'", f"has no {key!r}")
    _check_generator_state(state["rng"], trainer.rng.bit_generator, fail)
    epochs, history = state["epochs"], state["history"]
    if not (isinstance(epochs, list) and len(epochs) == saved.epoch and all(map(is_count, epochs))
            and epochs == list(range(1, saved.epoch + 1))):
        fail("state.epochs", f"must list the epochs done, 1 to {saved.epoch} (its 'epoch')")
    if not (isinstance(history, dict) and all(isinstance(values, list) and len(values) == len(epochs)
                                              and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in values) for values in history.values())):
        fail("state.history", f"must map each metric to a list of {len(epochs)} numbers, one an epoch")
    order = state["order"]
    if order is None:
        if saved.step:
            fail("'step'", f"is {saved.step}, but state.order is null: a checkpoint within an epoch keeps its order")
    else:
        order = _checked_order(order, trainer.samples, fail)
        steps = trainer.steps_per_epoch
        if not 0 <= saved.step < steps:
            fail("'step'", f"is {saved.step}, but an epoch of this fit has {steps} steps (batches of "
                           f"{trainer.batch_size}): resume with the batch size the run was started with")
        metrics = state["metrics"]
        try:
            metrics = np.asarray(metrics, np.float64)
        except (TypeError, ValueError):
            fail("state.metrics", "must be numbers")
        if not (metrics.shape == (4,) or (metrics.ndim == 2 and metrics.shape[1] == 4 and len(metrics) >= 1)) \
                or not np.isfinite(metrics).all():
            fail("state.metrics", f"must be 4 finite numbers (or 4 for each replica), got shape {metrics.shape}")
    callbacks = state["callbacks"]
    if not isinstance(callbacks, list) or not all(
            isinstance(item, dict) or item is None if first_layout
            else isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) for item in callbacks):
        fail("state.callbacks", "must be a list of [class name, state] pairs")
    normalization = saved.model.normalization
    channels = image_dims(trainer.sample_shape)[0]
    if normalization and len(normalization[0]) != channels:
        fail("model.json's 'normalization'", f"has {len(normalization[0])} channels, the training inputs {channels}")
    return {**state, "order": order}


def _checked_order(order, samples, fail):
    """A data order: a permutation of the `samples` training samples, as int64."""
    try:
        order = np.asarray(order)
    except (TypeError, ValueError):
        order = np.asarray(None)
    if not (order.ndim == 1 and order.dtype.kind in "iu" and len(order) == samples
            and np.array_equal(np.sort(order), np.arange(samples))):
        fail("state.order", f"must be a permutation of this fit's {samples} training samples (0 to {samples - 1}), "
                            f"got {len(order) if order.ndim == 1 else 'no list of'} indices"
                            + (f" from {order.min()} to {order.max()}" if order.ndim == 1 and order.dtype.kind in "iu"
                               and len(order) else ""))
    return order.astype(np.int64)


def _check_generator_state(value, generator, fail):
    """A bit generator's state of the kind this fit uses, field for field as a fresh one's: numpy
    takes some malformed states without a word (a negative Philox buffer_pos reads outside its
    buffer, floats are truncated)."""
    fresh = type(generator)().state

    def like(value, model, field):
        if isinstance(model, dict):
            if not isinstance(value, dict) or set(value) != set(model):
                fail(field, f"must be an object of the fields {', '.join(sorted(model))}")
            for key in model:
                like(value[key], model[key], f"{field}.{key}")
        elif isinstance(model, np.ndarray):
            if not (isinstance(value, np.ndarray) and value.shape == model.shape and value.dtype.kind in "iu"
                    and (value >= 0).all()):
                fail(field, f"must be an array of {model.size} whole numbers >= 0")
        elif isinstance(model, str):
            if value != model:
                fail(field, f"must be {model!r}, the generator of this fit, got {value!r}")
        elif not (is_count(value) and value < 2 ** 128):
            fail(field, "must be a whole number >= 0")

    like(value, fresh, "state.rng")
    if "buffer_pos" in fresh and value["buffer_pos"] > len(fresh["buffer"]):
        fail("state.rng.buffer_pos", f"must lie in 0 to {len(fresh['buffer'])}, got {value['buffer_pos']}")
    if value.get("has_uint32", 0) not in (0, 1):
        fail("state.rng.has_uint32", "must be 0 or 1")
    try:
        type(generator)().state = value
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        fail("state.rng", f"is not a valid {fresh.get('bit_generator')} state: {exc}")


def _keeps_state(callback):
    return type(callback).state is not Callback.state


def _states_of_the_first_layout(trainer, state):
    """Checkpoints written before clnet had a Trainer kept the schedule's and early stopping's
    states under keys of their own, and the states of fit's `callbacks` in a list (an empty one
    for those without a state): (class name, state) pairs as checkpoints keep them now."""
    given = iter([saved for saved in state["callbacks"] if saved])
    pairs = []
    for callback in filter(_keeps_state, trainer.callbacks):
        if isinstance(callback, MetricsLog):  # it kept no state then
            continue
        if isinstance(callback, LearningRateScheduler):
            saved = None if state["schedule"] is None else {"base_lr": state["base_lr"], "schedule": state["schedule"]}
        elif isinstance(callback, EarlyStopping):
            saved = state["early"]
        else:
            saved = next(given, None)
        if saved is not None:
            pairs.append([type(callback).__name__, saved])
    return pairs
