"""Streamed image folders: images decoded batch by batch, as they are used, by worker processes,
instead of all at once into memory.

`ImageStream` knows the files, their labels and the transforms; `batches()` hands out the batches
of an order, decoded by a `workers.DecodePool`. Model.fit, evaluate and predict take a stream where
they take a Dataset.

When to stream: an image folder streams when asked (`stream=True`, `clnet-train --stream`) and, by
default (`stream="auto"`), when its decoded images would take more than the memory clnet allows
itself: `memory_budget()`, half the memory available when the folder is opened (MemAvailable in
/proc/meminfo, else os.sysconf's free pages), or the bytes in the environment variable
CLNET_MEMORY_LIMIT (e.g. "8G"). A folder streamed by that rule is resized as it would have been in
memory (stretched to the size); one streamed when asked is resized and centre-cropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..errors import DatasetError, InputError
from .feed import channel_statistics, parse_augment
from .images import _import_pillow, decodes_to_colour
from .transforms import CROP_FRACTION, Transform
from .workers import REPLACEMENTS, DecodePool

MEMORY_ENV = "CLNET_MEMORY_LIMIT"
COLOUR_PROBES = 32   # images looked at (spread over the folder) to decide grey or colour
SHOWN_SKIPPED = 10   # bad files named in a report
STATISTICS_SAMPLES = 512  # images that normalize=True measures a stream's channels on


def memory_budget() -> int:
    """The bytes of decoded images clnet keeps in host memory before it streams instead:
    $CLNET_MEMORY_LIMIT (a number of bytes, or with K, M, G or T), else half the memory available now.

    Example:
        >>> os.environ["CLNET_MEMORY_LIMIT"] = "2G"; memory_budget()
        2147483648
    """
    given = os.environ.get(MEMORY_ENV, "").strip()
    if given:
        units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
        number, unit = (given[:-1], units.get(given[-1].upper())) if given[-1].isalpha() else (given, 1)
        try:
            if unit is None:
                raise ValueError
            return int(float(number) * unit)
        except ValueError:
            raise InputError(f"{MEMORY_ENV}={given!r} is not a number of bytes (e.g. 8G, 512M)") from None
    try:  # Linux counts the page cache it would give back as available
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")) // 2
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf: assume 4 GB
        return 2 ** 31


def available_cores() -> int:
    """The cores this process may run on (a container's share, where the system says), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Job:
    """What the workers need: the files, as one array of bytes (forked workers read it without
    touching a Python object per file, so its pages stay shared), and what to do with unreadable ones."""

    def __init__(self, files, on_error):
        self.paths, self.on_error = np.array([os.fsencode(f) for f in files], dtype=bytes), on_error
        self.count = len(self.paths)

    def path(self, i):
        return os.fsdecode(self.paths[i])

    def pillow(self):
        return _import_pillow(self.path(0) if self.count else "images")


class ImageStream:
    """An image folder (or a list of image files) streamed: x is never held whole; batches are
    decoded by worker processes when a fit, evaluate or predict asks for them. Make one with
    `ImageFolder(root, image_size, stream=True, ...)`.

    Training batches get the training transforms (`augment`: "random-resized-crop" and/or "flip",
    drawn by (seed, epoch, sample)); every other batch is resized (short side to size / 0.875) and
    centre-cropped, or with crop_fraction=None stretched to the size.

    Args:
        files: the image files, in sample order.
        labels: their integer labels.
        classes: the class names.
        image_size: (height, width) of every sample.
        channels: 1 or 3.
        augment: the training transforms, e.g. "random-resized-crop,flip" (a device crop, "crop=N",
            may be added).
        workers: decoding processes (None: the cores; 0: in this process).
        on_error: "skip" replaces an unreadable image by the next readable one and reports it;
            "raise" stops, naming the file.
        crop_fraction: the share of the resized image that evaluation's centre crop keeps.
        prefetch: batches decoded ahead.
        name: for messages.

    Attributes:
        skipped: [(file, reason)] of the unreadable images met by the last `batches()` run, each once.

    Example:
        >>> train = ImageFolder("imagenet/train", image_size=224, stream=True, augment="random-resized-crop,flip")
        >>> model.fit(train, epochs=90, batch_size=256)
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, files: Sequence, labels, classes: Sequence[str], image_size: tuple, channels: int,
                 augment: str | None = None, workers: int | None = None, on_error: str = "skip",
                 crop_fraction: float | None = CROP_FRACTION, prefetch: int = 2, name: str = "images"):
        if on_error not in ("skip", "raise"):
            raise InputError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        workers = available_cores() if workers is None else int(workers)
        if workers < 0:
            raise InputError(f"workers must be 0 (decode in this process) or more, not {workers}")
        if crop_fraction is not None and not 0 < crop_fraction <= 1:
            raise InputError(f"crop_fraction must lie in (0, 1], not {crop_fraction}")
        if channels not in (1, 3) or len(labels) != len(files):
            raise InputError(f"{name}: channels must be 1 or 3 (got {channels}), and one label per file (got "
                             f"{len(labels)} for {len(files)} files)")
        parse_augment(augment)  # checked now
        self.files, self.y = [str(f) for f in files], np.asarray(labels, np.int64)
        self.classes, self.name = list(classes), name
        self.image_size, self.channels = tuple(int(v) for v in image_size), int(channels)
        self.augment, self.workers, self.on_error = augment, workers, on_error
        self.crop_fraction, self.prefetch = crop_fraction, int(prefetch)
        self.skipped = []
        self._pools = {}  # batch size -> DecodePool

    @property
    def shape(self) -> tuple:
        return (len(self.files), self.channels, *self.image_size)

    @property
    def image_shape(self) -> tuple:
        return self.shape[1:]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self):
        return (f"ImageStream({self.name!r}: {len(self)} images streamed as {self.image_shape} uint8, "
                f"{self.num_classes} classes, {self.workers} workers)")

    def with_channels(self, channels: int) -> ImageStream:
        """The same stream decoding to `channels` (1 or 3)."""
        return ImageStream(self.files, self.y, self.classes, self.image_size, channels, self.augment, self.workers,
                           self.on_error, self.crop_fraction, self.prefetch, self.name)

    def transform(self, train: bool, augment: str | None = None) -> Transform:
        """The Transform of training batches (by `augment`, default the stream's) or of the others."""
        if not train:
            return Transform(self.image_size, crop_fraction=self.crop_fraction)
        augment = parse_augment(self.augment if augment is None else augment)
        return Transform(self.image_size, augment.resized_crop, augment.flip, self.crop_fraction)

    def batches(self, order, batch_size: int, start: int = 0, seed: int = 0, epoch: int = 0, train: bool = False,
                augment: str | None = None, part=None):
        """Yield (images uint8 (n, C, H, W), samples used (n,)) for the batches start, start + 1, ...
        of `order` (sample indices) cut into batches of `batch_size`; with `part`, only the rows
        part(n) of each batch of n (a rank's part of every global batch, the last and shorter one
        included). The images are valid until three further batches are taken; `samples used` differ
        from the order's where an unreadable image was replaced (their labels are y[used]).
        Unreadable images met are in `skipped` at the end.

        Args:
            order: the sample indices in the order wanted.
            batch_size: the rows of a (global) batch.
            start: the first batch to yield (a resumed epoch's step).
            seed, epoch: key the training draws with the sample's index.
            train: training transforms (else evaluation's).
            augment: the training transforms, instead of the stream's.
            part: a function of a batch's rows n (an int, or an array of them) giving the rows
                [a, b) of it to decode (arrays for an array), as `clnet.replicas.rank_part` with its
                world bound does; None: every row.

        Example:
            >>> for images, used in train.batches(np.random.default_rng(0).permutation(len(train)), 256,
            ...                                   epoch=1, train=True):
            ...     runner.train(images, targets[used])
        """
        order = np.asarray(order, np.int64)
        firsts = np.arange(start * batch_size, len(order), batch_size)
        if part is None:
            rows, cut = batch_size, [order[i:i + batch_size] for i in firsts]
        else:  # the ring holds the most rows `part` gives any batch: a short last one may have more
            sizes = np.arange(1, batch_size + 1)
            starts, stops = part(sizes)
            if not np.all((0 <= starts) & (starts <= stops) & (stops <= sizes)):
                raise InputError(f"part must give rows (a, b) with 0 <= a <= b <= n of a batch of n, not {part}")
            rows = int((stops - starts).max())
            cut = [order[i + starts[n - 1]:i + stops[n - 1]]
                   for i, n in zip(firsts, np.minimum(len(order) - firsts, batch_size))]
        pool = self._pools.get(rows)
        if pool is None:
            pool = self._pools[rows] = DecodePool(_Job(self.files, self.on_error), self.image_shape,
                                                  max(rows, 1), self.workers, self.prefetch)
        self.skipped, seen = [], set()
        for images, used, bad in pool.run(cut, seed, epoch, self.transform(train, augment)):
            for path, reason in bad:
                if path not in seen:
                    seen.add(path)
                    self.skipped.append((path, reason))
            yield images, used

    def statistics(self, seed: int = 0, rows=None, count: int = STATISTICS_SAMPLES) -> tuple:
        """Per-channel (mean, std) in [0, 1] units of `count` images (of `rows`, default all)
        chosen by `seed`, decoded as evaluation decodes them.

        Example:
            >>> mean, std = train.statistics()
        """
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        chosen = np.sort(np.random.default_rng(seed).permutation(rows)[:count])
        batch = min(len(chosen), 64)
        had_pool = batch in self._pools
        x = np.concatenate([images.copy() for images, _ in self.batches(chosen, batch)])
        if not had_pool:  # its workers are not needed any more
            self._pools.pop(batch).close()
        return channel_statistics(x)

    @property
    def ring_bytes(self) -> int:
        """The host memory of the decoded batches now allocated (the shared rings)."""
        return sum(pool.nbytes for pool in self._pools.values())

    def close(self):
        """Stop the workers and free the shared memory; a later `batches()` starts them again."""
        for pool in self._pools.values():
            pool.close()
        self._pools = {}


def skipped_report(skipped) -> str:
    """ "3 unreadable images skipped (replaced by the next readable one): a.jpg (OSError: ...); ..."
    naming the first few of [(file, reason)]."""
    first = "; ".join(f"{path} ({reason})" for path, reason in skipped[:SHOWN_SKIPPED])
    more = f"; and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    return f"{len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''} skipped (replaced by the next " \
           f"readable one): {first}{more}"


def stream_folder(root, files, labels, classes, size, grayscale, augment, workers, on_error, crop_fraction,
                  name) -> ImageStream:
    """The ImageStream of a listed image folder: `size` (h, w), else the first image's; channels
    from `grayscale`, else 3 when any of COLOUR_PROBES images spread over the folder is colour."""
    Image = _import_pillow(root)
    size = size or _first_size(Image, files)
    if grayscale is None:
        probes = files[::max(1, len(files) // COLOUR_PROBES)][:COLOUR_PROBES]
        channels = 3 if any(decodes_to_colour(Image, f) for f in probes) else 1
    else:
        channels = 1 if grayscale else 3
    return ImageStream(files, labels, classes, size, channels, augment, workers, on_error, crop_fraction, name=name)


def decoded_bytes(root, files, size, grayscale, undecided) -> int:
    """The host memory `files` would take decoded: of `size`, else the first image's size; one
    channel where grayscale is True, 3 where it is False, and `undecided` channels where it is None
    (the images' colour then decides, which is not known before they are decoded: ImageFolder
    assumes colour to choose streaming, grey to refuse a folder, each erring away from a failure)."""
    try:
        size = size or _first_size(_import_pillow(root), files)
    except DatasetError:  # decoded into memory, the first bad file is reported
        return 0
    channels = {True: 1, False: 3, None: undecided}[grayscale]
    return len(files) * channels * size[0] * size[1]


def _first_size(Image, files):
    """(height, width) of the first readable of the first images, from its header."""
    for path in files[:REPLACEMENTS + 1]:
        try:
            with Image.open(path) as image:
                return image.size[::-1]
        except Exception:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
            continue
    raise DatasetError(f"{files[0]} and the images after it are unreadable: pass image_size, or check the folder")
