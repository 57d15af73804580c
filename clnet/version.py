"""The version of clnet, in a room of its own so that any module may name it."""

__version__ = "0.1.0"
