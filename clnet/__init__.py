"""clnet: train and run image-classification networks with OpenCL kernels, on any OpenCL device."""

from . import datasets, io, layers, losses, models, optim
from .device import Device, DeviceInfo, device, list_devices
from .errors import (ClnetError, DatasetError, DeviceNotFoundError, InputError, KernelBuildError,
                     ModelFileError, OutOfDeviceMemoryError, ShapeError, TrainingError)
from .io import load
from .model import History, Sequential

__version__ = "0.1.0"

__all__ = ["ClnetError", "DatasetError", "Device", "DeviceInfo", "DeviceNotFoundError", "History",
           "InputError", "KernelBuildError", "ModelFileError", "OutOfDeviceMemoryError", "Sequential",
           "ShapeError", "TrainingError", "datasets", "device", "io", "layers", "list_devices", "load", "losses", "models", "optim"]
