"""Packed datasets: an image folder decoded and resized once into memory-mapped uint8 files, read
back with no decoding.

A pack is a folder:

    DEST/
      index.clnetpack   the header and the index, text
      train.u8          the training images, uint8 (N, C, H, W) in C order, nothing else
      test.u8           the held-out images, when the source has test/ (or val/, valid/, validation/)

`index.clnetpack` starts with one line, "CLNETPACK <version> <crc32>": the magic string, the
format's version (1) and the CRC-32 (8 hex digits) of everything after that line, which is JSON:
{"image_size": [H, W], "channels": C, "classes": [...], "splits": {"train": {"data": "train.u8",
"count": N, "crc32": CRC-32 of the data file, "labels": [...], "files": [paths relative to the
source], "skipped": bad images left out}, "test": {...}}}. The header is checked whenever a pack is
opened, the size of each data file too; the data's CRC-32, computed as it was written, is checked
on demand (`verify=True`), since that reads every byte.

Packing writes into DEST.partial beside DEST, recording its progress there (which images are
written, the running CRC-32), and renames the folder to DEST only when every image is in. An
interrupted pack is refused by `open_pack` with a message to re-run `pack`, which resumes after the
images already written (or starts over, should the source's files or the options have changed).
Worker processes decode; the main process writes in the source's order, so the bytes do not depend
on the number of workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..files import readable_size, replace_atomically
from .dataset import Dataset
from .folder import _image_size, list_classes
from .images import _decode, _import_pillow, decodes_to_colour, to_chw
from .registry import class_mapping, split_folders

MAGIC = "CLNETPACK"
VERSION = 1
INDEX = "index.clnetpack"
PROGRESS = "progress.json"
PARTIAL_SUFFIX = ".partial"
CHUNK = 256  # images decoded between progress records: bounds memory, and what an interruption may redo
SHOWN_SKIPPED = 10  # bad files named in the report


@dataclass
class PackReport:
    """What `pack` did: the pack's folder, the images written per split, and the images skipped
    as unreadable (their number per split, and the first few files with the reason)."""
    path: Path
    counts: dict
    skipped: dict
    first_skipped: list


def partial_path(destination: Path) -> Path:
    """Where a pack of `destination` is written until it is complete."""
    return destination.with_name(destination.name + PARTIAL_SUFFIX)


# ---------------------------------------------------------------- packing (in the worker processes)


def _decode_file(task):
    """(C*H*W bytes, None) of one image, or (None, the reason) when it cannot be read."""
    path, grayscale, size, channels = task
    try:
        array = _decode(_import_pillow(path), path, grayscale, size)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        return None, f"{type(exc).__name__}: {exc}"
    image = np.empty((channels, *size), np.uint8)
    image[:] = to_chw(array)
    return image.tobytes(), None


def _is_colour(path):
    return decodes_to_colour(_import_pillow(path), path)


# ---------------------------------------------------------------- packing


def pack(source: str | os.PathLike, destination: str | os.PathLike, image_size: int | Sequence[int],
         grayscale: bool | None = None, workers: int | None = None, on_error: str = "skip") -> PackReport:
    """Decode and resize an image folder once into a pack at `destination` (see the module's
    docstring for the format), which `clnet.datasets.load(destination)` reads with no decoding.

    The source is read as `load` reads it: one sub-folder of images per class, or train/ and test/
    (or val/) folders of those. Re-running an interrupted pack with the same arguments resumes it.

    Args:
        source: the image folder.
        destination: the pack's folder; it must not exist yet, or be empty.
        image_size: (height, width) every image is resized to (bilinear), or one int for a square.
        grayscale: None gives RGB when any training image is colour and one channel otherwise;
            True or False forces one or three channels (as ImageFolder).
        workers: decoding processes (default: the cores).
        on_error: "skip" leaves unreadable images out and counts them; "raise" stops at the first,
            naming it (the images before it stay packed, for a resumed run).

    Example:
        >>> report = clnet.datasets.pack("photos", "photos-128", image_size=128)
        >>> train, test = clnet.datasets.load("photos-128")     # memory-mapped
    """
    source, destination = Path(source), Path(destination)
    size = _image_size(image_size)
    if size is None:
        raise ValueError("image_size is required: a pack holds images of one size")
    if grayscale not in (None, True, False):
        raise ValueError(f"grayscale must be None, True or False, not {grayscale!r}")
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise DatasetError(f"{destination} exists already: remove it or choose another destination")
    _import_pillow(source)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder: give a folder of class folders, or of train/ and test/ "
                           "folders of those")
    classes, splits = _list_splits(source)
    plan = {"version": VERSION, "image_size": list(size), "grayscale": grayscale, "classes": classes,
            "splits": {name: [[str(f.relative_to(source)), label] for f, label in zip(files, labels)]
                       for name, (files, labels) in splits.items()}}
    fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()

    partial = partial_path(destination)
    progress = _read_progress(partial)
    if progress is None or progress.get("plan") != fingerprint:  # nothing to resume, or another plan
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        progress = {"plan": fingerprint, "source": str(source), "destination": str(destination), "channels": None,
                    "splits": {}}
    with multiprocessing.get_context().Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        imap = (lambda f, tasks: pool.imap(f, tasks, chunksize=8)) if pool else map
        if progress["channels"] is None:
            colour = _any_colour(splits["train"][0], imap) if grayscale is None else not grayscale
            progress["channels"] = 3 if colour else 1
            _write_progress(partial, progress)
        channels = progress["channels"]
        for name, (files, _) in splits.items():
            _pack_split(partial, name, files, size, channels, on_error, progress, imap)
    return _finish(partial, destination, plan, splits, progress)


def _finish(partial, destination, plan, splits, progress):
    """Write the index of a pack whose images are all in, and move it into place; returns the report."""
    index = {"image_size": plan["image_size"], "channels": progress["channels"], "classes": plan["classes"],
             "splits": {}}
    report = PackReport(destination, {}, {}, [])
    for name, (files, labels) in splits.items():
        done = progress["splits"][name]
        skipped = {i for i, _ in done["skipped"]}
        kept = [i for i in range(len(files)) if i not in skipped]
        index["splits"][name] = {"data": f"{name}.u8", "count": done["count"], "crc32": f"{done['crc32']:08x}",
                                 "labels": [labels[i] for i in kept],
                                 "files": [plan["splits"][name][i][0] for i in kept], "skipped": len(skipped)}
        report.counts[name], report.skipped[name] = done["count"], len(skipped)
        report.first_skipped += [(str(files[i]), reason) for i, reason in done["skipped"]]
    report.first_skipped = report.first_skipped[:SHOWN_SKIPPED]
    body = json.dumps(index, separators=(",", ":")).encode()
    replace_atomically(partial / INDEX, lambda f: f.write(f"{MAGIC} {VERSION} {zlib.crc32(body):08x}\n".encode()
                                                          + body))
    (partial / PROGRESS).unlink()
    if destination.exists():
        destination.rmdir()  # empty, as checked: os.replace cannot replace a folder everywhere
    os.replace(partial, destination)
    return report


def _list_splits(source):
    """(classes, {"train": (files, labels), "test": (files, labels)}) with test's labels in train's classes."""
    train_dir, test_dir = split_folders(source)
    classes, files, labels = list_classes(train_dir)
    splits = {"train": (files, labels)}
    if test_dir is not None:
        test_classes, test_files, test_labels = list_classes(test_dir)
        mapping = class_mapping(classes, test_classes, f"{source.name}/{test_dir.name}")
        splits["test"] = (test_files, [int(mapping[label]) for label in test_labels])
    return classes, splits


def _pack_split(partial, name, files, size, channels, on_error, progress, imap):
    """Append the images of one split not yet written to its data file, saving progress as it goes."""
    done = progress["splits"].setdefault(name, {"next": 0, "count": 0, "crc32": 0, "skipped": []})
    if done["next"] == len(files):
        return
    image_bytes = channels * size[0] * size[1]
    grayscale = channels == 1
    path = partial / f"{name}.u8"
    with open(path, "r+b" if path.exists() else "w+b") as data:
        data.truncate(done["count"] * image_bytes)  # drop what was written after the last record
        data.seek(0, os.SEEK_END)
        try:
            while done["next"] < len(files):
                chunk = files[done["next"]:done["next"] + CHUNK]
                for image, reason in imap(_decode_file, [(f, grayscale, size, channels) for f in chunk]):
                    if image is None:
                        if on_error == "raise":
                            raise DatasetError(f"{files[done['next']]}: unreadable or corrupt image ({reason}): "
                                               "replace or delete the file, or pack with on_error='skip' "
                                               "(--on-error skip)")
                        done["skipped"].append((done["next"], reason))
                    else:
                        data.write(image)
                        done["crc32"] = zlib.crc32(image, done["crc32"])
                        done["count"] += 1
                    done["next"] += 1
                _save(data, partial, progress)
        finally:  # also on an error or Ctrl-C: what is written is kept for the next run
            _save(data, partial, progress)


def _any_colour(files, imap):
    """Whether any of the images decodes to colour, looked at a chunk at a time."""
    return any(any(imap(_is_colour, files[start:start + CHUNK])) for start in range(0, len(files), CHUNK))


def _save(data, partial, progress):
    data.flush()
    os.fsync(data.fileno())
    _write_progress(partial, progress)


def _write_progress(partial, progress):
    replace_atomically(partial / PROGRESS, lambda f: f.write(json.dumps(progress).encode()))


def _read_progress(partial):
    try:
        return json.loads((partial / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- reading


def is_pack(path: Path) -> bool:
    """Whether `path` is a pack, or an unfinished one (which `open_pack` refuses)."""
    return (path / INDEX).is_file() or (path / PROGRESS).is_file() or \
        (not path.exists() and partial_path(path).is_dir())


def open_pack(path: str | os.PathLike, verify: bool = False) -> tuple[Dataset, Dataset | None]:
    """(train, test) Datasets of a pack, their images memory-mapped (read from disk as they are used);
    test is None when the pack has no test split. Raises DatasetError for an unfinished, corrupt or
    truncated pack.

    Args:
        path: the pack's folder, as `pack` wrote it.
        verify: also check the CRC-32 of the images (reads every byte).

    Example:
        >>> train, test = open_pack("photos-128", verify=True)
    """
    path = Path(path)
    unfinished = path if (path / PROGRESS).is_file() else partial_path(path)
    if unfinished == path or (not path.exists() and unfinished.is_dir()):
        progress = _read_progress(unfinished) or {}
        raise DatasetError(f"{path}: an unfinished pack (in {unfinished}): re-run clnet-pack "
                           f"{progress.get('source', 'SOURCE')} {progress.get('destination', 'DEST')} with the same "
                           "options to finish it (it resumes after the images already written)")
    index = _read_index(path)
    c, (h, w) = index["channels"], index["image_size"]
    splits = []
    for name, split in index["splits"].items():
        data, count = path / split["data"], split["count"]
        expected = count * c * h * w
        actual = data.stat().st_size if data.is_file() else None
        if actual != expected:
            found = "is missing" if actual is None else f"holds {actual:,} bytes"
            raise DatasetError(f"{data} {found} but the pack's index says {count} images of {c}x{h}x{w} "
                               f"({expected:,} bytes): the pack is damaged; pack the images again with clnet-pack")
        if verify and _crc32_of(data) != int(split["crc32"], 16):
            raise DatasetError(f"{data}: the images do not match the checksum the pack recorded: the file is "
                               "damaged; pack the images again with clnet-pack")
        x = np.memmap(data, np.uint8, "r", shape=(count, c, h, w)) if count else np.empty((0, c, h, w), np.uint8)
        dataset = Dataset(x, np.array(split["labels"], np.int64), classes=index["classes"],
                          name=f"{path.name}/{name}")
        dataset.files = split["files"]
        splits.append(dataset)
    return splits[0], splits[1] if len(splits) > 1 else None


def _read_index(path):
    """The JSON of a pack's index, after checking its magic string, version and checksum."""
    damaged = "pack the images again with clnet-pack"
    readable_size(path / INDEX, DatasetError)  # a FIFO or a device is never opened
    try:
        first, _, body = (path / INDEX).read_bytes().partition(b"\n")
    except OSError as exc:
        raise DatasetError(f"{path / INDEX}: cannot read the pack's index ({exc.strerror or exc})") from None
    parts = first.decode("latin-1").split(" ")
    if len(parts) != 3 or parts[0] != MAGIC:
        raise DatasetError(f"{path / INDEX}: not a clnet pack's index (it does not start with {MAGIC}): {damaged}")
    if parts[1] != str(VERSION):
        raise DatasetError(f"{path / INDEX}: a pack of format version {parts[1]}, but this clnet reads version "
                           f"{VERSION}: upgrade clnet, or {damaged}")
    if parts[2] != f"{zlib.crc32(body):08x}":
        raise DatasetError(f"{path / INDEX}: the pack's index is corrupt (its checksum does not match): {damaged}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DatasetError(f"{path / INDEX}: the pack's index is not valid JSON ({exc}): {damaged}") from None


def _crc32_of(path):
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc
