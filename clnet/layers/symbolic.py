"""Symbolic tensors: what a layer called on `Input(...)` or on another layer's result returns, so
that a network is written as the functions it composes (clnet.Model(inputs, outputs) collects it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class SymbolicTensor:
    """The output of `layer` applied to `inputs` (other symbolic tensors), or with no layer the
    network's input of per-sample `shape`. `name` is the node's name, None for a default one."""
    layer: object = None
    inputs: tuple = ()
    name: str | None = None
    shape: tuple | None = field(default=None)

    def __repr__(self):
        what = f"Input{self.shape}" if self.layer is None else repr(self.layer)
        return f"<SymbolicTensor {self.name or ''} {what}>"


def Input(shape) -> SymbolicTensor:  # noqa: N802 (a constructor, as Keras names it)
    """The input of a functional network: per-sample `shape`, such as (3, 32, 32).

    Example:
        >>> x = clnet.Input((1, 28, 28))
        >>> y = L.Dense(784, 10)(L.Flatten()(x))
        >>> model = clnet.Model(x, y)
    """
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"Input needs a per-sample shape of positive sizes, got {shape}")
    return SymbolicTensor(shape=shape)
