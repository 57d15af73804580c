"""Model: a network with its parameters on one device (or replicated on several), trained and run
as in Keras (compile / fit / evaluate / predict / save); Sequential builds it from a stack of layers.
Loading model files and checkpoints onto a device is here too, above the file format (clnet.io)."""

from __future__ import annotations

import logging
import numbers
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from math import prod

import numpy as np

from . import callbacks as cb
from . import io, losses, optim, weights_files
from .balance import Balancer, first_guess
from .compiler import CompiledStep, Target
from .datasets import Dataset, ImageStream
from .datasets.batches import host_batches
from .datasets.feed import InputSpec, channel_statistics, image_dims
from .datasets.stream import skipped_report
from .device import Device
from .distributed import local_devices, world
from .errors import InputError, ModelFileError, ShapeError
from .layers import Layer, SymbolicTensor
from .network import INPUT, Network, loss_input
from .params import IncompatibleKeys, ParamStore
from .reduction import SeamTimes
from .replicas import (Lag, Replica, ReplicatedRunner, SummedMetrics, capacity, default_shares, device_list,
                       make_runner, rank_part, share_weights)
from .tensor import is_pyopencl_array, pyopencl_images
from .text import format_bytes
from .trainer import History, Trainer

log = logging.getLogger(__name__)

__all__ = ["History", "LoadedCheckpoint", "Model", "Sequential", "load", "load_checkpoint"]


def _inputs(x, what="x", devices=None):
    """Images or features with the batch first: uint8 kept as it is (scaled by 1/255 on the
    device), anything else as float32, checked for NaN and infinity. With `devices` (predict,
    evaluate), a pyopencl array on them is taken where it lies, as a DeviceTensor."""
    if isinstance(x, Dataset):
        x = x.x
    if is_pyopencl_array(x):
        if devices is None:
            raise InputError(f"{what} is a pyopencl array: training takes host arrays (numpy); pyopencl arrays "
                             "feed predict and evaluate")
        return pyopencl_images(x, devices, what)
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


def _report_skipped(x):
    """A stream's unreadable images, reported after its batches (the clnet logger's warning)."""
    if isinstance(x, ImageStream) and x.skipped:
        log.warning("%s: %s", x.name, skipped_report(x.skipped))


