"""Classification metrics from predicted probabilities (N, C) and integer labels (N,), numpy only.

Ties: a sample's classes are ranked by probability, highest first, and equal probabilities by
class index, lowest first (as numpy's argmax picks the first maximum). So top-1 accuracy equals
accuracy, and top-k counts a sample as correct when its true class is among the first k.

Precision of a class that is never predicted, and recall of a class that never occurs, are 0
(their denominators are 0), as scikit-learn's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def _check(probs, labels):
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (samples, classes), got shape {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(f"labels must be ({len(probs)},) to match the probabilities, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
    return probs, labels.astype(np.int64)


def predictions(probs: ArrayLike) -> np.ndarray:
    """The predicted class of each sample: the most probable, the lowest index among equals."""
    return np.argmax(np.asarray(probs), axis=1)


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples whose predicted class is the label (0.0 for no samples)."""
    probs, labels = _check(probs, labels)
    return float(np.mean(predictions(probs) == labels)) if len(labels) else 0.0


def rank_of_label(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """0-based rank of each sample's true class: the classes more probable than it, plus the
    equally probable classes with a lower index."""
    probs, labels = _check(probs, labels)
    true = probs[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(probs.shape[1])[None, :] < labels[:, None]
    return np.sum((probs > true) | ((probs == true) & lower_index), axis=1)


def top_k_accuracy(probs: ArrayLike, labels: ArrayLike, k: int = 5) -> float:
    """Fraction of samples whose true class is among the k most probable (ties as in the module doc)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranks = rank_of_label(probs, labels)
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def top_k(probs: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities), each (N, min(k, C)): the k most probable classes of each sample,
    most probable first, ties by lowest index."""
    probs = np.asarray(probs)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def confusion_matrix(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    probs, labels = _check(probs, labels)
    c = probs.shape[1]
    return np.bincount(labels * c + predictions(probs), minlength=c * c).reshape(c, c)


def precision_recall(matrix: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) per class, float64 arrays, from a confusion matrix (rows = true class).
    A zero denominator gives 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    return precision, recall


def report(probs: ArrayLike, labels: ArrayLike, k: int = 5, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric as a JSON-ready dict: accuracy, top_k, top_k_accuracy, confusion_matrix (lists),
    precision, recall and support per class, classes (names, or indices as strings).

    Example:
        >>> probs = model.predict(x_test)
        >>> r = report(probs, y_test, k=3, classes=test.classes)
        >>> r["accuracy"], r["top_k_accuracy"]
        >>> print(format_confusion_matrix(np.array(r["confusion_matrix"]), r["classes"]))
    """
    probs, labels = _check(probs, labels)
    matrix = confusion_matrix(probs, labels)
    precision, recall = precision_recall(matrix)
    return {"accuracy": accuracy(probs, labels), "top_k": int(k), "top_k_accuracy": top_k_accuracy(probs, labels, k),
            "classes": _names(classes, probs.shape[1]), "confusion_matrix": matrix.tolist(),
            "precision": precision.tolist(), "recall": recall.tolist(), "support": matrix.sum(axis=1).tolist()}


def _names(classes, count):
    if classes is None:
        return [str(i) for i in range(count)]
    if len(classes) != count:
        raise ValueError(f"{len(classes)} class names for {count} classes")
    return [str(c) for c in classes]


def format_confusion_matrix(matrix: ArrayLike, classes: Sequence[str] | None = None, max_name: int = 16) -> str:
    """A text table: one row per true class (its counts per predicted class, then its precision,
    recall and support), headed by the predicted classes."""
    matrix = np.asarray(matrix)
    names = [n if len(n) <= max_name else n[:max_name - 1] + "~" for n in _names(classes, len(matrix))]
    precision, recall = precision_recall(matrix)
    support = matrix.sum(axis=1)
    corner = "true \\ predicted"
    name_w = max([len(corner)] + [len(n) for n in names])
    cell_w = max([len(n) for n in names] + [len(str(int(matrix.max()))) if matrix.size else 1])
    header = f"{corner:<{name_w}} " + " ".join(f"{n:>{cell_w}}" for n in names)
    header += f"  {'precision':>9} {'recall':>6} {'support':>7}"
    lines = [header]
    for i, name in enumerate(names):
        counts = " ".join(f"{int(v):>{cell_w}}" for v in matrix[i])
        lines.append(f"{name:<{name_w}} {counts}  {precision[i]:>9.3f} {recall[i]:>6.3f} {int(support[i]):>7}")
    return "\n".join(lines)
