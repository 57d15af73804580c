"""Sequential: the Keras-like model (compile / fit / evaluate / predict) over compiled graphs."""

import csv
import json
import os
import signal
import sys
import threading
from math import prod

import numpy as np

from . import losses, optim
from .device import device as open_device
from .errors import InputError, TrainingError
from .datasets import Dataset
from .datasets.feed import DeviceDataset, InputSpec, channel_statistics, image_dims, parse_augment
from .graph import Graph, ParamStore, plan_nodes
from .layers import Layer
from .progress import ProgressBar
from .tensor import DeviceTensor
from .text import format_bytes


def _throughput(done, total, batch, elapsed):
    """ "120/450  5,120 img/s  ETA 3 s": the progress bar's text during an epoch."""
    rate = done * batch / max(elapsed, 1e-9)
    return f"{done}/{total}  {rate:,.0f} img/s  ETA {(total - done) * batch / max(rate, 1e-9):.0f} s"


def _append_log(path, row):
    """Add an epoch's row to a metrics log: CSV (a header first) or JSON (a list, rewritten)."""
    path = str(path)
    if path.endswith(".json"):
        rows = []
        if os.path.exists(path):
            with open(path) as f:
                rows = json.load(f)
        with open(path, "w") as f:
            json.dump(rows + [row], f, indent=1)
        return
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