def _count(value, name, least):
    """`value` checked to be a whole number (not bool) of at least `least`, for the argument `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise InputError(f"{name} must be a whole number >= {least}, got {value!r}")
    return int(value)


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


class Model:
    """A network trained and run on one OpenCL device, or data-parallel on several (replicas).

    Parameters are created and initialised (He / Glorot from `seed`) on the device at construction;
    state_dict keys are "<node name>.<parameter>" in PyTorch's layouts.

    Args:
        inputs: the network's `clnet.Input(...)`, with `outputs` the symbolic tensor the layers
            called on it make; or a clnet.network.Network (then no `outputs`).
        device: a clnet.Device (default: the best device, see `clnet.device`; under mpirun, the
            local rank's, see `clnet.distributed`), or a list of them: one replica per entry (the
            same device may be listed twice), each step's batch split among them and their
            gradients combined into one update.
        seed: seeds initialisation, dropout, augmentation and (unless fit is given one) shuffling.
        shares: with several devices, each one's share of every batch: weights, or "auto" (the
            default when the devices differ; equal shares otherwise): proportional to each
            device's measured throughput, re-measured as training goes on (clnet.balance).

    Example:
        >>> x = clnet.Input((3, 32, 32))
        >>> h = L.ReLU()(L.Conv2D(3, 16, 3, padding=1)(x))
        >>> h = L.ReLU()(L.Add()([h, L.Conv2D(16, 16, 3, padding=1)(h)]))
        >>> model = clnet.Model(x, L.Dense(16, 10)(L.Flatten()(L.GlobalAvgPool2D()(h))), seed=0)
        >>> replicated = clnet.Model(x, ..., device=[clnet.device(device=0), clnet.device(device=1)])
    """

    def __init__(self, inputs: SymbolicTensor | Network, outputs: SymbolicTensor | None = None,
                 device: Device | Sequence[Device] | None = None, seed: int = 0,
                 shares: Sequence[float] | str | None = None):
        if isinstance(inputs, Network):
            if outputs is not None:
                raise TypeError("give a Network alone, or an Input and the outputs made from it")
            network, input_shape = inputs, None
        else:
            network, input_shape = Network.from_symbolic(inputs, outputs), inputs.shape
        self.network = network
        self.world = world()  # the ranks of an MPI run (one without)
        self.devices = device_list(device if device is not None else local_devices())
        self.device = self.devices[0]  # the first replica's: state_dict, save and summary read it
        self.seed = int(seed)
        self.shares = share_weights(shares, len(self.devices))  # changed in place when balanced
        shares = default_shares(self.devices) if shares is None else shares
        self.balancer = None
        if isinstance(shares, str) and len(self.devices) > 1:
            self.shares[:] = first_guess(self.devices)
            self.balancer = Balancer(self.shares, [d.name for d in self.devices])
        first = Replica(self.device, network, self.seed)
        self.replicas = [first] + [Replica(d, network, self.seed, like=first) for d in self.devices[1:]]
        self._lag = Lag(self.replicas)  # replicas left behind by one that stepped alone
        self.metrics = SummedMetrics(self.replicas, self.world)  # loss, -, correct, count over every replica
        self.loss = self.optimizer = None
        self.input_shape = input_shape
        self.normalization = None  # per-channel (mean, std) applied to every input, set by fit(normalize=...)
        self.classes = None        # class names in output order, kept in model files
        self.history = None        # the History of the last (or current) fit
        self.seam_times = None     # a SeamTimes that replicated training steps add to (time_seam)
        self._warned_not_finite = False  # predict warns once about outputs that are not numbers
        self._runners = {}

    def __call__(self, inputs: SymbolicTensor, name: str | None = None) -> SymbolicTensor:
        """This model's network as a block of a larger functional graph: its nodes called in turn
        on `inputs` (a symbolic tensor), named "<name>.<node>" (so name="features" gives the keys
        "features.0.weight", ... of a torch.nn.Sequential inside a module), or without `name` by
        their own names (positional ones "0", "1", ... by the default naming). The block brings its
        layers, not its weights: the model built around it initialises them from its own seed.

        Example:
            >>> features = clnet.Sequential([L.Conv2D(3, 16, 3, padding=1), L.ReLU(), L.MaxPool2D(2)])
            >>> x = clnet.Input((3, 32, 32))
            >>> model = clnet.Model(x, L.Dense(4096, 10)(L.Flatten()(features(x, name="features"))))
        """
        if not isinstance(inputs, SymbolicTensor):
            raise TypeError(f"a model is called as a block on one symbolic tensor (clnet.Input(...) or a layer's "
                            f"result), not on {inputs!r}")
        values = {INPUT: inputs}
        for i, node in enumerate(self.network.nodes):
            local = None if node.name == str(i) and node.layer.name is None else node.name
            full = f"{name}.{node.name}" if name else local
            values[node.name] = node.layer([values[source] for source in node.inputs], name=full)
        return values[self.network.output]

    # ------------------------------------------------------------------ set-up
    def compile(self, loss: str | losses.Loss = "cross_entropy", optimizer: str | optim.Optimizer = "sgd",
                label_smoothing: float = 0.0) -> Model:
        """Choose the loss and the optimizer; the optimizer's state starts from zero.

        Args:
            loss: a name ("cross_entropy", "binary_cross_entropy", "mse", ...) or a clnet.losses.Loss.
            optimizer: a name ("sgd", "adam", "adamw") or a clnet.optim.Optimizer.
            label_smoothing: for cross_entropy, the share of the target spread over all classes,
                as torch.nn.CrossEntropyLoss(label_smoothing=...).

        Example:
            >>> model.compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9), label_smoothing=0.1)
        """
        self.loss = losses.get(loss, **({"label_smoothing": label_smoothing} if label_smoothing else {}))
        self.optimizer = optim.get(optimizer)
        for replica in self.replicas:
            replica.store.reset_optimizer_state()
        self._runners.clear()
        return self

    @property
    def param_store(self) -> ParamStore:
        """The first replica's store, which state_dict, save and checkpoints read: brought in line
        first when it was left behind by a replica that stepped alone."""
        store = self.replicas[0].store
        self._lag.current([store])
        return store

    def count_params(self) -> int:
        return self.param_store.count

    def _spec(self, x, crop=0, flip=False):
        mean, std = self.normalization or ((), ())
        return InputSpec(str(x.dtype), tuple(mean), tuple(std), crop, flip)

    def _compile(self, target, allocate=True, replica=None):
        replica = replica or self.replicas[0]
        return CompiledStep(replica.device, self.network, replica.store, self.loss, self.optimizer, replica.metrics,
                            self.seed, target, allocate)

    def _runner(self, batch_size, input_shape, training, target_dtype=None, spec=InputSpec()):
        """The runner of the step compiled for these, compiled on first use."""
        target = Target(int(batch_size), tuple(input_shape), training, target_dtype and np.dtype(target_dtype).str,
                        spec)
        if target not in self._runners:
            self._runners[target] = make_runner(self.replicas, self.shares, target,
                                                lambda replica, t: self._compile(t, replica=replica), self.optimizer,
                                                self.world, self._lag, self.balancer)
        self.input_shape = target.input_shape
        runner = self._runners[target]
        if isinstance(runner, ReplicatedRunner):
            runner.times = self.seam_times
        return runner

    def time_seam(self) -> SeamTimes:
        """Time every replicated training step from now on (several devices or MPI ranks): per
        step, the compute, the reduction of the gradients and how much of it the compute hid. A
        step that one replica takes alone (every row its) has no reduction and is not counted.

        Example:
            >>> times = model.time_seam()
            >>> model.fit(x, y, batch_size=1024, epochs=1)
            >>> times.per_step()   # {"steps": 58, "compute": 0.021, "reduction": 0.004, "hidden": 0.003}
        """
        self.seam_times = SeamTimes()
        return self.seam_times

    def _require_compiled(self, what):
        if self.loss is None:
            raise InputError(f"call model.compile(loss=..., optimizer=...) before {what}")

    def _prepare(self, x, y=None, devices=None):
        """Validated inputs and the loss's targets (y may come with x as a Dataset or ImageStream);
        x may be a pyopencl array on `devices` when they are given (`_inputs`)."""
        if isinstance(x, ImageStream):  # decoded as used: nothing to check here
            y = x.y if y is None else y
        else:
            if isinstance(x, Dataset) and y is None:
                x, y = x
            x = _inputs(x, devices=devices)
        if y is None:
            raise InputError("labels are missing: pass y, or a clnet.datasets.Dataset as x")
        _, out_shape = loss_input(self.network.stages(x.shape[1:], self.loss), x.shape[1:])
        if len(np.shape(y)) == 0 or len(y) != len(x):
            raise InputError(f"x has {len(x)} samples but y has {len(y) if np.ndim(y) else 0}: they must match")
        return x, self.loss.targets(y, len(x), out_shape)

    # ------------------------------------------------------------------ training
    def fit(self, x, y=None, epochs: int = 1, batch_size: int = 32, validation_split: float = 0.0,
            validation_data=None, shuffle: bool = True, verbose: int = 1, seed: int | None = None, stream=None,
            normalize=None, augment: str | dict | None = None, resident: bool | str = "auto", checkpoint=None,
            resume: bool = False, log=None, schedule: cb.Schedule | None = None,
            early_stopping: cb.EarlyStopping | None = None, callbacks: Sequence[cb.Callback] = ()) -> History:
        """Train; returns a History of loss/accuracy (and val_loss/val_accuracy) and lr per epoch.

        Args:
            x: images (N, C, H, W) or features (N, ...), uint8 (scaled to [0, 1]) or float, or a
                clnet.datasets.Dataset or ImageStream (then y comes with it; a stream is decoded
                batch by batch by its workers).
            y: integer labels (N,) (or one-hot), or float targets as the loss takes them.
            validation_split: hold out a seeded random fraction of (x, y), stratified by class;
                validation_data=(xv, yv) or a Dataset takes precedence.
            shuffle: a new seeded order every epoch (`seed`, default the model's).
            verbose: a progress bar and a line per epoch on `stream` (default stdout).
            normalize: True computes per-channel mean and std on the training images, or give
                (mean, std); the model keeps them and applies them in evaluate and predict too.
            augment: "crop" (random crops of the image padded by 4 pixels, "crop=N" for N), "flip"
                (random horizontal flips), or both "crop,flip"; on the device, training only. A
                stream's workers draw "random-resized-crop" and "flip" (default: the stream's own).
            resident: keep the training set in device memory ("auto": when it fits), so that
                batches are gathered there and only the epoch's sample order crosses the bus;
                otherwise each batch is uploaded while the previous one computes.
            checkpoint: a file written atomically after every epoch and on Ctrl-C; with
                resume=True an existing one is continued, so that an interrupted run, resumed with
                the same arguments, ends with the same weights (callbacks.Checkpoint).
            log: a .csv or .json file that gets every epoch's metrics, seconds and images/s.
            schedule: a learning-rate schedule (callbacks.StepLR, CosineLR, ReduceLROnPlateau,
                Schedule for a warm-up alone) applied before every step.
            early_stopping: a callbacks.EarlyStopping.
            callbacks: further clnet.callbacks.Callback objects (SaveBest, PlotCurves, your own).

        A loss (or weights) that becomes NaN or infinite stops training with a TrainingError, and
        the model gets back the weights and optimizer state of the last good epoch (callbacks.NaNGuard).
        The history so far is `model.history` while training.

        Example:
            >>> history = model.fit(x, y, epochs=10, batch_size=64, validation_split=0.1)
        """
        self._require_compiled("fit")
        batch_size, epochs = _count(batch_size, "batch_size", 1), _count(epochs, "epochs", 0)
        x, targets = self._prepare(x, y)
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence(
            [self.seed if seed is None else int(seed), 0x5EED])))
        rows = None  # the training rows of x when some are held out: indices, no copy of a memory-mapped set
        if validation_data is None and validation_split:
            if not 0 < validation_split < 1:
                raise InputError(f"validation_split must lie in (0, 1), got {validation_split}")
            val_idx, rows = _split(rng, targets, validation_split)
            validation_data = (x, targets, val_idx)
        if len(x if rows is None else rows) == 0:
            raise InputError("no training samples left (x is empty or validation_split took them all)")
        steering = [cb.Progress(), cb.NaNGuard()]
        steering += [cb.LearningRateScheduler(schedule)] if schedule is not None else []
        steering += [early_stopping] if early_stopping is not None else []
        reporting = [cb.MetricsLog(log)] if log is not None else []
        reporting += [cb.Checkpoint(checkpoint, resume)] if checkpoint is not None else []
        trainer = Trainer(self, steering + list(callbacks) + reporting, validation_data, verbose, stream)
        if normalize is True and isinstance(x, ImageStream):  # a seeded sample of the images, as evaluated
            self.normalization = x.statistics(self.seed, rows)
        elif normalize is True:  # a resumed run takes the checkpoint's instead
            self.normalization = channel_statistics(x.reshape(len(x), *image_dims(x.shape[1:])), rows)
        elif normalize:
            self.normalization = tuple(tuple(float(v) for v in np.ravel(part)) for part in normalize)
        return trainer.fit(x, targets, epochs, batch_size, rng, shuffle, augment, resident, rows)

    def train_on_batch(self, x, y) -> float:
        """One optimizer step on (x, y) as one batch; returns that batch's loss."""
        self._require_compiled("train_on_batch")
        if isinstance(x, ImageStream):
            raise InputError("train_on_batch takes one batch of arrays, not an ImageStream: pass the stream to fit")
        x, targets = self._prepare(x, y)
        runner = self._runner(len(x), x.shape[1:], True, targets.dtype, self._spec(x))
        self.metrics.fill(0)
        runner.train(x, targets)
        return self._read_metrics(targets)["loss"]

    @property
    def _rank_part(self):
        """The rows [a, b) of a global batch of n that this rank reads: `rank_part` of the model's world."""
        return partial(rank_part, world=self.world)

    def _rank_batch(self, n) -> dict:
        """The runner's keywords for a host batch that is this rank's part of a global batch of n
        rows (`rank_part`): under MPI, where the runner is a ReplicatedRunner; none in one process,
        where the part is the whole batch."""
        return {"batch": n} if self.world.size > 1 else {}

    def _read_metrics(self, targets, local=False):
        """Loss (and accuracy) of the metrics summed so far: over every rank (a collective under
        MPI), or with `local` over this process's replicas alone."""
        loss_sum, _, correct, count = self.metrics.download() if local else self.metrics.total()
        logs = {"loss": float(loss_sum / max(count, 1))}
        if self.loss.has_accuracy(targets):
            logs["accuracy"] = float(correct / max(count, 1))
        return logs

    # ------------------------------------------------------------------ inference
    def evaluate(self, x, y=None, batch_size: int = 256) -> dict:
        """{"loss": mean loss, "accuracy": fraction correct} over (x, y) or a Dataset; x as for
        predict (a pyopencl array included), y on the host."""
        self._require_compiled("evaluate")
        return self._evaluate(*self._prepare(x, y, self.devices), batch_size=batch_size)

    def _evaluate(self, x, targets, rows=None, batch_size=256):
        """evaluate on validated inputs and targets, or on their `rows` (batches gathered from x)."""
        n = len(x if rows is None else rows)
        if n == 0:
            raise InputError("evaluate needs at least one sample")
        batch_size = min(_count(batch_size, "batch_size", 1), n)  # no plan (nor indices) beyond the data
        runner = self._runner(batch_size, x.shape[1:], False, targets.dtype, self._spec(x))
        self.metrics.fill(0)
        for images, used, size in host_batches(x, rows, batch_size, self._rank_part):
            runner.infer(images, targets[used], want_output=False, **self._rank_batch(size))
        _report_skipped(x)
        logs = self._read_metrics(targets)
        runner.sync()
        return logs

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Model outputs as numpy: class probabilities for cross-entropy (softmax) and binary
        cross-entropy (sigmoid), the raw outputs otherwise.

        Args:
            x: as for fit (uint8 images are scaled, the model's normalisation applies; a stream's
                unreadable images give the outputs of their replacements, and a warning); or a
                pyopencl.array.Array (float32 or uint8, C-contiguous) in the model's device's
                context (`clnet.device(context=...)` or `queue=`), read where it lies: no copy
                through the host (its values are not checked for NaN).
            batch_size: samples per step.

        Example:
            >>> probabilities = model.predict(x_test)
            >>> dev = clnet.device(queue=queue); model = clnet.load("m.clnet", device=dev)
            >>> model.predict(pyopencl.array.to_device(queue, x_test))    # the same probabilities
        """
        x = x if isinstance(x, ImageStream) else _inputs(x, devices=self.devices)
        if len(x) == 0:
            raise InputError("predict needs at least one sample")
        batch_size = min(_count(batch_size, "batch_size", 1), len(x))  # no plan (nor indices) beyond the data
        runner = self._runner(batch_size, x.shape[1:], False, spec=self._spec(x))
        feed = host_batches(x, None, batch_size, self._rank_part)
        out = [runner.infer(images, **self._rank_batch(size)) for images, _, size in feed]  # every rank's rows
        _report_skipped(x)
        runner.sync()
        out = np.concatenate(out).reshape(len(x), *runner.output_shape)
        if not self._warned_not_finite and not np.isfinite(out).all():  # the inputs are finite: the weights are not
            self._warned_not_finite = True
            warnings.warn("predict: the model's outputs are NaN or infinite, so its weights are not finite "
                          "(from a fit that diverged?): load or train good weights", RuntimeWarning, stacklevel=2)
        return out

    def check_fits(self, input_shape: Sequence[int] | None = None, batch_size: int = 1) -> None:
        """Plan an inference step for `batch_size` inputs of `input_shape` (default: the model's)
        without allocating it, and raise an OutOfDeviceMemoryError if it cannot fit the device.
        Commands call it before decoding data to the size a model file asks for.

        Args:
            input_shape: the per-sample shape, such as (3, 224, 224).
            batch_size: the rows of the step (1: the least any step needs).

        Example:
            >>> clnet.load("big.clnet").check_fits(batch_size=64)
        """
        input_shape = tuple(input_shape or self.input_shape or ())
        if not input_shape:
            raise InputError("check_fits needs the input shape: model.check_fits(input_shape=(1, 28, 28))")
        # uint8 inputs: the least a batch takes in its staging slots, so that nothing that fits is refused
        target = Target(_count(batch_size, "batch_size", 1), input_shape, False, spec=InputSpec("uint8"))
        for replica in self.replicas:
            self._compile(target, allocate=False, replica=replica).check_fits(replica.store)

    # ------------------------------------------------------------------ weights
    def state_dict(self) -> dict:
        """{"0.weight": array, ...}: float32 numpy arrays in PyTorch's layouts and keys (of the first
        replica: every replica holds the same)."""
        return self.param_store.state_dict()

    def gradients(self) -> dict:
        """The gradients of the last training step, keyed like state_dict (computed before the update)."""
        return self.param_store.gradients()

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Load arrays (numpy, or anything np.asarray takes, such as CPU torch tensors) into every
        replica, as torch.nn.Module.load_state_dict does.

        Args:
            state: {key: array} under the model's state_dict keys (PyTorch's names and layouts).
            strict: every key of the model must be in `state` and no other (else an InputError
                naming them, and nothing is loaded); with False the keys both have are loaded.

        Returns:
            IncompatibleKeys(missing_keys, unexpected_keys): the model's keys that `state` lacks,
            and the keys of `state` the model does not have. A shape that differs is a ShapeError
            naming the key, strict or not.

        Example:
            >>> result = model.load_state_dict(torchvision.models.resnet18().state_dict(), strict=False)
            >>> result.missing_keys, result.unexpected_keys
        """
        checked, keys = self.replicas[0].store.check_state_dict(state, strict)  # once: the replicas are alike
        for replica in self.replicas:
            replica.store.write_checked(checked)
        return keys

    def save_weights(self, path) -> None:
        """Write the state_dict to a weights file, atomically, in the format of its suffix:
        `.safetensors` (the `safetensors` extra), `.pt` / `.pth` (PyTorch's, needs torch) or
        `.npz`. PyTorch's keys and layouts, so `torch_module.load_state_dict(safetensors.torch.
        load_file(path))` loads it (BatchNorm's num_batches_tracked is int64, as torch's).

        Args:
            path: the file to write; its suffix chooses the format.

        Example:
            >>> model.save_weights("resnet18.safetensors")
        """
        state = self.state_dict()
        if self.world.lead:  # under MPI every rank holds the same weights: rank 0 writes them
            weights_files.write_weights(state, path)

    def load_weights(self, path, strict: bool = True) -> IncompatibleKeys:
        """Load a weights file (`.safetensors`, `.pt` / `.pth`, `.npz`, or a `.clnet` model file's
        weights) into the model, as `load_state_dict(state, strict)`. A `.pt` file is read with
        `torch.load(weights_only=True)`: one that pickles a whole module or other code is refused.

        Args:
            path: the weights file; its suffix chooses the format.
            strict: as for load_state_dict.

        Example:
            >>> model = clnet.models.resnet18(classes=10)
            >>> model.load_weights("resnet18.safetensors")    # saved by torch's safetensors.torch.save_file
        """
        return self.load_state_dict(weights_files.read_weights(path), strict)

    def _broadcast(self) -> None:
        """Rank 0's parameters, buffers, optimizer state and step count on every rank (under MPI):
        a fit starts from the same state everywhere, also after a resume."""
        if self.world.size == 1:
            return
        flats, state, steps = self.param_store.flat_state()
        flats = {name: self.world.broadcast(values, f"the {name}") for name, values in flats.items()}
        state = [self.world.broadcast(values, "the optimizer state") for values in state]
        steps = self.world.share(steps, "the step count")
        for replica in self.replicas:
            replica.store.load_flat_state(flats, state, steps)

    def optimizer_state_dict(self) -> dict:
        """Everything the optimizer needs to continue: {"class", "config" (hyper-parameters),
        "steps" (taken), "state": [float32 arrays over the flat parameters]}."""
        return {"class": type(self.optimizer).__name__, "config": self.optimizer.config(),
                "steps": self.param_store.steps, "state": [t.download() for t in self.param_store.optimizer_state]}

    def load_optimizer_state_dict(self, state: dict) -> None:
        """Restore `optimizer_state_dict()` of the same optimizer class: hyper-parameters, steps
        and state."""
        if state["class"] != type(self.optimizer).__name__:
            raise ValueError(f"a {state['class']} state cannot be loaded into {type(self.optimizer).__name__}")
        self._restore_optimizer(type(self.optimizer)(**state["config"]), state["state"], state["steps"])

    def _restore_optimizer(self, optimizer, arrays, steps, flats=None):
        """The hyper-parameters of `optimizer` (of this model's optimizer's class), and its state and
        step count, in every replica; with `flats` ({"params", "buffers"}: flat arrays of a store of
        this model, `ParamStore.flat_state`) the weights and buffers too. Steps are compiled again,
        as the launches hold the hyper-parameters."""
        vars(self.optimizer).update(vars(optimizer))
        for replica in self.replicas:
            replica.store.load_flat_state(flats or {}, arrays, steps)
        self._runners.clear()

    def save(self, path, classes: Sequence[str] | None = None) -> None:
        """Write the model to one file (conventionally `*.clnet`), atomically: the architecture, the
        weights, the seed, the loss, the input shape, the normalisation and the class names
        (`classes`, in output order; default `model.classes`). `clnet.load(path)` reads it back;
        clnet/io.py documents the format."""
        if self.world.lead:  # under MPI every rank holds the same model: rank 0 writes it
            io.save(self, path, classes=classes)

    def restore(self, saved: io.SavedCheckpoint, path) -> None:
        """Load a checkpoint (`io.read_checkpoint`'s SavedCheckpoint read from `path`) into this
        model: weights, normalisation, and the optimizer's hyper-parameters, state and steps."""
        saved_optimizer = saved.optimizer and saved.optimizer.optimizer
        if saved_optimizer is None:
            raise ModelFileError(path, "holds no optimizer state (it was written from a model not compiled): "
                                       "it cannot be resumed")
        if type(saved_optimizer) is not type(self.optimizer):
            raise InputError(f"{path} was written by a {type(saved_optimizer).__name__} run: compile "
                             f"with the same optimizer to resume it")
        try:
            self.load_state_dict(saved.model.weights)
        except (InputError, ShapeError) as exc:
            raise ModelFileError(path, f"the weights do not fit this model (a checkpoint of another run?): "
                                       f"{exc}") from None
        _load_optimizer(self, saved.optimizer, path)
        self.normalization = saved.model.normalization

    # ------------------------------------------------------------------ description
    def summary(self, input_shape: tuple | None = None, batch_size: int = 32, stream=None) -> str:
        """Print a table of nodes: output shape, parameters, forward FLOPs and activation memory per
        sample; then the totals and the device memory planned for `batch_size` (a training plan
        once compiled, else an inference plan), planned without allocating it, so that a batch too
        large for the device is reported too. Returns the text."""
        input_shape = tuple(input_shape or self.input_shape or ())
        if not input_shape:
            raise InputError("summary needs the input shape: model.summary(input_shape=(1, 28, 28)), "
                             "or call it after fit/predict")
        shapes = self.network.shapes(input_shape)  # checks shapes, naming the node that fails
        rows, flops, chain = [], 0, self.network.is_sequential
        for node in self.network.nodes:
            given, out = [shapes[name] for name in node.inputs], shapes[node.name]
            params = sum(prod(s) for s in node.layer.param_shapes().values())
            node_flops = node.layer.flops(*given)
            flops += node_flops
            reads = "" if chain else f" <- {', '.join(node.inputs)}"
            rows.append((f"{node.name}: {node.layer!r}{reads}", str(out), f"{params:,}", f"{node_flops:,}",
                         format_bytes(prod(out) * 4)))
        header = ("Layer", "Output shape", "Params", "FLOPs", "Activations")
        widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
        line = lambda r: "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
        rule = "-" * len(line(header))
        training = self.loss is not None
        # the first replica's rows (the batch on one device)
        shard = capacity(int(batch_size), self.shares, self.world, self.balancer is not None)[0]
        target = Target(shard, input_shape, training,
                        np.dtype(self.loss.target_dtype).str if training else None)
        arena = 4 * self._compile(target, allocate=False).plan.place()  # planned, not allocated
        store = self.param_store
        resident = store.params.nbytes * (2 + (len(store.optimizer_state) if training else 0)) + store.buffers.nbytes
        text = "\n".join([
            line(header), rule, *map(line, rows), rule,
            f"Input {input_shape}: {self.count_params():,} parameters, {flops:,} forward FLOPs per sample",
            f"Planned device memory for {'training' if training else 'inference'} at batch size {batch_size}: "
            f"{format_bytes(arena + resident)} ({format_bytes(arena)} activations and "
            f"gradients, {format_bytes(resident)} parameters, gradients and optimizer state) on {self.device.name}"
            + (f" (the first of {len(self.replicas)} replicas, {shard} rows of each batch)" if len(self.replicas) > 1
               else "")])
        print(text, file=stream or sys.stdout)
        return text

    def __repr__(self):
        return f"Model({self.network!r})"


