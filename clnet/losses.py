"""Losses, each one fused kernel with its output link (softmax, sigmoid or none).

A model may end on logits or on the link layer itself (Softmax before cross_entropy, Sigmoid before
binary_cross_entropy): the graph then hands the loss the link's input, which is exact and stable.
Losses average over the batch (and over outputs for BCE and MSE), as PyTorch's "mean" reduction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .errors import InputError
from .layers import Layer, Sigmoid, Softmax

if TYPE_CHECKING:
    from .plan import Launch, Plan, Value
    from .tensor import DeviceTensor

FILE = "loss.cl"
GRAD, PROBS, METRICS = 1, 2, 4  # flags of kernels_cl/loss.cl


def _loss_work_group(device):
    size = 1
    while size * 2 <= min(256, device.max_work_group_size):
        size *= 2
    return size


class Loss:
    """Base of the losses: each is one kernel of kernels_cl/loss.cl that computes, for the model's
    output rows, the loss and accuracy (added to the metrics), its gradient and/or the predictions.

    A subclass sets `name`, `kernel_name` (its kernel), `link_layer` (the output layer the kernel
    applies itself, or None) and `target_dtype` (what its targets are, for compiling the training
    step), and implements `targets`; it overrides `has_accuracy`, `grad_scale` and `defines` where
    the defaults do not fit. `record` launches the kernel with the arguments all losses share.
    """

    name = ""
    kernel_name = ""
    link_layer: type[Layer] | None = None      # layer type folded into the loss when it ends the model
    target_dtype: DTypeLike = np.float32

    def targets(self, y: ArrayLike, n: int, out_shape: tuple[int, ...]) -> np.ndarray:
        """Validated targets for n samples as the kernel reads them, or an InputError saying what to fix.
        `out_shape` is the model's output shape per sample."""
        raise NotImplementedError

    def has_accuracy(self, targets: np.ndarray) -> bool:
        """Whether an accuracy is reported for these targets (those `targets` returned)."""
        return True

    def grad_scale(self, n_valid: int, cols: int) -> float:
        """The factor of the gradient for `n_valid` rows of `cols` outputs: the mean over both by default."""
        return 1.0 / (n_valid * cols)

    def defines(self, targets_dtype: DTypeLike) -> dict[str, Any]:
        """Preprocessor definitions the kernel is built with for targets of `targets_dtype`."""
        return {}

    def record(self, plan: Plan, z: Value, targets: Value, grad: Value | None, probs: Value | None,
               metrics: DeviceTensor, flags: int) -> Launch:
        """Record the loss launch for logits z (rows, cols); returns it. Its valid rows follow the
        plan's dynamic "n_valid"; its argument "flags" holds the flags."""
        rows, cols = z.shape
        wg = _loss_work_group(plan.device)
        kernel = plan.kernel(FILE, self.kernel_name, LOSS_WG=wg, **self.defines(targets.dtype))
        launch = plan.launch(kernel, (wg,), (wg,), rows, cols, rows, flags, self.grad_scale(rows, cols),
                             z, grad if grad is not None else z, probs if probs is not None else z,
                             metrics, targets)
        plan.bind_dynamic("n_valid", launch, "n_valid")
        plan.bind_dynamic("n_valid", launch, "scale", lambda n: self.grad_scale(n, cols))
        return launch

    def __repr__(self):
        return self.name


def _finite(y, what="y"):
    if not np.all(np.isfinite(y)):
        bad = np.argwhere(~np.isfinite(y))[0]
        raise InputError(f"{what} contains NaN or infinity (first at index {tuple(int(i) for i in bad)}): "
                         "clean or impute the data before training")


def _float_targets(y, n, out_shape, requirement):
    """float32 targets of shape (n, *out_shape); (n,) is accepted for a single output.
    `requirement` is the error message, with {} for the expected shape."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise InputError(f"targets must be numbers, got dtype {y.dtype}")
    if y.shape == (n,) and out_shape == (1,):
        y = y.reshape(n, 1)
    if y.shape != (n, *out_shape):
        raise InputError(requirement.format((n, *out_shape)) + f", got {y.shape}")
    _finite(y, "targets")
    return y.astype(np.float32)


def _integer_labels(y, n, classes):
    """Integer class labels from int labels (n,) or one-hot rows (n, classes)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape == (n, classes) and classes > 1:
        _finite(y)
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise InputError("2-D labels must be one-hot rows (a single 1 per row); "
                             "pass integer class labels of shape (n,) otherwise")
        return y.argmax(axis=1).astype(np.int32)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"labels must have shape ({n},) (one class index per sample) "
                         f"or ({n}, {classes}) one-hot; got {y.shape}")
    if y.dtype.kind == "f":
        _finite(y, "labels")
        if not np.all(y == np.round(y)):
            raise InputError("labels must be whole class indices, got fractional values")
    elif y.dtype.kind not in "iub":
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        bad = int(np.argmax((y < 0) | (y >= classes)))
        raise InputError(f"label {y[bad]} at index {bad} is out of range: the model has {classes} "
                         f"outputs, so labels must lie in 0..{classes - 1}")
    return y.astype(np.int32)


