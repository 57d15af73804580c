"""clnet: train and run image-classification networks with OpenCL kernels, on any OpenCL device."""

# the modules the README names as clnet.X, so that a plain `import clnet` reaches them
from . import (callbacks, datasets, distributed, errors, export, io, layers, losses, metrics, models, network, optim,
               torch_twin)
from .device import Device, DeviceInfo, device, devices, list_devices
from .errors import (ClnetError, DatasetError, DeviceNotFoundError, InputError, KernelBuildError,
                     ModelFileError, OutOfDeviceMemoryError, ShapeError, TrainingError)
from .layers import Input
from .model import History, Model, Sequential, load, load_checkpoint
from .onnx_import import from_onnx

from .version import __version__

__all__ = ["ClnetError", "DatasetError", "Device", "DeviceInfo", "DeviceNotFoundError", "History", "Input",
           "InputError", "KernelBuildError", "Model", "ModelFileError", "OutOfDeviceMemoryError",
           "Sequential", "ShapeError", "TrainingError", "callbacks", "datasets", "device", "devices",
           "distributed", "errors", "export", "from_onnx", "io", "layers", "list_devices", "load", "load_checkpoint",
           "losses", "metrics", "models", "network", "optim", "torch_twin"]

_MOVED = {"training": "callbacks"}  # modules renamed since an earlier README named them


def __getattr__(name):
    """A renamed module still answers to its old name, with a DeprecationWarning naming the new one."""
    if name in _MOVED:
        import warnings
        warnings.warn(f"clnet.{name} is now clnet.{_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return globals()[_MOVED[name]]
    raise AttributeError(f"module 'clnet' has no attribute {name!r}")
