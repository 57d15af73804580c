"""clnet.metrics against values worked out by hand (no device needed)."""

import numpy as np
import pytest

from clnet import metrics

# 5 samples, 4 classes; class 3 is never predicted and never the label, class 2 is never predicted.
PROBS = np.array([[0.6, 0.2, 0.1, 0.1],    # true 0, predicted 0
                  [0.3, 0.5, 0.1, 0.1],    # true 1, predicted 1
                  [0.5, 0.3, 0.2, 0.0],    # true 2, predicted 0 (2 ranks third)
                  [0.1, 0.7, 0.15, 0.05],  # true 0, predicted 1 (0 ranks third)
                  [0.2, 0.6, 0.1, 0.1]])   # true 1, predicted 1
LABELS = np.array([0, 1, 2, 0, 1])


def test_accuracy_and_confusion_matrix():
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(3 / 5)
    expected = np.array([[1, 1, 0, 0],
                         [0, 2, 0, 0],
                         [1, 0, 0, 0],
                         [0, 0, 0, 0]])
    matrix = metrics.confusion_matrix(PROBS, LABELS)
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.sum() == len(LABELS)


def test_precision_and_recall_with_classes_never_predicted():
    precision, recall = metrics.precision_recall(metrics.confusion_matrix(PROBS, LABELS))
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3, 0.0, 0.0])  # classes 2, 3 never predicted: 0
    np.testing.assert_allclose(recall, [1 / 2, 1.0, 0.0, 0.0])       # class 3 never occurs: 0


def test_top_k_accuracy():
    assert metrics.top_k_accuracy(PROBS, LABELS, k=1) == pytest.approx(3 / 5)
    assert metrics.top_k_accuracy(PROBS, LABELS, k=2) == pytest.approx(3 / 5)
    assert metrics.top_k_accuracy(PROBS, LABELS, k=3) == pytest.approx(1.0)
    assert metrics.top_k_accuracy(PROBS, LABELS, k=10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.top_k_accuracy(PROBS, LABELS, k=0)


def test_ties_rank_the_lower_class_index_first():
    probs = np.array([[0.25, 0.25, 0.25, 0.25],   # all equal
                      [0.4, 0.4, 0.1, 0.1]])
    np.testing.assert_array_equal(metrics.rank_of_label(probs, [2, 1]), [2, 1])
    assert metrics.top_k_accuracy(probs, [2, 1], k=1) == 0.0
    assert metrics.top_k_accuracy(probs, [2, 1], k=2) == 0.5   # class 2 ranks third among four ties
    assert metrics.top_k_accuracy(probs, [2, 1], k=3) == 1.0
    # top-1 agrees with argmax, which picks the first maximum
    assert metrics.accuracy(probs, [0, 0]) == 1.0 == metrics.top_k_accuracy(probs, [0, 0], k=1)
    indices, values = metrics.top_k(probs, 3)
    np.testing.assert_array_equal(indices, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_allclose(values, [[0.25, 0.25, 0.25], [0.4, 0.4, 0.1]])


def test_report_and_table():
    report = metrics.report(PROBS, LABELS, k=3, classes=["cat", "dog", "bird", "a very long class name"])
    assert report["accuracy"] == pytest.approx(0.6) and report["top_k_accuracy"] == pytest.approx(1.0)
    assert report["support"] == [2, 2, 1, 0]
    table = metrics.format_confusion_matrix(report["confusion_matrix"], report["classes"])
    lines = table.splitlines()
    assert len(lines) == 5 and "precision" in lines[0] and "recall" in lines[0]
    assert "a very long cla~" in lines[0]
    assert lines[1].split() == ["cat", "1", "1", "0", "0", "0.500", "0.500", "2"]
    assert lines[2].split() == ["dog", "0", "2", "0", "0", "0.667", "1.000", "2"]
    assert metrics.format_confusion_matrix(np.eye(2, dtype=int)).splitlines()[1].split()[0] == "0"


@pytest.mark.parametrize("probs, labels", [
    (np.zeros(3), [0, 1, 2]),              # not (N, C)
    (np.zeros((3, 2)), [0, 1]),            # length mismatch
    (np.zeros((2, 2)), [0, 2]),            # label out of range
    (np.zeros((2, 2)), [0.0, 1.0]),        # not integers
])
def test_bad_inputs_are_rejected(probs, labels):
    with pytest.raises(ValueError):
        metrics.accuracy(probs, np.asarray(labels))


def test_no_samples():
    assert metrics.accuracy(np.zeros((0, 3)), np.zeros(0, int)) == 0.0
    assert metrics.confusion_matrix(np.zeros((0, 3)), np.zeros(0, int)).sum() == 0
