"""CIFAR-10 and CIFAR-100, from the official archives or from the folders they unpack to.

Both distributions are read:
- python version: pickled dicts (data_batch_1..5, test_batch, batches.meta for CIFAR-10;
  train, test, meta for CIFAR-100) holding a (n, 3072) uint8 array and label lists. They are read
  with a restricted unpickler that only rebuilds numpy arrays, never runs other pickled code.
- binary version: records of label byte(s) then 3072 pixel bytes (data_batch_1..5.bin,
  test_batch.bin, batches.meta.txt; CIFAR-100: train.bin, test.bin with coarse and fine label
  bytes, fine_label_names.txt, coarse_label_names.txt).
Pixels are 1024 red, 1024 green, 1024 blue values, each plane 32 rows of 32: (3, 32, 32).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from math import prod
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..files import readable_size
from ..memory import check_host_memory
from .dataset import Dataset

PIXELS = 3 * 32 * 32
REDOWNLOAD = "download it again"
MAX_MEMBER = 1 << 28  # bytes: the largest CIFAR file (CIFAR-100's train pickle) holds about 160 MB


class _Layout:
    """Where one distribution of one variant keeps its files."""

    def __init__(self, kind, top, train, test, meta, archive):
        self.kind, self.top, self.archive = kind, top, archive
        self.files = {"train": train, "test": test}
        self.meta = meta

    def needed(self, split):
        return self.files[split] + self.meta

    @property
    def all_files(self):
        return self.files["train"] + self.files["test"] + self.meta


_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
LAYOUTS = {
    "cifar10": [
        _Layout("python", "cifar-10-batches-py", _BATCHES, ["test_batch"], ["batches.meta"],
                "cifar-10-python.tar.gz"),
        _Layout("binary", "cifar-10-batches-bin", [b + ".bin" for b in _BATCHES], ["test_batch.bin"],
                ["batches.meta.txt"], "cifar-10-binary.tar.gz"),
    ],
    "cifar100": [
        _Layout("python", "cifar-100-python", ["train"], ["test"], ["meta"], "cifar-100-python.tar.gz"),
        _Layout("binary", "cifar-100-binary", ["train.bin"], ["test.bin"],
                ["fine_label_names.txt", "coarse_label_names.txt"], "cifar-100-binary.tar.gz"),
    ],
}
TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
NUM_CLASSES = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}


# --- sources: an unpacked folder or a tar archive -------------------------------------------------

class _Folder:
    def __init__(self, folder):
        self.folder = Path(folder)
        try:
            self.names = {p.name for p in self.folder.iterdir() if p.is_file()}
        except OSError as exc:
            raise DatasetError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None

    def where(self, name):
        return str(self.folder / name)

    def read(self, name):
        size = readable_size(self.folder / name, DatasetError)  # a FIFO or a device is never opened
        check_host_memory(size, self.where(name), DatasetError)
        try:
            return (self.folder / name).read_bytes()
        except OSError as exc:
            raise DatasetError(f"{self.where(name)}: cannot read the file ({exc.strerror or exc})") from None


class _Archive:
    """A tar archive (gzip, bzip2, xz or plain), read in one pass: only `wanted` members are kept."""

    def __init__(self, path, tops, wanted):
        self.path = path
        self.members, self.data = {}, {}
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:  # in archive order, so a compressed stream is decompressed once
                    if not member.isfile():
                        continue
                    name = member.name.rsplit("/", 1)[-1]
                    parent = member.name.rsplit("/", 2)[-2] if "/" in member.name else ""
                    if name in self.members and parent not in tops:
                        continue  # keep a duplicate name only when it is in the expected folder
                    self.members[name] = member.name
                    if name in wanted:
                        if member.size > MAX_MEMBER:  # a compressed archive can inflate a member to any size
                            raise DatasetError(f"{self.where(name)} declares {member.size:,} bytes, more than any "
                                               f"CIFAR file holds ({MAX_MEMBER:,}): not an official archive: "
                                               f"{REDOWNLOAD}")
                        self.data[name] = tar.extractfile(member).read()
                # read to the end of the stream, so gzip / bzip2 / xz verify their checksums: a damaged
                # byte in a stored block is otherwise only caught by the checksum after the tar's end
                while tar.fileobj.read(1 << 20):
                    pass
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt or truncated archive ({exc or type(exc).__name__}): "
                               f"{REDOWNLOAD}") from None
        self.names = set(self.members)

    def where(self, name):
        return f"{self.path}:{self.members.get(name, name)}"

    def read(self, name):
        return self.data[name]


def _distribution(names, variant):
    """The layout of `variant` whose files appear among `names` (python first), else None."""
    for layout in LAYOUTS[variant]:
        if names & set(layout.all_files):
            return layout
    return None


def _other_variant(names, variant):
    other = "cifar100" if variant == "cifar10" else "cifar10"
    return other if _distribution(names, other) else None


def _wrong_variant(where, variant, other):
    return DatasetError(f"{where} holds {TITLE[other]}, not {TITLE[variant]}: load it as {other}")


def _open_source(path, variant):
    """(source, layout) for a CIFAR archive or folder at `path`."""
    path = Path(path)
    layouts = LAYOUTS[variant]
    tops = {layout.top for layout in layouts}
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder: give the path of {layouts[0].archive}, "
                           f"{layouts[1].archive} or the folder unpacked from one")
    if path.is_dir():
        folders = [path / layout.top for layout in layouts] + [path]
        for folder in folders:
            if folder.is_dir():
                source = _Folder(folder)
                layout = _distribution(source.names, variant)
                if layout is not None:
                    return source, layout
        for layout in layouts:  # the downloaded archive itself, still packed, in the folder
            if (path / layout.archive).is_file():
                return _open_source(path / layout.archive, variant)
        for folder in [path / layout.top for layout in LAYOUTS["cifar10"] + LAYOUTS["cifar100"]] + [path]:
            if folder.is_dir():
                other = _other_variant(_Folder(folder).names, variant)
                if other:
                    raise _wrong_variant(folder, variant, other)
        raise DatasetError(
            f"{path}: no {TITLE[variant]} files found: expected the folder {layouts[0].top} or "
            f"{layouts[1].top} (unpacked from {layouts[0].archive} or {layouts[1].archive}), "
            f"or their files ({', '.join(layouts[0].all_files[-2:])}, ...) directly in {path}")
    wanted = {name for layout in layouts for name in layout.all_files}
    if not path.is_file():
        raise DatasetError(f"{path} is neither a file nor a folder: give the path of {layouts[0].archive}, "
                           f"{layouts[1].archive} or the folder unpacked from one")
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not is_tar:
        raise DatasetError(f"{path} is not a tar archive (it may be corrupt or truncated): expected "
                           f"{layouts[0].archive} or {layouts[1].archive}, or a folder unpacked from one: "
                           f"{REDOWNLOAD}")
    source = _Archive(path, tops, wanted)
    layout = _distribution(source.names, variant)
    if layout is None:
        other = _other_variant(source.names, variant)
        if other:
            raise _wrong_variant(path, variant, other)
        raise DatasetError(f"{path}: no {TITLE[variant]} files in the archive (expected "
                           f"{layouts[0].archive} or {layouts[1].archive}): check the file")
    return source, layout


# --- the restricted unpickler -----------------------------------------------------------------------
# CIFAR's pickles hold a dict of byte strings, lists of numbers and strings, and numpy arrays. An
# array is rebuilt as numpy pickles it: _reconstruct(ndarray, (0,), b"b") then a BUILD with (version,
# shape, dtype, fortran, bytes) (protocols 2 to 4), or _frombuffer(bytes, dtype, shape, order)
# (protocol 5); a dtype as dtype("u1", False, True) then a BUILD with its byte order. Each global is
# a stand-in here that checks its arguments: plain numeric dtypes only, and an array's shape and bytes
# agreeing before a single element is allocated. numpy's own constructors never see the file's values,
# so ndarray(shape, dtype, buffer, offset, strides), zero strides or an array without a buffer cannot
# be spelled.

class _Refused(Exception):
    """A pickle that spells something CIFAR's do not."""


