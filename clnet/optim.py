"""Optimizers: one launch updates every parameter of the model (the flat parameter buffer).

Semantics follow torch.optim (SGD, Adam, AdamW), so hyper-parameters carry over unchanged.
"""

import inspect
from typing import Any, Optional

FILE = "optim.cl"
LOCAL = 64


class Optimizer:
    """Hyper-parameters and the update launch. The state the update keeps between steps (momentum,
    moments) lives beside the parameters in the model's ParamStore, as `slots` flat buffers of the
    parameters' size, and the model counts the steps."""

    slots = 0

    def __init__(self, lr):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)

    def config(self):
        """The constructor arguments (hyper-parameters), JSON-able: `type(opt)(**opt.config())`."""
        raise NotImplementedError

    def record(self, plan, params, grads, state):
        """Record the update launch of `params` (flat tensor) from `grads`, with the `slots` state
        tensors `state`; returns it."""
        raise NotImplementedError

    def prepare(self, launch, step):
        """Set the arguments of the update launch for optimizer step `step` (counted from 1): the
        learning rate, and for Adam the bias corrections."""
        launch.set("lr", self.lr)


class SGD(Optimizer):
    cli_lr = 0.05  # clnet-train's --lr when none is given

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)

    def config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    @property
    def slots(self):
        return 1 if self.momentum else 0

    def record(self, plan, params, grads, state):
        velocity = state[0] if self.momentum else params  # plain SGD never reads it
        kernel = plan.kernel(FILE, "sgd_step")
        return plan.launch(kernel, (params.size,), (LOCAL,), params.size, params, grads, velocity,
                           self.lr, self.momentum, self.weight_decay, int(self.nesterov))

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")


class Adam(Optimizer):
    decoupled = False
    cli_lr = 0.001  # clnet-train's --lr when none is given

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def config(self):
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps,
                "weight_decay": self.weight_decay}

    slots = 2

    def record(self, plan, params, grads, state):
        m, v = state
        kernel = plan.kernel(FILE, "adam_step")
        return plan.launch(kernel, (params.size,), (LOCAL,), params.size, params, grads, m, v, self.lr,
                           self.beta1, self.beta2, self.eps, self.weight_decay, int(self.decoupled), 1.0, 1.0)

    def prepare(self, launch, step):
        super().prepare(launch, step)
        launch.set("bc1", 1.0 - self.beta1 ** step)
        launch.set("bc2", 1.0 - self.beta2 ** step)

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
                f"weight_decay={self.weight_decay})")


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as torch.optim.AdamW)."""
    decoupled = True

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(optimizer, **kwargs):
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
