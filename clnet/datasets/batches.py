"""Host batches: an array's or an ImageStream's samples cut into batches, a rank's rows of each,
the one cut that fit, evaluate and predict feed their runners from."""

from __future__ import annotations

from contextlib import closing

import numpy as np

from .stream import ImageStream


def host_batches(x, rows, batch_size: int, part, start: int = 0, **stream):
    """Yield (images, their rows, the global batch's size n) for the batches start, start + 1, ...
    of `rows` of x (default all of it, in order) cut into batches of `batch_size`: the rows part(n)
    of each (a rank's part, as `ImageStream.batches` takes it). x is an array or an ImageStream;
    `stream` are the stream's further keywords (seed, epoch, train, augment), and its unreadable
    images met are in its `skipped` at the end.

    Example:
        >>> for images, used, n in host_batches(x, None, 256, functools.partial(rank_part, world=world)):
        ...     runner.infer(images, targets[used], batch=n)
    """
    n = len(x if rows is None else rows)
    firsts = range(start * batch_size, n, batch_size)
    sizes = [min(batch_size, n - first) for first in firsts]
    if isinstance(x, ImageStream):
        # closing this generator closes the stream's, which waits for the batches in flight
        with closing(x.batches(np.arange(n) if rows is None else rows, batch_size, start, part=part,
                               **stream)) as feed:
            for (images, used), size in zip(feed, sizes):
                yield images, used, size
        return
    for first, size in zip(firsts, sizes):
        a, b = part(size)
        if rows is None:  # a slice: a view of a memory-mapped file or of a pyopencl array
            yield x[first + a:first + b], np.arange(first + a, first + b), size
        else:
            used = rows[first + a:first + b]
            yield x[used], used, size