def _refuse(what):
    raise _Refused(f"{what}: not what CIFAR pickles hold")


def _nbytes(shape, dtype):
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                             for n in shape)):
        _refuse(f"the array shape {shape!r}")
    return prod(shape) * dtype.itemsize


def _as_bytes(data):
    """An array's bytes as the pickle gave them: bytes, a bytearray (protocol 5), or the latin-1 text
    that Python 2's byte strings become."""
    if isinstance(data, str):
        return data.encode("latin-1")
    if isinstance(data, (bytes, bytearray, pickle.PickleBuffer)):
        return memoryview(data).cast("B")
    _refuse(f"array data of type {type(data).__name__}")


class _DType:
    """numpy.dtype(name, align, copy) for plain numbers ("u1", "i8", "f4", ...), then its state: a
    byte order and nothing else."""

    def __init__(self, name, align=False, copy=True):
        if not (isinstance(name, str) and len(name) <= 3 and name[:1] in ("b", "i", "u", "f") and name[1:].isdigit()):
            _refuse(f"the dtype {name!r}")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        fresh = self.dtype.__reduce__()[2]
        if not (isinstance(state, tuple) and len(state) == len(fresh) and state[0] == fresh[0]
                and state[1] in ("<", ">", "|", "=") and state[2:] == fresh[2:]):
            _refuse(f"the dtype state {state!r}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _checked_dtype(dtype):
    if not isinstance(dtype, _DType):
        _refuse(f"the dtype {dtype!r}")
    return dtype.dtype


def _array(data, dtype, shape, fortran):
    data = _as_bytes(data)
    if len(data) != _nbytes(shape, dtype):
        _refuse(f"an array of shape {shape} {dtype} with {len(data)} bytes")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()


class _Array:
    """What _reconstruct(ndarray, (0,), b"b") gives: an array to come, made by BUILD from its state."""
    array = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4 and isinstance(state[2], bool)):
            _refuse("an array state that is not (shape, dtype, fortran, bytes)")
        shape, dtype, fortran, data = state
        self.array = _array(data, _checked_dtype(dtype), shape, fortran)


