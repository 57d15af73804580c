"""Preset networks (the reference networks of the benchmarks)."""

from .layers import Dense, Flatten, ReLU
from .model import Sequential


def mlp(device=None, seed=0, in_features=784, classes=10):
    """Flatten, Dense 784->256, ReLU, Dense 256->128, ReLU, Dense 128->10."""
    return Sequential([Flatten(), Dense(in_features, 256), ReLU(), Dense(256, 128), ReLU(),
                       Dense(128, classes)], device=device, seed=seed)


PRESETS = {"mlp": mlp}
