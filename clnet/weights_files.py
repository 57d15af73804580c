"""Weights files in the formats people exchange: a state dict (PyTorch's keys and layouts) written
to or read from `.safetensors`, PyTorch's `.pt` / `.pth`, or numpy's `.npz`; the weights of a
`.clnet` model file are read too. The suffix chooses the format.

Nothing here runs code from a file: safetensors and .npz hold bare arrays (read without pickle), and
a .pt file is read by `torch.load(weights_only=True)`, which rebuilds tensors and containers only;
a file that pickles anything else (a whole module, a function) is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping

import numpy as np

from . import io
from .errors import ModelFileError
from .files import replace_atomically, special_kind
from .npyfiles import read_npz

FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".npz": "npz", ".clnet": "clnet"}
WRITTEN = (".safetensors", ".pt", ".pth", ".npz")
SAFETENSORS_HINT = 'pip install safetensors (or clnet\'s safetensors extra: pip install ".[safetensors]" in its checkout)'


def _format(path, formats):
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in formats:
        raise ModelFileError(path, f"has the suffix {suffix or '(none)'!r}: a weights file is "
                                   f"{', '.join(formats)}, and the suffix chooses the format")
    return FORMATS[suffix]


def _require(module, install, path):
    """`module` imported, or a ModelFileError saying what to install to read or write `path`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelFileError(path, f"needs the {module.split('.')[0]} package for this format: {install}") from None


def write_weights(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a state dict to `path` atomically, in the format of its suffix.

    Args:
        state: {key: array}, as `Model.state_dict()` gives it (float32, int64 counters).
        path: a `.safetensors` file (needs the `safetensors` package: clnet's `safetensors`
            extra), a `.pt` / `.pth` file (PyTorch's `torch.save` of a dict of tensors; needs
            torch) or a `.npz` file.

    Example:
        >>> write_weights(model.state_dict(), "weights.safetensors")
    """
    arrays = {key: np.asarray(value, order="C") for key, value in state.items()}  # 0-d stays 0-d
    write = _writer(_format(path, WRITTEN), arrays, path)
    try:
        replace_atomically(path, write)
    except OSError as exc:
        raise ModelFileError(path, f"cannot be written: {exc.strerror or exc}") from exc


def _writer(kind, arrays, path):
    """A function that writes `arrays` in the format `kind` to an open binary file."""
    if kind == "safetensors":
        data = _require("safetensors.numpy", SAFETENSORS_HINT, path).save(arrays)
        return lambda f: f.write(data)
    if kind == "torch":
        torch = _require("torch", "pip install torch", path)
        return lambda f: torch.save({key: torch.from_numpy(value) for key, value in arrays.items()}, f)
    return lambda f: np.savez(f, **arrays)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict in the weights file `path`, as numpy arrays, in the format of its suffix
    (as `write_weights`, and `.clnet` model files). Every failure is a ModelFileError naming the
    file: missing, not a regular file, corrupt, of the wrong kind, or its reader not installed.

    Args:
        path: a `.safetensors`, `.pt` / `.pth`, `.npz` or `.clnet` file.

    Example:
        >>> state = read_weights("resnet18.safetensors")    # e.g. written by safetensors.torch.save_file
    """
    kind = _format(path, tuple(FORMATS))
    if kind == "clnet":
        return io.read_model(path).weights
    try:
        special = special_kind(path)
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if special:
        raise ModelFileError(path, f"is {special}, not a weights file")
    if not os.path.exists(path):
        raise ModelFileError(path, "no such file")
    state = {"safetensors": _read_safetensors, "torch": _read_torch, "npz": _read_npz}[kind](os.fspath(path))
    if not state:
        raise ModelFileError(path, "holds no tensors")
    return state


def _read_safetensors(path):
    safetensors_numpy = _require("safetensors.numpy", SAFETENSORS_HINT, path)
    try:
        return safetensors_numpy.load_file(path)
    except TypeError as exc:  # a dtype numpy lacks (bfloat16): torch reads it, below
        if importlib.util.find_spec("torch") is None:
            raise ModelFileError(path, f"holds a dtype that numpy cannot read ({exc}): pip install torch "
                                       "to read it") from None
    except Exception as exc:  # SafetensorError: a bad header, a truncated file
        raise ModelFileError(path, f"is not a valid safetensors file ({exc})") from None
    from safetensors.torch import load_file
    try:
        tensors = load_file(path)
    except Exception as exc:
        raise ModelFileError(path, f"is not a valid safetensors file ({exc})") from None
    return _numpy(tensors, path)


def _read_torch(path):
    torch = _require("torch", "pip install torch", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        pickled = type(exc).__name__ == "UnpicklingError"
        raise ModelFileError(path, "pickles objects other than tensors (a whole module, or code), which clnet "
                                   "never loads: save the state dict alone, torch.save(module.state_dict(), path)"
                             if pickled else f"is not a PyTorch file that torch.load reads ({exc})") from None
    if not isinstance(state, Mapping):
        raise ModelFileError(path, f"holds a {type(state).__name__}, not a state dict: save the state dict "
                                   "alone, torch.save(module.state_dict(), path)")
    return _numpy(state, path)


def _numpy(tensors, path):
    """{key: numpy array} of a mapping of torch tensors (bfloat16 widened to float32)."""
    import torch

    arrays = {}
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelFileError(path, f"holds {key!r}: {type(value).__name__}, where a state dict holds only "
                                       "tensors under string keys: save the state dict alone")
        value = value.detach().cpu()
        arrays[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return arrays


def _read_npz(path):
    """Each array's .npy header checked against its member before the array is allocated (npyfiles)."""
    error = lambda problem: ModelFileError(path, problem)  # noqa: E731
    try:
        with open(path, "rb") as f:
            return read_npz(f, os.fstat(f.fileno()).st_size, "", error)
    except OSError as exc:  # permission denied, an I/O error
        raise ModelFileError(path, f"cannot be read: {exc.strerror or exc}") from None
