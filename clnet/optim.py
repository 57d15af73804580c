"""Optimizers: one launch updates every parameter of the model (the flat parameter buffer).

Semantics follow torch.optim (SGD, Adam, AdamW), so hyper-parameters carry over unchanged.
"""

import numpy as np

from .tensor import DeviceTensor

FILE = "optim.cl"
LOCAL = 64


class Optimizer:
    def __init__(self, lr):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self.steps = 0
        self._state = None

    def _buffers(self, device, n, count):
        """Optimizer state (zeros), made once and kept across plans of any batch size."""
        if self._state is None or self._state[0].device is not device or self._state[0].size != n:
            self._state = [DeviceTensor.empty(device, (n,), what="optimizer state") for _ in range(count)]
            for t in self._state:
                t.fill(0)
            self.steps = 0
        return self._state

    def config(self):
        """The constructor arguments (hyper-parameters), JSON-able: `type(opt)(**opt.config())`."""
        raise NotImplementedError

    def state_dict(self):
        """Everything needed to continue training: {"class", "config" (hyper-parameters), "steps",
        "state": [float32 numpy arrays over the flat parameter buffer]} (downloaded; [] before the
        first step or for plain SGD)."""
        return {"class": type(self).__name__, "config": self.config(), "steps": self.steps,
                "state": [t.download() for t in self._state or ()]}

    def load_state_dict(self, state, device=None):
        """Restore a state_dict of the same optimizer class: hyper-parameters, step count and state
        tensors, uploaded to `device` (default: where this optimizer's state already is). Tensors
        that already exist with the same shapes are overwritten in place, so plans recorded with
        them keep working (hyper-parameters other than lr reach only plans recorded afterwards, as
        after model.compile)."""
        if state["class"] != type(self).__name__:
            raise ValueError(f"a {state['class']} state_dict cannot be loaded into {type(self).__name__}")
        fresh = type(self)(**state["config"])  # validates the hyper-parameters
        self.__dict__.update({k: v for k, v in vars(fresh).items() if k not in ("steps", "_state")})
        arrays = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in state["state"]]
        if not arrays:
            self._state = None
        else:
            device = device or (self._state[0].device if self._state else None)
            if device is None:
                raise ValueError("load_state_dict needs the device to put the optimizer state on")
            if not (self._state and len(self._state) == len(arrays) and self._state[0].device is device
                    and all(t.size == a.size for t, a in zip(self._state, arrays))):
                self._state = [DeviceTensor.empty(device, a.shape, what="optimizer state") for a in arrays]
            for tensor, array in zip(self._state, arrays):
                tensor.upload(array)
        self.steps = int(state["steps"])

    def record(self, plan, params, grads):
        """Record the update launch of `params` (flat tensor) from `grads`."""
        raise NotImplementedError

    def prepare(self, launch):
        """Set the per-step arguments (learning rate, step counters) before a step runs."""
        raise NotImplementedError


class SGD(Optimizer):
    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)

    def config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def record(self, plan, params, grads):
        velocity = self._buffers(plan.device, params.size, 1)[0] if self.momentum else params
        kernel = plan.kernel(FILE, "sgd_step")
        return plan.launch(kernel, (params.size,), (LOCAL,), params.size, params, grads, velocity,
                           self.lr, self.momentum, self.weight_decay, int(self.nesterov))

    def prepare(self, launch):
        self.steps += 1
        launch.set("lr", self.lr)

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")


class Adam(Optimizer):
    decoupled = False

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def config(self):
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps,
                "weight_decay": self.weight_decay}

    def record(self, plan, params, grads):
        m, v = self._buffers(plan.device, params.size, 2)
        kernel = plan.kernel(FILE, "adam_step")
        return plan.launch(kernel, (params.size,), (LOCAL,), params.size, params, grads, m, v, self.lr,
                           self.beta1, self.beta2, self.eps, self.weight_decay, int(self.decoupled), 1.0, 1.0)

    def prepare(self, launch):
        self.steps += 1
        launch.set("lr", self.lr)
        launch.set("bc1", 1.0 - self.beta1 ** self.steps)
        launch.set("bc2", 1.0 - self.beta2 ** self.steps)

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