class Sequential(Model):
    """A stack of layers, each reading the one before; state_dict keys and layouts are those of
    the same torch.nn.Sequential ("0.weight", ...).

    Args:
        layers: clnet layers, in order.
        device: a clnet.Device (default: the best device), or a list of them (replicas, see Model).
        seed, shares: as for Model.

    Example:
        >>> model = clnet.Sequential([L.Flatten(), L.Dense(784, 128), L.ReLU(), L.Dense(128, 10)])
        >>> model.compile("cross_entropy", "adam").fit(x, y, epochs=3)
    """

    def __init__(self, layers: Sequence[Layer], device: Device | Sequence[Device] | None = None, seed: int = 0,
                 shares: Sequence[float] | str | None = None):
        super().__init__(Network.chain(layers), device=device, seed=seed, shares=shares)

    @property
    def layers(self) -> list:
        return self.network.layers

    def __repr__(self):
        return f"Sequential([{', '.join(map(repr, self.layers))}])"


def _load_optimizer(model, saved, path):
    """A checkpoint's optimizer (io.SavedOptimizer) into a model compiled with the same class."""
    try:
        model._restore_optimizer(saved.optimizer, saved.state, saved.steps)
    except ShapeError as exc:
        raise ModelFileError(path, f"optimizer.npz: {exc}") from None


