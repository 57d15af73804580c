"""Optimizers: one launch updates every parameter of the model (the flat parameter buffer).

Semantics follow torch.optim (SGD, Adam, AdamW), so hyper-parameters carry over unchanged.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .plan import Launch, Plan
    from .tensor import DeviceTensor

FILE = "optim.cl"
LOCAL = 64


class Optimizer:
    """Hyper-parameters and the update launch. The state the update keeps between steps (momentum,
    moments) lives beside the parameters in the model's ParamStore, as `slots` flat buffers of the
    parameters' size, and the model counts the steps.

    A subclass sets `slots` (how many state buffers it needs; zeroed when they are made), and
    implements `config` (its constructor arguments) and `record` (the launch of its update kernel);
    it overrides `prepare` when the launch takes arguments that change from step to step. To be
    saved in model files and offered by clnet-train it is added to OPTIMIZERS, with a `cli_lr`.

    Args:
        lr: the learning rate, > 0.
    """

    slots = 0

    def __init__(self, lr: float):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (hyper-parameters), JSON-able: `type(opt)(**opt.config())`."""
        raise NotImplementedError

    def record(self, plan: Plan, params: DeviceTensor, grads: DeviceTensor, state: list[DeviceTensor]) -> Launch:
        """Record the update launch of `params` (flat tensor) from `grads`, with the `slots` state
        tensors `state`; returns it."""
        raise NotImplementedError

    def prepare(self, launch: Launch, step: int) -> None:
        """Set the arguments of the update launch for optimizer step `step` (counted from 1): the
        learning rate, and for Adam the bias corrections."""
        launch.set("lr", self.lr)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and Nesterov momentum, as torch.optim.SGD
    (without dampening): the velocity starts at the first gradient.

    Args:
        lr: the learning rate.
        momentum: the momentum factor; 0 keeps no velocity (no state buffer).
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 penalty, `weight_decay * param` added to the gradient.

    Example:
        >>> model.compile("cross_entropy", SGD(lr=0.05, momentum=0.9, nesterov=True))
    """

    cli_lr = 0.05  # clnet-train's --lr when none is given

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(lr)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    @property
    def slots(self) -> int:
        return 1 if self.momentum else 0

    def record(self, plan: Plan, params: DeviceTensor, grads: DeviceTensor, state: list[DeviceTensor]) -> Launch:
        velocity = state[0] if self.momentum else params  # plain SGD never reads it
        kernel = plan.kernel(FILE, "sgd_step")
        return plan.launch(kernel, (params.size,), (LOCAL,), params.size, params, grads, velocity,
                           self.lr, self.momentum, self.weight_decay, int(self.nesterov))

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")


class Adam(Optimizer):
    """Adam, as torch.optim.Adam (without amsgrad): bias-corrected moment estimates, two state buffers.

    Args:
        lr: the learning rate.
        betas: the decay rates of the first and second moment estimates, each in [0, 1).
        eps: added to the square root of the second moment, for numerical stability.
        weight_decay: L2 penalty, `weight_decay * param` added to the gradient (see AdamW for
            decoupled weight decay).

    Example:
        >>> model.compile("cross_entropy", Adam(lr=3e-4, betas=(0.9, 0.98)))
    """

    decoupled = False
    cli_lr = 0.001  # clnet-train's --lr when none is given

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps,
                "weight_decay": self.weight_decay}

    slots = 2

    def record(self, plan: Plan, params: DeviceTensor, grads: DeviceTensor, state: list[DeviceTensor]) -> Launch:
        m, v = state
        kernel = plan.kernel(FILE, "adam_step")
        return plan.launch(kernel, (params.size,), (LOCAL,), params.size, params, grads, m, v, self.lr,
                           self.beta1, self.beta2, self.eps, self.weight_decay, int(self.decoupled), 1.0, 1.0)

    def prepare(self, launch: Launch, step: int) -> None:
        super().prepare(launch, step)
        launch.set("bc1", 1.0 - self.beta1 ** step)
        launch.set("bc2", 1.0 - self.beta2 ** step)

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
                f"weight_decay={self.weight_decay})")


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as torch.optim.AdamW).

    Args:
        lr: the learning rate.
        betas: the decay rates of the first and second moment estimates, each in [0, 1).
        eps: added to the square root of the second moment, for numerical stability.
        weight_decay: decoupled weight decay: each step scales the parameters by `1 - lr * weight_decay`
            before the Adam update, instead of adding to the gradient.

    Example:
        >>> model.compile("cross_entropy", AdamW(lr=1e-3, weight_decay=0.05))
    """

    decoupled = True

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(optimizer: str | Optimizer, **kwargs: Any) -> Optimizer:
    """An optimizer from its name, or the one given.

    Args:
        optimizer: a key of OPTIMIZERS ("sgd", "adam", "adamw", any case), or an Optimizer,
            returned as it is (`kwargs` are then ignored).
        **kwargs: the constructor arguments when `optimizer` is a name.

    Raises:
        ValueError: `optimizer` is neither a known name nor an Optimizer.

    Example:
        >>> get("adam", lr=3e-4)
        Adam(lr=0.0003, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)
    """
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)} or pass a clnet Optimizer")


def from_options(name: str, lr: Optional[float] = None, **options: Any) -> Optimizer:
    """The optimizer `name` of OPTIMIZERS built from command-line options, as clnet-train does: an
    optimizer added to OPTIMIZERS (with its `cli_lr`) is then offered by clnet-train as it is.

    Args:
        name: a key of OPTIMIZERS.
        lr: the learning rate; None takes the optimizer's `cli_lr`.
        **options: hyper-parameters of the command line (momentum, nesterov, weight_decay, ...);
            those the optimizer's constructor does not take are left out.

    Example:
        >>> from_options("adam", momentum=0.9, weight_decay=1e-4)
        Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0001)
    """
    cls = OPTIMIZERS[name]
    accepted = inspect.signature(cls).parameters
    return cls(lr=cls.cli_lr if lr is None else lr, **{k: v for k, v in options.items() if k in accepted})
