"""IDX files (the MNIST / Fashion-MNIST / EMNIST format), raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension, then the values in C order, big-endian. Compression is detected from the content
(the gzip magic bytes), never from the file name.
"""

from __future__ import annotations

import gzip
import os
import zlib
from math import prod
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..files import readable_size
from ..memory import check_host_memory
from .dataset import Dataset

# type code -> big-endian element type
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
REDOWNLOAD = "download it again"
MAX_HEADER = 4 + 4 * 255  # the longest IDX header: 255 dimensions
CHUNK = 1 << 24           # bytes inflated at a time
GZIP_MARGIN = 1 << 16     # bytes past the declared values still inflated (to report how many there are)


def _read_bytes(path):
    """The file's bytes, gunzipped when the content is gzip: a regular file only (a FIFO or a device
    is refused before it is opened), its size checked against what its IDX header declares before
    the values are read; a gzip stream is inflated in chunks, and refused once it holds more than
    its header declares."""
    size = readable_size(path, DatasetError)
    try:
        with open(path, "rb") as f:
            if f.read(2) == GZIP_MAGIC:
                f.seek(0)
                return _gunzip(path, f)
            f.seek(0)
            head = f.read(MAX_HEADER)
            declared = _declared_size(head)
            if declared is not None and declared > size:
                raise DatasetError(f"{path} is truncated: its header declares {declared:,} bytes but the file has "
                                   f"{size:,}: {REDOWNLOAD}")
            return head + f.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def _declared_size(head):
    """The bytes (header and values) that an IDX file starting with `head` declares, or None when
    `head` holds no whole IDX header (read_idx then says what is wrong)."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES or not 0 < 4 * head[3] <= len(head) - 4:
        return None
    ndim = head[3]
    count = prod(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return 4 + 4 * ndim + count * IDX_TYPES[head[2]].itemsize


def _gunzip(path, f):
    """The inflated bytes of the gzip file `f`, read in chunks up to what its IDX header declares."""
    try:
        stream = gzip.GzipFile(fileobj=f)
        out = bytearray(stream.read(MAX_HEADER))
        declared = _declared_size(out)
        if declared is None:
            return bytes(out)  # no IDX header: read_idx says what is wrong with it
        check_host_memory(declared, f"{path}: the values its IDX header declares", DatasetError)
        limit = declared + GZIP_MARGIN + 1  # a few bytes over are reported by read_idx; more are refused here
        while len(out) < limit and (chunk := stream.read(min(CHUNK, limit - len(out)))):
            out += chunk
        if len(out) == limit:
            raise DatasetError(f"{path}: the gzip stream inflates beyond the {declared:,} bytes its IDX header "
                               f"declares: the file is corrupt: {REDOWNLOAD}")
        return bytes(out)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{path}: corrupt gzip stream ({exc}): {REDOWNLOAD}") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (raw or gzip), in native byte order.

    Raises DatasetError for a missing file, a wrong magic number, an unknown type code, a file
    shorter than its header promises, bytes left after the data, or a corrupt gzip stream.

    Example:
        >>> read_idx("train-labels-idx1-ubyte.gz").shape
        (60000,)
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: only {len(data)} bytes, too short for an IDX header: {REDOWNLOAD}")
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path} is not an IDX file: it starts with bytes {data[:4].hex(' ')}, "
                           "an IDX file with 00 00 (type) (dimensions)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X} {t.name}" for c, t in IDX_TYPES.items())
        raise DatasetError(f"{path}: unknown IDX type code 0x{code:02X} (known: {known}): "
                           f"the file is corrupt or not IDX: {REDOWNLOAD}")
    if ndim == 0:
        raise DatasetError(f"{path}: IDX header declares 0 dimensions: the file is corrupt: {REDOWNLOAD}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated: its header declares {ndim} dimensions but the file has "
                           f"only {len(data)} bytes: {REDOWNLOAD}")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[code]
    count = 1
    for n in shape:
        count *= n
    expected = count * dtype.itemsize
    have = len(data) - header
    dims = " x ".join(map(str, shape))
    if have < expected:
        raise DatasetError(f"{path} is truncated: the header promises {dims} {dtype.name} values "
                           f"({expected} bytes) but only {have} bytes follow it: {REDOWNLOAD}")
    if have > expected:
        raise DatasetError(f"{path}: {have - expected} unexpected bytes after the {dims} {dtype.name} "
                           f"values the header declares: the file is corrupt: {REDOWNLOAD}")
    values = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def _images_to_uint8(images, path):
    if images.dtype == np.uint8 or images.dtype.kind == "f":
        return images
    # other integer types: fine when the values are pixel values anyway
    if images.size and (images.min() < 0 or images.max() > 255):
        raise DatasetError(f"{path}: images of type {images.dtype} with values {images.min()}..{images.max()}, "
                           "outside 0..255: expected uint8 pixels (IDX type 0x08)")
    return images.astype(np.uint8)


def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike,
                  name: str | None = None) -> Dataset:
    """A Dataset from an IDX images file (N, H, W) and an IDX labels file (N,).

    Images become (N, 1, H, W) uint8 (float IDX images stay float, as float32); labels int64.
    `name` defaults to the images file's name.

    Example:
        >>> test = load_idx_pair("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
        >>> test.x.shape, test.x.dtype
        ((10000, 1, 28, 28), dtype('uint8'))
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        hint = " (that looks like a labels file: are the two paths swapped?)" if images.ndim == 1 else ""
        raise DatasetError(f"{images_path}: images must be 3-D (count, height, width), got shape "
                           f"{images.shape}{hint}")
    if labels.ndim != 1:
        hint = " (that looks like an images file: are the two paths swapped?)" if labels.ndim == 3 else ""
        raise DatasetError(f"{labels_path}: labels must be 1-D (count,), got shape {labels.shape}{hint}")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels: use the images and labels files of the same split")
    if labels.dtype.kind not in "iu":
        raise DatasetError(f"{labels_path}: labels must be integers, got IDX type {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"{labels_path}: negative label {labels.min()}: labels must be 0, 1, 2, ...")
    images = _images_to_uint8(images, images_path)
    return Dataset(images, labels.astype(np.int64), name=name or Path(images_path).name)
