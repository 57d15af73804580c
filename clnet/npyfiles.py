"""Reading .npy and .npz files as clnet trusts them: plain numeric arrays only (never a pickle), every
array's declared size checked against the bytes that hold it before anything is allocated, so a
header that claims 10**12 images is an error naming the file, not a MemoryError after trying."""

from __future__ import annotations

import zipfile
import zlib
from math import prod

import numpy as np

from .files import readable_size
from .memory import check_host_memory

_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _array(f, size, where, error):
    """The array of the .npy stream `f` holding `size` bytes in all, read after its header is checked."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in _HEADERS:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = _HEADERS[version](f)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise error(f"{where}: not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise error(f"{where} holds pickled Python objects, which clnet does not load (unpickling can run "
                    "code): save plain numeric arrays")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise error(f"{where} holds {dtype} values: clnet reads arrays of numbers only")
    nbytes = prod(shape) * dtype.itemsize
    held = size - f.tell()
    if nbytes != held:
        raise error(f"{where}: the header declares {' x '.join(map(str, shape)) or 'one'} {dtype} values "
                    f"({nbytes:,} bytes) but {held:,} bytes follow it: the file is corrupt or truncated")
    check_host_memory(nbytes, f"{where}, {shape} {dtype},", error)
    buffer = bytearray(nbytes)
    try:
        if f.readinto(memoryview(buffer)) != nbytes:
            raise EOFError("the data ends early")
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:  # a bad CRC, a truncated member
        raise error(f"{where}: cannot be read, corrupt or truncated ({exc})") from None
    return np.frombuffer(buffer, dtype).reshape(shape, order="F" if fortran else "C")


def _read_file(path, error, read):
    """read(open file, its size) of the regular file at `path`, an OSError raised as `error`."""
    size = readable_size(path, error)
    try:
        with open(path, "rb") as f:
            return read(f, size)
    except OSError as exc:
        raise error(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def read_npy(path, error) -> np.ndarray:
    """The array of the .npy file at `path` (a regular file: see files.readable_size).

    Args:
        path: the file.
        error: the ClnetError class raised, with a message naming `path`.

    Example:
        >>> read_npy("x.npy", DatasetError).shape
        (60000, 1, 28, 28)
    """
    return _read_file(path, error, lambda f, size: _array(f, size, str(path), error))


def read_npz_file(path, error) -> dict[str, np.ndarray]:
    """{key: array} of the .npz file at `path` (a regular file), as `read_npz` checks its members.

    Args:
        path: the file.
        error: the ClnetError class raised, with a message naming `path`.

    Example:
        >>> sorted(read_npz_file("data.npz", DatasetError))
        ['x', 'y']
    """
    return _read_file(path, error, lambda f, size: read_npz(f, size, str(path), error))


def check_member(member: zipfile.ZipInfo, size: int, name: str, error, compressed: bool = False) -> None:
    """Refuse, before it is read, a zip member that is compressed where clnet stores members as they
    are (one it did not write, which could inflate far beyond the file), or a stored member that
    declares more bytes than the `size` of the archive holding it.

    Args:
        member: the member's ZipInfo.
        size: the archive's length in bytes.
        name: how messages name the member ("weights.npz/0.weight.npy").
        error: the ClnetError class raised (or a callable making one from a message).
        compressed: whether compressed members are allowed.

    Example:
        >>> check_member(archive.getinfo("model.json"), os.path.getsize(path), "model.json", DatasetError)
    """
    if member.compress_type != zipfile.ZIP_STORED and not compressed:
        raise error(f"member {name} is compressed, and clnet stores members uncompressed")
    if member.compress_type == zipfile.ZIP_STORED and member.file_size > size:
        raise error(f"member {name} declares {member.file_size} bytes, more than the {size} there are: "
                    "the file is corrupt")


def read_npz(source, size: int, where: str, error, compressed: bool = True) -> dict[str, np.ndarray]:
    """{key: array} of an .npz archive, each member checked before it is read: a `.npy` array
    (nothing else), its declared size that of the bytes the member holds, and a stored member no
    larger than the archive's `size`.

    Args:
        source: the archive: a path, or a binary file object.
        size: its length in bytes.
        where: how messages name it ("weights.npz" in a model file, "data.npz"), or "" where `error`
            names it.
        error: the ClnetError class raised (or a callable making one from a message).
        compressed: whether members may be compressed (np.savez_compressed): their declared size is
            then checked against the host's memory, as it can exceed the archive's.

    Example:
        >>> with open("data.npz", "rb") as f:
        ...     arrays = read_npz(f, os.path.getsize("data.npz"), "data.npz", DatasetError)
    """
    prefix = f"{where}: " if where else ""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise error(f"{prefix}not a valid numpy .npz archive, corrupt or truncated ({exc})") from None
    arrays = {}
    with archive:
        for member in archive.infolist():
            name = f"{where}/{member.filename}" if where else member.filename
            if member.is_dir() or not member.filename.endswith(".npy"):
                raise error(f"{prefix}holds {member.filename!r}, which is not a .npy array: an .npz holds arrays only")
            check_member(member, size, name, error, compressed)
            try:
                f = archive.open(member)
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError) as exc:
                raise error(f"{name} cannot be read ({exc})") from None
            with f:
                arrays[member.filename[:-len(".npy")]] = _array(f, member.file_size, name, error)
    return arrays