def _ndarray(*args):
    _refuse("numpy.ndarray(...) called with arguments")  # only a marker for _reconstruct


def _reconstruct(cls, shape, typecode):
    if cls is not _ndarray or shape != (0,) or typecode not in (b"b", "b"):
        _refuse(f"_reconstruct{(cls, shape, typecode)!r}")
    return _Array()


def _frombuffer(buffer, dtype, shape, order):
    """Protocol 5's array: its bytes, dtype, shape and order ("C" or "F")."""
    if order not in ("C", "F"):
        _refuse(f"the array order {order!r}")
    return _array(buffer, _checked_dtype(dtype), shape, order == "F")


def _scalar(dtype, data):
    """A numpy number (np.int64(3) in a list of labels): its dtype and its bytes."""
    return _array(data, _checked_dtype(dtype), (), False)[()]


def _latin1_encode(text, encoding):
    """Python 3 pickles of bytes at protocol 2 spell them as _codecs.encode(text, 'latin1')."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        _refuse(f"_codecs.encode with {encoding!r}")
    return text.encode("latin-1")


_ALLOWED = {("numpy", "ndarray"): _ndarray, ("numpy", "dtype"): _DType, ("_codecs", "encode"): _latin1_encode}
for _core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spell the module differently
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and numpy arrays of numbers; refuses every other global."""

    def __init__(self, data, where):
        # latin1: Python 2 byte strings (the official pickles) become str, numpy's documented choice
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.where = where

    def find_class(self, module, name):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise DatasetError(
                f"{self.where}: refused to unpickle {module}.{name}: CIFAR pickles hold only dicts of "
                "bytes, lists and numpy arrays, so this file is not an official CIFAR batch and may run "
                f"code if unpickled: {REDOWNLOAD} from the official site")
        return allowed

    def persistent_load(self, pid):
        raise DatasetError(f"{self.where}: refused a persistent id in the pickle: not an official CIFAR batch")


def _unpickle(data, where):
    try:
        obj = _RestrictedUnpickler(data, where).load()
    except DatasetError:
        raise
    except _Refused as exc:
        raise DatasetError(f"{where}: refused to unpickle {exc}: {REDOWNLOAD} from the official site") from None
    except Exception as exc:  # a corrupt pickle can fail in many ways
        raise DatasetError(f"{where}: corrupt pickle ({type(exc).__name__}: {exc}): {REDOWNLOAD}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(obj).__name__}: not a CIFAR batch")
    batch = {}
    for key, value in obj.items():
        if isinstance(value, _Array):
            if value.array is None:
                raise DatasetError(f"{where}: refused to unpickle an array without its data: {REDOWNLOAD}")
            value = value.array
        batch[key.decode("latin-1") if isinstance(key, bytes) else key] = value
    return batch


def _key(batch, key, where):
    if key not in batch:
        found = ", ".join(sorted(map(str, batch))) or "none"
        raise DatasetError(f"{where}: no {key!r} entry (found: {found}): not a CIFAR batch of this kind: "
                           f"{REDOWNLOAD}")
    return batch[key]


def _labels(values, count, num_classes, where, key):
    try:
        labels = np.asarray(values)
    except Exception:
        labels = None
    if labels is None or labels.dtype.kind not in "iu" or labels.ndim != 1:
        shape = "?" if labels is None else f"{labels.dtype} of shape {labels.shape}"
        raise DatasetError(f"{where}: {key} must be a list of integers, got {shape}: {REDOWNLOAD}")
    if len(labels) != count:
        raise DatasetError(f"{where}: {count} images but {len(labels)} {key}: the file is corrupt: {REDOWNLOAD}")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{where}: {key} range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}: "
                           f"the file is corrupt: {REDOWNLOAD}")
    return labels.astype(np.int64)


