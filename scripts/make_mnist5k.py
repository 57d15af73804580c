"""Convert the 5000 MNIST images of mnist_5k.csv.gz (784 pixels 0-255 then the label per row) into
clnet/datasets/mnist_5k.npz: uint8 images (N, 1, 28, 28) and labels, split stratified and seeded into
4000 training and 1000 test images (400 / 100 per class).

    python scripts/make_mnist5k.py ../shared/data/mnist_5k.csv.gz clnet/datasets/mnist_5k.npz
"""

import sys

import numpy as np

TEST_PER_CLASS = 100
SEED = 20261126


def convert(csv_path, npz_path):
    rows = np.loadtxt(csv_path, delimiter=",", dtype=np.int64)
    if rows.shape[1] != 785 or rows.min() < 0 or rows[:, :784].max() > 255:
        raise SystemExit(f"{csv_path}: expected 785 columns of 0-255 pixels and a label")
    images = rows[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = rows[:, 784].astype(np.uint8)
    rng = np.random.Generator(np.random.Philox(SEED))
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test[rng.choice(members, TEST_PER_CLASS, replace=False)] = True
    train_order = rng.permutation(np.flatnonzero(~test))  # the source is sorted by label
    test_order = rng.permutation(np.flatnonzero(test))
    np.savez_compressed(npz_path, x_train=images[train_order], y_train=labels[train_order],
                        x_test=images[test_order], y_test=labels[test_order])


if __name__ == "__main__":
    convert(*sys.argv[1:3])
