"""Decoding worker processes that fill a ring of shared-memory batch slots, for a streamed dataset.

The main process splits each batch into one chunk of rows per worker and queues the chunks of a few
batches ahead (`prefetch`); a worker decodes a chunk straight into the batch's slot of one
shared-memory block (an anonymous shared mapping that forked workers inherit, else a named
SharedMemory) and answers with the samples it used (an unreadable image is replaced by the
next sample of the listing, and named). Batches are handed out in order, whatever order the chunks
finish in. The ring holds `prefetch + HELD` batches and nothing else grows: host memory is bounded
whatever the dataset's size.

Waiting for a worker has a timeout: a worker that died (killed, out of memory) ends the run with a
DatasetError within a second; a worker whose main process died exits on its own.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import queue
import signal
from multiprocessing import shared_memory

import numpy as np

from ..errors import DatasetError
from ..text import format_bytes
from .transforms import decode_into, sample_rng

HELD = 4        # slots of batches handed out that the consumer may still read: the last one, and the
                # two before it that the runner may still be uploading (it uploads without blocking
                # and waits for a staging slot's upload two steps later), and one to spare
POLL = 0.5      # seconds between checks that the workers live
REPLACEMENTS = 16  # unreadable images in a row (by sample index) before the run stops
SHM = "/dev/shm"  # where SharedMemory lives on Linux: a container may make it small


def _free_shared_memory():
    """The bytes free in /dev/shm, None where there is none to ask."""
    try:
        info = os.statvfs(SHM)
    except (OSError, AttributeError):
        return None
    return info.f_bavail * info.f_frsize


def decode_chunk(job, images: np.ndarray, samples, seed: int, epoch: int, transform):
    """Decode `samples` (indices of job's files, 0 to job.count - 1) into `images` (rows of a slot), in order, by
    `transform` (its draws keyed by seed, epoch and sample); returns (the samples used,
    [(file, reason)] of the unreadable ones). An unreadable image is replaced by the next readable
    one by index (on_error "skip"), or stops with a DatasetError ("raise")."""
    Image = job.pillow()
    used, bad = np.empty(len(samples), np.int64), []
    for row, sample in enumerate(samples):
        for tries in range(REPLACEMENTS + 1):
            candidate = (int(sample) + tries) % job.count
            rng = sample_rng(seed, epoch, candidate) if transform.random else None
            try:
                decode_into(Image, job.path(candidate), images[row], transform, rng)
                break
            except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
                reason = f"{type(exc).__name__}: {exc}"
                if job.on_error == "raise":
                    raise DatasetError(f"{job.path(candidate)}: unreadable or corrupt image ({reason}): replace or "
                                       "delete the file, or pass on_error='skip' to skip such images") from None
                bad.append((job.path(candidate), reason))
        else:
            raise DatasetError(f"{job.path(int(sample))} and the {REPLACEMENTS} images after it are unreadable: "
                               "check the folder (a disk or network failure?)")
        used[row] = candidate
    return used, bad


def _work(job, memory, slot_shape, tasks, results, parent):
    """A worker's loop: decode the chunks it is given into the shared slots until told to stop.
    `memory` is the ring: an anonymous shared mapping inherited by a fork, or a SharedMemory's name."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if isinstance(memory, str):
        memory = shared_memory.SharedMemory(memory)
    ring = np.ndarray(slot_shape, np.uint8, memory if isinstance(memory, mmap.mmap) else memory.buf)
    try:
        while True:
            try:
                task = tasks.get(timeout=POLL)
            except queue.Empty:
                if os.getppid() != parent:  # the main process is gone
                    return
                continue
            if task is None:
                return
            run, slot, row, samples, seed, epoch, transform = task
            try:
                used, bad = decode_chunk(job, ring[slot, row:row + len(samples)], samples, seed, epoch, transform)
                results.put((run, slot, row, used, bad, None))
            except Exception as exc:
                results.put((run, slot, row, None, [], str(exc) if isinstance(exc, DatasetError)
                             else f"{type(exc).__name__}: {exc}"))
    finally:
        del ring
        if not isinstance(memory, mmap.mmap):
            memory.close()


class DecodePool:
    """Worker processes decoding `job`'s samples into a shared ring of batch slots.

    Args:
        job: what to decode: a picklable object with `count` (files), `path(i)`, `on_error`
            ("skip" or "raise") and `pillow()` (the PIL.Image module), as a streamed dataset's.
        sample_shape: (C, H, W) of one decoded sample.
        batch_size: the most rows of a batch.
        workers: processes (0 decodes in this process, for debugging).
        prefetch: batches decoded ahead of the one being consumed.
        start_method: multiprocessing's ("fork", "spawn", "forkserver"; default its default).

    Example:
        >>> pool = DecodePool(job, (3, 224, 224), 256, workers=8)
        >>> batches = [order[i:i + 256] for i in range(0, len(order), 256)]
        >>> for images, used, bad in pool.run(batches, seed=0, epoch=1, transform=Transform((224, 224), True, True)):
        ...     ...
        >>> pool.close()
    """

    def __init__(self, job, sample_shape, batch_size, workers, prefetch=2, start_method=None):
        self.job, self.workers, self.prefetch = job, int(workers), int(prefetch)
        self.slots = self.prefetch + HELD
        self.slot_shape = (self.slots, int(batch_size), *sample_shape)
        self.nbytes = int(np.prod(self.slot_shape))
        self._context = multiprocessing.get_context(start_method)
        self._memory, self._processes, self._run = None, [], 0

    def _start(self):
        size = max(self.nbytes, 1)
        if self._context.get_start_method() == "fork":  # inherited: not bounded by the size of /dev/shm
            self._memory = mmap.mmap(-1, size)
            shared, buffer = self._memory, self._memory
        else:
            free = _free_shared_memory()
            if free is not None and free < size:
                raise DatasetError(f"the stream's batches need {format_bytes(size)} of shared memory but "
                                   f"{SHM} has {format_bytes(free)} free: pass a smaller batch size, or give "
                                   f"{SHM} more room (docker run --shm-size=...)")
            self._memory = shared_memory.SharedMemory(create=True, size=size)
            shared, buffer = self._memory.name, self._memory.buf
        self._ring = np.ndarray(self.slot_shape, np.uint8, buffer)
        self._tasks, self._results = self._context.Queue(), self._context.Queue()
        for _ in range(self.workers):
            process = self._context.Process(target=_work, daemon=True, args=(
                self.job, shared, self.slot_shape, self._tasks, self._results, os.getpid()))
            process.start()
            self._processes.append(process)

    def run(self, batches, seed: int, epoch: int, transform):
        """Yield (images (n, C, H, W), samples used (n,), [(file, reason)] skipped) for each batch
        of sample indices in `batches`, in order, decoded by `transform` with draws keyed by
        (seed, epoch, sample). The images are a view of a slot, valid until HELD - 1 further
        batches have been taken; `prefetch` batches after the one handed out are being decoded."""
        batches = [np.asarray(b, np.int64) for b in batches]
        if self.workers == 0:
            ring = np.empty(self.slot_shape, np.uint8)
            for k, samples in enumerate(batches):
                images = ring[k % self.slots, :len(samples)]
                yield (images, *decode_chunk(self.job, images, samples, seed, epoch, transform))
            return
        if self._memory is None:
            self._start()
        self._run += 1
        pending, issued = {}, 0  # batch number -> [chunks left, samples used, (row, skipped), errors (row, message)]
        try:
            for k, samples in enumerate(batches):
                while issued < min(len(batches), k + 1 + self.prefetch):
                    pending[issued] = self._issue(issued, batches[issued], (seed, epoch, transform))
                    issued += 1
                while pending[k][0]:
                    self._receive(pending)
                _, used, bad, errors = pending.pop(k)
                if errors:  # the first in the order, whichever worker failed first
                    self.close()
                    raise DatasetError(min(errors)[1])
                # in the order of the rows, whichever worker answered first
                yield self._ring[k % self.slots, :len(samples)], used, [b for _, chunk in sorted(bad) for b in chunk]
        finally:  # chunks still queued would write into the slots of the next run: wait for them
            if self._memory is not None:  # (an error has closed the pool)
                try:
                    while any(p[0] for p in pending.values()):
                        self._receive(pending)
                except BaseException:
                    self.close()
                    raise

    def _issue(self, k, samples, how):
        """Queue batch k's chunks, one per worker; returns its pending record."""
        bounds = np.linspace(0, len(samples), min(self.workers, len(samples)) + 1).astype(int)
        chunks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        for a, b in chunks:
            self._tasks.put((self._run, k % self.slots, int(a), samples[a:b], *how))
        return [len(chunks), np.empty(len(samples), np.int64), [], []]

    def _receive(self, pending):
        """Take one answer from the workers into `pending`; a dead worker or a worker's error raises."""
        while True:
            try:
                run, slot, row, used, bad, error = self._results.get(timeout=POLL)
                break
            except queue.Empty:
                self._check_alive()
        self._check_alive()  # also when others answer: the chunk a dead worker held never will
        if run != self._run:
            return
        k = next(k for k, p in pending.items() if k % self.slots == slot and p[0])
        record = pending[k]
        record[0] -= 1
        if error is not None:
            record[3].append((row, error))
        else:
            record[1][row:row + len(used)] = used
            record[2].append((row, bad))

    def _check_alive(self):
        dead = [p for p in self._processes if not p.is_alive()]
        if dead:
            self.close()
            code = dead[0].exitcode
            how = f"killed by signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
            raise DatasetError(f"an image decoding worker (process {dead[0].pid}) died ({how}): the stream cannot "
                               "go on; look for a lack of memory, or pass fewer workers (--workers)")

    def close(self):
        """Stop the workers and free the shared memory (the pool starts again when next run)."""
        for _ in self._processes:
            try:
                self._tasks.put_nowait(None)
            except (ValueError, OSError):
                pass
        for process in self._processes:
            process.join(timeout=2)
            if process.is_alive():
                process.terminate()
                process.join()
        self._processes = []
        if self._memory is not None:
            self._ring = None
            for q in (self._tasks, self._results):
                q.close()
                q.cancel_join_thread()
            if not isinstance(self._memory, mmap.mmap):
                self._memory.unlink()
            try:
                self._memory.close()
            except BufferError:  # a consumer still holds a batch: the memory goes with its last view
                pass
            self._memory = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # at the interpreter's exit, what close() uses may be gone already
            pass
