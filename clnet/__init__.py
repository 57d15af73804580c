"""clnet: train and run image-classification networks with OpenCL kernels, on any OpenCL device."""

from . import datasets, layers, losses, models, optim
from .device import Device, DeviceInfo, device, list_devices
from .errors import (ClnetError, DatasetError, DeviceNotFoundError, InputError, KernelBuildError,
                     OutOfDeviceMemoryError, ShapeError)
from .model import History, Sequential

__version__ = "0.1.0"

__all__ = ["ClnetError", "DatasetError", "Device", "DeviceInfo", "DeviceNotFoundError", "History",
           "InputError", "KernelBuildError", "OutOfDeviceMemoryError", "Sequential", "ShapeError",
           "datasets", "device", "layers", "list_devices", "losses", "models", "optim"]