def _names(values, count, where, key):
    if not isinstance(values, (list, tuple)) or len(values) != count:
        n = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise DatasetError(f"{where}: {key} should list {count} class names, got {n}: {REDOWNLOAD}")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _python_batch(source, name, label_key, num_classes):
    where = source.where(name)
    batch = _unpickle(source.read(name), where)
    data = _key(batch, "data", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{where}: 'data' must be a uint8 array, got {kind}: {REDOWNLOAD}")
    if data.ndim == 4 and data.shape[1:] == (3, 32, 32):
        data = data.reshape(len(data), PIXELS)
    if data.ndim != 2 or data.shape[1] != PIXELS or not len(data):
        raise DatasetError(f"{where}: 'data' has shape {data.shape}, expected (images, {PIXELS}): {REDOWNLOAD}")
    labels = _labels(_key(batch, label_key, where), len(data), num_classes, where, label_key)
    return data, labels


def _binary_batch(source, name, label_bytes, label_index, num_classes):
    where = source.where(name)
    raw = source.read(name)
    record = label_bytes + PIXELS
    if len(raw) % record or not raw:
        whole = len(raw) // record
        raise DatasetError(f"{where} is truncated or corrupt: {len(raw)} bytes is not a whole number of "
                           f"{record}-byte records ({whole} records and {len(raw) - whole * record} bytes over): "
                           f"{REDOWNLOAD}")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    # CIFAR-100 records carry (coarse, fine): every label byte is checked, whichever is used
    limits = {1: [num_classes], 2: [20, 100]}[label_bytes]
    for column, limit in enumerate(limits):
        worst = records[:, column].max()
        if worst >= limit:
            raise DatasetError(f"{where}: label {worst} out of range 0..{limit - 1} in the records: "
                               f"the file is corrupt: {REDOWNLOAD}")
    return records[:, label_bytes:], records[:, label_index].astype(np.int64)


def _text_names(source, name, count):
    where = source.where(name)
    try:
        lines = [line.strip() for line in source.read(name).decode("utf-8").splitlines()]
    except UnicodeDecodeError:
        raise DatasetError(f"{where}: not a text file of class names: {REDOWNLOAD}") from None
    return _names([line for line in lines if line], count, where, "the file")


def load_cifar(path: str | os.PathLike, variant: str, split: str, name: str | None = None,
               label_mode: str = "fine") -> Dataset:
    """A Dataset of CIFAR-10 or CIFAR-100 images (N, 3, 32, 32) uint8, int64 labels and the class names.

    `path`: an official archive (python or binary version), or a folder holding one unpacked
    (cifar-10-batches-py, cifar-10-batches-bin, cifar-100-python, cifar-100-binary) or holding
    their files directly. `variant`: "cifar10" or "cifar100"; `split`: "train" or "test";
    `label_mode` (CIFAR-100 only): "fine" (100 classes) or "coarse" (20 superclasses).
    `name` defaults to "<variant>-<split>".

    Example:
        >>> train = load_cifar("cifar-10-python.tar.gz", "cifar10", "train")
        >>> train.x.shape, train.classes[:3]
        ((50000, 3, 32, 32), ['airplane', 'automobile', 'bird'])
    """
    if variant not in LAYOUTS:
        raise ValueError(f"variant must be 'cifar10' or 'cifar100', not {variant!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if (variant, label_mode) not in NUM_CLASSES:
        modes = "'fine' or 'coarse'" if variant == "cifar100" else "'fine' (CIFAR-10 has one label set)"
        raise ValueError(f"label_mode for {variant} must be {modes}, not {label_mode!r}")
    num_classes = NUM_CLASSES[(variant, label_mode)]
    source, layout = _open_source(path, variant)
    missing = [f for f in layout.needed(split) if f not in source.names]
    if missing:
        everything = ", ".join(layout.all_files)
        raise DatasetError(f"{path}: missing {', '.join(missing)} (the {TITLE[variant]} {layout.kind} version "
                           f"has {everything}): the download is incomplete: {REDOWNLOAD}")

    if layout.kind == "python":
        label_key = "labels" if variant == "cifar10" else f"{label_mode}_labels"
        parts = [_python_batch(source, f, label_key, num_classes) for f in layout.files[split]]
        meta_name = layout.meta[0]
        meta = _unpickle(source.read(meta_name), source.where(meta_name))
        names_key = "label_names" if variant == "cifar10" else f"{label_mode}_label_names"
        classes = _names(_key(meta, names_key, source.where(meta_name)), num_classes,
                         source.where(meta_name), names_key)
    else:
        label_bytes = 1 if variant == "cifar10" else 2
        label_index = 1 if (variant, label_mode) == ("cifar100", "fine") else 0
        parts = [_binary_batch(source, f, label_bytes, label_index, num_classes) for f in layout.files[split]]
        names_file = layout.meta[0] if variant == "cifar10" else f"{label_mode}_label_names.txt"
        classes = _text_names(source, names_file, num_classes)

    x = np.concatenate([data for data, _ in parts]).reshape(-1, 3, 32, 32)
    y = np.concatenate([labels for _, labels in parts])
    return Dataset(x, y, classes=classes, name=name or f"{variant}-{split}")
