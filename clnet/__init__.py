"""clnet: train and run image-classification networks with OpenCL kernels, on any OpenCL device."""

from . import callbacks, datasets, distributed, io, layers, losses, models, optim
from .device import Device, DeviceInfo, device, devices, list_devices
from .errors import (ClnetError, DatasetError, DeviceNotFoundError, InputError, KernelBuildError,
                     ModelFileError, OutOfDeviceMemoryError, ShapeError, TrainingError)
from .layers import Input
from .model import History, Model, Sequential, load, load_checkpoint
from .onnx_import import from_onnx

from .version import __version__

__all__ = ["ClnetError", "DatasetError", "Device", "DeviceInfo", "DeviceNotFoundError", "History",
           "Input", "InputError", "KernelBuildError", "Model", "ModelFileError", "OutOfDeviceMemoryError", "Sequential",
           "ShapeError", "TrainingError", "callbacks", "datasets", "device", "devices", "distributed", "from_onnx",
           "io", "layers", "list_devices", "load", "load_checkpoint", "losses", "models", "optim"]