class _InterruptBetweenSteps:
    """Ctrl-C during fit takes effect after the step under way (or the end-of-epoch work), so that
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


def _split(rng, targets, fraction):
    """(validation, training) indices: a seeded random `fraction`, of each class for class labels."""
    if targets.dtype == np.int32:
        groups = [np.flatnonzero(targets == c) for c in np.unique(targets)]
    else:
        groups = [np.arange(len(targets))]
    chosen = [rng.permutation(g)[:int(round(len(g) * fraction))] for g in groups]
    validation = np.sort(np.concatenate(chosen))
    if len(validation) == 0:  # a tiny set: still one sample to validate on
        validation = rng.permutation(len(targets))[:1]
    return validation, np.setdiff1d(np.arange(len(targets)), validation)


class History:
    """What `fit` returns: per-epoch metrics in `history` ({"loss": [...], "accuracy": [...], ...})."""

    def __init__(self):
        self.history = {}
        self.epochs = []

    def record(self, epoch, logs):
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History({self.history})"


def _inputs(x, what="x"):
    """Images or features with the batch first: uint8 kept as it is (scaled by 1/255 on the
    device), anything else as float32, checked for NaN and infinity."""
    if isinstance(x, Dataset):
        x = x.x
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise InputError(f"{what} must be a numeric array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise InputError(f"{what} must have a batch dimension first: shape (samples, features...), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise InputError(f"{what} contains NaN or infinity (first at index {tuple(int(i) for i in bad)}): "
                         "clean or impute the data first")
    return x


class Sequential:
    """A stack of layers trained on one OpenCL device.

    Parameters are created and initialised (He / Glorot from `seed`) on the device at construction;
    state_dict keys and layouts are those of the same torch.nn.Sequential ("0.weight", ...).
    """

    def __init__(self, layers, device=None, seed=0):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {layer!r}, not a clnet layer")
        self.device = device if device is not None else open_device()
        self.seed = int(seed)
        self.param_store = ParamStore(self.device, self.layers, self.seed)
        self.metrics = DeviceTensor.empty(self.device, (4,), what="the metrics")
        self.loss = self.optimizer = None
        self.input_shape = None
        self.normalization = None  # per-channel (mean, std) applied to every input, set by fit(normalize=...)
        self.history = None  # the History of the last (or current) fit
        self._graphs = {}

    # ------------------------------------------------------------------ set-up
    def compile(self, loss="cross_entropy", optimizer="sgd"):
        """Choose the loss (name or clnet.losses.Loss) and optimizer (name or clnet.optim.Optimizer)."""
        self.loss = losses.get(loss)
        self.optimizer = optim.get(optimizer)
        self._graphs.clear()
        return self

    def count_params(self):
        return self.param_store.count

    def _spec(self, x, crop=0, flip=False):
        mean, std = self.normalization or ((), ())
        return InputSpec(str(x.dtype), tuple(mean), tuple(std), crop, flip)

    def _graph(self, batch_size, input_shape, training, target_dtype=None, spec=InputSpec()):
        key = (batch_size, tuple(input_shape), training, target_dtype and np.dtype(target_dtype).str, spec)
        if key not in self._graphs:
            self._graphs[key] = Graph(self, batch_size, input_shape, training, target_dtype, spec)
        self.input_shape = tuple(input_shape)
        return self._graphs[key]

    def _require_compiled(self, what):
        if self.loss is None:
            raise InputError(f"call model.compile(loss=..., optimizer=...) before {what}")

    def _prepare(self, x, y=None):
        """Validated inputs and the loss's targets (y may come with x as a Dataset)."""
        if isinstance(x, Dataset) and y is None:
            x, y = x
        x = _inputs(x)
        if y is None:
            raise InputError("labels are missing: pass y, or a clnet.datasets.Dataset as x")
        _, out_shape = plan_nodes(self.layers, self.loss, x.shape[1:])
        if len(np.shape(y)) == 0 or len(y) != len(x):
            raise InputError(f"x has {len(x)} samples but y has {len(y) if np.ndim(y) else 0}: they must match")
        return x, self.loss.targets(y, len(x), out_shape)

    # ------------------------------------------------------------------ training
    def fit(self, x, y=None, epochs=1, batch_size=32, validation_split=0.0, validation_data=None,
            shuffle=True, verbose=1, seed=None, stream=None, normalize=None, augment=None, resident="auto",
            checkpoint=None, resume=False, log=None, schedule=None, early_stopping=None, callbacks=()):
        """Train; returns a History of loss/accuracy (and val_loss/val_accuracy) per epoch.

        x: images (N, C, H, W) or features (N, ...), uint8 (scaled to [0, 1]) or float, or a
        clnet.datasets.Dataset (then y comes with it). validation_split holds out a seeded random
        fraction of (x, y), stratified by class; validation_data=(xv, yv) or a Dataset takes precedence. Shuffling each
        epoch is seeded by `seed` (default: the model's seed).
        normalize: True computes per-channel mean and std on the training images, or give
        (mean, std); the model keeps them and applies them in evaluate and predict too.
        augment: "crop" (random crops of the image padded by 4 pixels, "crop=N" for N), "flip"
        (random horizontal flips), or both "crop,flip"; on the device, training only.
        resident: keep the training set in device memory ("auto": when it fits), so that batches
        are gathered there and nothing but the epoch's sample order crosses the bus; otherwise each
        batch is uploaded while the previous one computes.
        checkpoint: a file written atomically after every epoch and on Ctrl-C (weights, optimizer
        state, random state, data order, history); with resume=True an existing one is continued, so
        that an interrupted run, resumed with the same arguments, ends with the same weights.
        log: a .csv or .json file that gets every epoch's metrics, seconds and images/s.
        schedule: a clnet.training schedule (StepLR, CosineLR, ReduceLROnPlateau, warm-up) that sets
        the learning rate before every step from the optimizer's rate; early_stopping: a
        clnet.training.EarlyStopping that ends training when a metric stops improving; callbacks:
        clnet.training.Callback objects called after each epoch (SaveBest, PlotCurves). The history
        so far is `model.history` while training.
        A loss that becomes NaN or infinite stops training with a TrainingError (the checkpoint
        keeps the last good epoch).
        """
        self._require_compiled("fit")
        if batch_size < 1 or epochs < 0:
            raise InputError(f"batch_size must be >= 1 and epochs >= 0, got {batch_size} and {epochs}")
        x, targets = self._prepare(x, y)
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence(
            [self.seed if seed is None else int(seed), 0x5EED])))
        if validation_data is None and validation_split:
            if not 0 < validation_split < 1:
                raise InputError(f"validation_split must lie in (0, 1), got {validation_split}")
            val_idx, train_idx = _split(rng, targets, validation_split)
            validation_data = (x[val_idx], targets[val_idx])
            x, targets = x[train_idx], targets[train_idx]
        if len(x) == 0:
            raise InputError("no training samples left (x is empty or validation_split took them all)")
        monitored = [c.monitor for c in (schedule, early_stopping, *callbacks) if getattr(c, "monitor", None)]
        if validation_data is None and any(m.startswith("val_") for m in monitored):
            raise InputError(f"{', '.join(monitored)} needs validation data: pass validation_split or validation_data")
        history = History()
        self.history = history
        steer = {"base_lr": self.optimizer.lr, "schedule": schedule, "early": early_stopping,
                 "callbacks": list(callbacks)}
        start_epoch, start_step, order = 1, 0, None
        # a resumed run takes its normalisation from the checkpoint: before the graph, which applies it
        if checkpoint is not None and resume and os.path.exists(checkpoint):
            start_epoch, start_step, order = self._resume(checkpoint, rng, history, steer)
        elif normalize is True:
            self.normalization = channel_statistics(x.reshape(len(x), *image_dims(x.shape[1:])))
        elif normalize:
            self.normalization = tuple(tuple(float(v) for v in np.ravel(part)) for part in normalize)
        graph = self._graph(min(batch_size, len(x)), x.shape[1:], True, targets.dtype,
                            self._spec(x, *parse_augment(augment)))
        if resident == "auto":
            in_use = graph.plan.arena_bytes + 4 * self.param_store.params.nbytes
            resident = DeviceDataset.fits(self.device, x, targets, in_use)
        data = DeviceDataset(self.device, x, targets) if resident else None
        stream = stream or sys.stdout
        size = graph.batch_size
        steps = -(-len(x) // size)
        with _InterruptBetweenSteps() as interrupt:
            for epoch in range(start_epoch, epochs + 1):
                if order is None:
                    self.metrics.fill(0)
                    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
                if data is not None:
                    data.shuffle(order)
                bar = ProgressBar(steps, f"Epoch {epoch}/{epochs}", stream, enabled=bool(verbose))
                for s in range(start_step, steps):
                    if schedule is not None:
                        self.optimizer.lr = schedule.lr(steer["base_lr"], epoch - 1 + s / steps)
                    if data is not None:
                        graph.step_resident(data, s * size, min(size, len(x) - s * size))
                    else:
                        idx = order[s * size:(s + 1) * size]
                        graph.step(x[idx], targets[idx])
                    if bar.due():  # a terminal shows the running loss: one small read now and then
                        running = "  ".join(f"{k} {v:.4f}" for k, v in self._read_metrics(targets).items())
                        bar.update(s + 1, _throughput(s + 1 - start_step, steps - start_step, size,
                                                      bar.elapsed) + "  " + running)
                    if interrupt.requested and s + 1 < steps:  # keep what is done, then stop
                        bar.close()
                        graph.sync()
                        if checkpoint is not None:
                            self._checkpoint(checkpoint, rng, history, epoch - 1, s + 1, order, steer)
                        raise KeyboardInterrupt
                done = steps - start_step
                start_step = 0
                logs = self._read_metrics(targets)
                graph.sync()
                if not np.isfinite(logs["loss"]):
                    bar.close()
                    kept = f"; {checkpoint} keeps the last good epoch" if checkpoint is not None else ""
                    raise TrainingError(f"the loss became {logs['loss']} in epoch {epoch}: lower the learning "
                                        f"rate (now {self.optimizer.lr:g}) or normalise the inputs{kept}")
                if validation_data is not None:
                    val = (self.evaluate(validation_data, batch_size=size) if isinstance(validation_data, Dataset)
                           else self.evaluate(*validation_data, batch_size=size))
                    logs.update({f"val_{k}": v for k, v in val.items()})
                logs["lr"] = self.optimizer.lr
                history.record(epoch, logs)
                bar.close()
                if schedule is not None:
                    schedule.end_epoch(logs)
                stop = early_stopping is not None and early_stopping.update(epoch, logs, self)
                for callback in callbacks:
                    callback.on_epoch_end(epoch, logs, self)
                if log is not None:
                    _append_log(log, {"epoch": epoch, **logs, "seconds": round(bar.elapsed, 3),
                                      "images_per_second": round(min(done * size, len(x)) / bar.elapsed, 1)})
                order = None
                if checkpoint is not None:
                    self._checkpoint(checkpoint, rng, history, epoch, 0, None, steer)
                if verbose:
                    text = "  ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}" for k, v in logs.items())
                    print(f"Epoch {epoch}/{epochs}  {text}  ({bar.elapsed:.1f} s)", file=stream, flush=True)
                if interrupt.requested:
                    raise KeyboardInterrupt
                if stop:
                    if verbose:
                        print(f"Early stopping: {early_stopping.monitor} has not improved since epoch "
                              f"{early_stopping.best_epoch}" + (", whose weights are restored"
                                                                 if early_stopping.restore_best else ""),
                              file=stream, flush=True)
                    break
        return history

    def _checkpoint(self, path, rng, history, epochs_done, steps_done, order, steer):
        """Everything a resumed fit needs: the weights and optimizer (clnet.io), and the random
        state, this epoch's order, the metrics summed so far, the history, the schedule and early
        stopping."""
        from . import io
        state = {"rng": rng.bit_generator.state, "history": history.history, "epochs": history.epochs,
                 "order": order, "metrics": self.metrics.download() if order is not None else None,
                 "base_lr": steer["base_lr"],
                 "schedule": steer["schedule"].state() if steer["schedule"] is not None else None,
                 "early": steer["early"].state() if steer["early"] is not None else None,
                 "callbacks": [callback.state() for callback in steer["callbacks"]]}
        io.save_checkpoint(path, self, state, epoch=epochs_done, step=steps_done)

    def _resume(self, path, rng, history, steer):
        """Restore a checkpoint written by `_checkpoint` into this model; returns (epoch, step,
        order) to continue from."""
        from . import io
        saved = io.load_checkpoint(path, self.device)
        if type(saved.model.optimizer) is not type(self.optimizer):
            raise InputError(f"{path} was written by a {type(saved.model.optimizer).__name__} run: compile "
                             f"with the same optimizer to resume it")
        self.load_state_dict(saved.model.state_dict())
        self.optimizer.load_state_dict(saved.model.optimizer.state_dict(), self.device)
        self.normalization = saved.model.normalization
        state = saved.state
        rng.bit_generator.state = state["rng"]
        steer["base_lr"] = state["base_lr"]
        for key in ("schedule", "early"):
            if steer[key] is not None and state[key] is not None:
                steer[key].load_state(state[key])
        for callback, saved_state in zip(steer["callbacks"], state.get("callbacks", ())):
            callback.load_state(saved_state)
        history.history, history.epochs = state["history"], state["epochs"]
        if state["order"] is None:
            return saved.epoch + 1, 0, None
        self.metrics.upload(np.asarray(state["metrics"], np.float32))
        return saved.epoch + 1, saved.step, np.asarray(state["order"])

    def train_on_batch(self, x, y):
        """One optimizer step on (x, y) as one batch; returns that batch's loss."""
        self._require_compiled("train_on_batch")
        x, targets = self._prepare(x, y)
        graph = self._graph(len(x), x.shape[1:], True, targets.dtype, self._spec(x))
        self.metrics.fill(0)
        graph.step(x, targets)
        return self._read_metrics(targets)["loss"]

    def _read_metrics(self, targets):
        loss_sum, _, correct, count = self.metrics.download()
        logs = {"loss": float(loss_sum / max(count, 1))}
        if self.loss.has_accuracy(targets):
            logs["accuracy"] = float(correct / max(count, 1))
        return logs

    # ------------------------------------------------------------------ inference
    def evaluate(self, x, y=None, batch_size=256):
        """{"loss": mean loss, "accuracy": fraction correct} over (x, y) or a Dataset."""
        self._require_compiled("evaluate")
        x, targets = self._prepare(x, y)
        if len(x) == 0:
            raise InputError("evaluate needs at least one sample")
        graph = self._graph(batch_size, x.shape[1:], False, targets.dtype, self._spec(x))
        self.metrics.fill(0)
        for start in range(0, len(x), graph.batch_size):
            graph.infer(x[start:start + graph.batch_size], targets[start:start + graph.batch_size],
                        want_output=False)
        logs = self._read_metrics(targets)
        graph.sync()
        return logs

    def predict(self, x, batch_size=256):
        """Model outputs as numpy: class probabilities for cross-entropy (softmax) and binary
        cross-entropy (sigmoid), the raw outputs otherwise. x as for fit (uint8 images are scaled,
        the model's normalisation applies)."""
        x = _inputs(x)
        if len(x) == 0:
            raise InputError("predict needs at least one sample")
        graph = self._graph(batch_size, x.shape[1:], False, spec=self._spec(x))
        out = [graph.infer(x[start:start + graph.batch_size])
               for start in range(0, len(x), graph.batch_size)]
        graph.sync()
        return np.concatenate(out).reshape(len(x), *graph.output_shape)

    # ------------------------------------------------------------------ weights
    def state_dict(self):
        """{"0.weight": array, ...}: float32 numpy arrays in PyTorch's layouts and keys."""
        return self.param_store.state_dict()

    def gradients(self):
        """The gradients of the last training step, keyed like state_dict (computed before the update)."""
        return self.param_store.gradients()

    def load_state_dict(self, state):
        """Load arrays (numpy, or anything np.asarray takes, such as CPU torch tensors)."""
        self.param_store.load_state_dict(state)

    def save(self, path, classes=None):
        """Write the model to one file (conventionally `*.clnet`), atomically: the architecture, the
        weights, the seed, the loss, the input shape, the normalisation and the class names
        (`classes`, in output order). `clnet.load(path)` reads it back; clnet/io.py documents the format."""
        from . import io
        io.save(self, path, classes=classes)

    # ------------------------------------------------------------------ description
    def summary(self, input_shape=None, batch_size=32, stream=None):
        """Print a table of layers: output shape, parameters, forward FLOPs and activation memory per
        sample; then the totals and the device memory planned for `batch_size` (a training plan
        once compiled, else an inference plan). Returns the text."""
        input_shape = tuple(input_shape or self.input_shape or ())
        if not input_shape:
            raise InputError("summary needs the input shape: model.summary(input_shape=(1, 28, 28)), "
                             "or call it after fit/predict")
        plan_nodes(self.layers, None, input_shape)  # checks shapes, naming the layer that fails
        rows, shape, flops = [], input_shape, 0
        for i, layer in enumerate(self.layers):
            out = layer.output_shape(shape)
            params = sum(prod(s) for s in layer.param_shapes().values())
            flops += layer.flops(shape)
            rows.append((f"{i}: {layer!r}", str(out), f"{params:,}", f"{layer.flops(shape):,}",
                         format_bytes(prod(out) * 4)))
            shape = out
        header = ("Layer", "Output shape", "Params", "FLOPs", "Activations")
        widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
        line = lambda r: "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
        rule = "-" * len(line(header))
        training = self.loss is not None
        graph = self._graph(batch_size, input_shape, training, self.loss.target_dtype if training else None)
        store = self.param_store
        resident = store.params.nbytes * (2 + (len(self.optimizer._state or ()) if training else 0)) \
            + store.buffers.nbytes
        text = "\n".join([
            line(header), rule, *map(line, rows), rule,
            f"Input {input_shape}: {self.count_params():,} parameters, {flops:,} forward FLOPs per sample",
            f"Planned device memory for {'training' if training else 'inference'} at batch size {batch_size}: "
            f"{format_bytes(graph.plan.arena_bytes + resident)} ({format_bytes(graph.plan.arena_bytes)} activations and "
            f"gradients, {format_bytes(resident)} parameters, gradients and optimizer state) on {self.device.name}"])
        print(text, file=stream or sys.stdout)
        return text

    def __repr__(self):
        return f"Sequential([{', '.join(map(repr, self.layers))}])"