class CrossEntropy(Loss):
    """Softmax cross-entropy on integer labels (one-hot is built on the device), like
    torch.nn.CrossEntropyLoss. Predictions are the softmax probabilities.

    Shape:
        output: (n, classes), classes >= 2, logits (or a final Softmax, folded into the loss).
        targets: (n,) or (n, 1) class indices in 0..classes-1 (integers, or floats with whole
            values), or (n, classes) one-hot rows. Accuracy: the argmax of the output against the label.

    Args:
        label_smoothing: e in [0, 1): the target puts 1 - e on the label and spreads e over all
            classes (e / classes each), as torch.nn.CrossEntropyLoss(label_smoothing=e); the loss
            reported is against that target, as torch's.

    Example:
        >>> model.compile(CrossEntropy(), "adam").fit(x, labels)        # or compile("cross_entropy")
        >>> model.compile("cross_entropy", "sgd", label_smoothing=0.1)
    """
    name = "cross_entropy"
    kernel_name = "softmax_cross_entropy"
    link_layer = Softmax
    target_dtype = np.int32

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def defines(self, targets_dtype: DTypeLike) -> dict[str, Any]:
        return {"LABEL_SMOOTHING": f"{self.label_smoothing!r}f" if self.label_smoothing else None}

    def __repr__(self):
        return f"{self.name}(label_smoothing={self.label_smoothing})" if self.label_smoothing else self.name

    def targets(self, y: ArrayLike, n: int, out_shape: tuple[int, ...]) -> np.ndarray:
        if len(out_shape) != 1 or out_shape[0] < 2:
            raise InputError(f"cross_entropy needs a model output of (classes,) with at least 2 classes, "
                             f"got {out_shape}: use binary_cross_entropy for one output")
        return _integer_labels(y, n, out_shape[0])

    def grad_scale(self, n_valid: int, cols: int) -> float:
        return 1.0 / n_valid


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy of sigmoid outputs against targets in [0, 1], like torch.nn.BCELoss
    after a Sigmoid (or BCEWithLogitsLoss on logits). Predictions are the probabilities.

    Shape:
        output: (n, *out_shape), logits (or a final Sigmoid, folded into the loss), each output an
            independent probability.
        targets: floats in [0, 1] of the output's shape (n, *out_shape); (n,) for a single output.
            Accuracy: the share of outputs whose probability is on the target's side of 0.5.

    Example:
        >>> model = clnet.Sequential([L.Flatten(), L.Dense(784, 1)])
        >>> model.compile("binary_cross_entropy", "adam").fit(x, (labels == 3).astype("float32"))
    """
    name = "binary_cross_entropy"
    kernel_name = "binary_cross_entropy"
    link_layer = Sigmoid

    def targets(self, y: ArrayLike, n: int, out_shape: tuple[int, ...]) -> np.ndarray:
        y = _float_targets(y, n, out_shape, "binary_cross_entropy targets must have shape {}, like the model output")
        if y.size and (y.min() < 0 or y.max() > 1):
            raise InputError("binary_cross_entropy targets must lie in [0, 1] (0 or 1 for classes)")
        return y


class MeanSquaredError(Loss):
    """Mean squared error against float targets of the output's shape, or integer labels, which are
    one-hot encoded on the device. Accuracy is reported for integer labels only.
    Predictions are the outputs themselves (no link), like torch.nn.MSELoss.

    Shape:
        output: (n, *out_shape).
        targets: floats of the output's shape (n, *out_shape), (n,) for a single output; or, for an
            output (n, classes) with classes >= 2, integer labels (n,) or (n, 1), compared with
            one-hot rows (accuracy: the argmax of the output against the label).

    Example:
        >>> model.compile("mse", "sgd").fit(x, y)      # y: float32, (n, outputs)
    """
    name = "mean_squared_error"
    kernel_name = "mean_squared_error"

    def targets(self, y: ArrayLike, n: int, out_shape: tuple[int, ...]) -> np.ndarray:
        y = np.asarray(y)
        if y.dtype.kind in "iu" and len(out_shape) == 1 and y.shape in ((n,), (n, 1)) and out_shape[0] > 1:
            return _integer_labels(y, n, out_shape[0])
        return _float_targets(y, n, out_shape, "mean_squared_error targets must have the model output's "
                                               "shape {} or be integer labels")

    def has_accuracy(self, targets: np.ndarray) -> bool:
        return targets.dtype == np.int32

    def defines(self, targets_dtype: DTypeLike) -> dict[str, Any]:
        return {"INT_LABELS": np.dtype(targets_dtype) == np.int32}


LOSSES = {
    "cross_entropy": CrossEntropy, "categorical_crossentropy": CrossEntropy,
    "sparse_categorical_crossentropy": CrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy, "binary_crossentropy": BinaryCrossEntropy, "bce": BinaryCrossEntropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
}


def get(loss: str | Loss, **options) -> Loss:
    """A loss from its name, or the one given.

    Args:
        loss: a key of LOSSES, any case ("cross_entropy" and the Keras names "categorical_crossentropy"
            and "sparse_categorical_crossentropy"; "binary_cross_entropy", "binary_crossentropy",
            "bce"; "mean_squared_error", "mse"), or a Loss, returned as it is.
        options: the named loss's constructor arguments (label_smoothing= for cross_entropy).

    Raises:
        ValueError: `loss` is neither a known name nor a Loss, or takes no such option.

    Example:
        >>> get("bce")
        binary_cross_entropy
    """
    if isinstance(loss, Loss) and not options:
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        try:
            return LOSSES[loss.lower()](**options)
        except TypeError:
            raise ValueError(f"the {loss} loss takes no {', '.join(options)}") from None
    if isinstance(loss, Loss):
        raise ValueError(f"give {', '.join(options)} to the Loss itself, such as CrossEntropy(label_smoothing=0.1)")
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(sorted(set(LOSSES)))} or pass a clnet Loss")