def _build(saved, path, device):
    """The model of an io.SavedModel on `device`, compiled with its loss and a default SGD."""
    network = saved.network
    model = (Sequential(network.layers, device=device, seed=saved.seed) if network.is_sequential
             else Model(network, device=device, seed=saved.seed))
    try:
        model.load_state_dict(saved.weights)
    except (InputError, ShapeError) as exc:
        raise ModelFileError(path, f"the weights do not fit the architecture: {exc}") from None
    model.input_shape, model.normalization, model.classes = saved.input_shape, saved.normalization, saved.classes
    if saved.loss:
        model.compile(saved.loss, "sgd")
    return model


def load(path, device: Device | Sequence[Device] | None = None) -> Model:
    """The model saved at `path` (a model file or a checkpoint), on `device` (default: the best
    device; any device works, whatever made the file; a list of devices makes replicas). Compiled
    with its saved loss and a default SGD optimizer (call compile again to train otherwise); not
    compiled if it was saved uncompiled. Class names are in `model.classes`.

    Example:
        >>> model = clnet.load("lenet.clnet", device=clnet.device(platform="pocl"))
    """
    return _build(io.read_model(path), path, device)


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` returns: the model (compiled with its loss and its optimizer, state
    and step count restored), the epoch and step reached, and the training loop's `state`."""
    model: Model
    epoch: int
    step: int
    state: object


def load_checkpoint(path, device: Device | Sequence[Device] | None = None) -> LoadedCheckpoint:
    """A `LoadedCheckpoint` (model, epoch, step, state) read from `path`, on `device` (default: the best
    device; a list of devices makes replicas). The model is compiled with its loss and optimizer,
    the optimizer's state and step count restored. To continue a fit, pass `checkpoint=path,
    resume=True` to `fit` instead: it loads into the model being trained."""
    saved = io.read_checkpoint(path)
    model = _build(saved.model, path, device)
    if saved.optimizer is not None:
        model.compile(model.loss, saved.optimizer.optimizer)
        _load_optimizer(model, saved.optimizer, path)
    return LoadedCheckpoint(model, saved.epoch, saved.step, saved.state)
