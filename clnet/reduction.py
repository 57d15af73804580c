"""The gradients' sum at the seam, in buckets that leave each device as the backward pass writes
them: the flat gradient buffer cut into contiguous buckets from its end (the last layers, whose
gradients the backward pass writes first), each read into host memory on the device's copy queue
as soon as the last backward launch touching it has run, while the device goes on with the layers
before. The host adds each bucket over the replicas in replica order in float64 as it arrives
(several buckets at once, in worker threads), and under MPI sums it over the ranks (one Allreduce
per bucket, in bucket order); the total goes back to every replica before its update. The order
of every addition is fixed, so the result is the same as one sum of whole buffers, bit for bit.

`SeamTimes` measures it, step by step: the compute (from the step's start until the last bucket
has arrived), the reduction work (adding, the ranks' sums and the uploads) and how much of that
work the compute hid (done before the last bucket arrived).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .tensor import DeviceTensor, pinned

BUCKET = 1 << 20  # elements (4 MiB) per bucket: few enough reads, early enough the first
ADDERS = min(4, os.cpu_count() or 1)  # threads adding buckets over the replicas at once


def buckets(plan, grads: DeviceTensor, first: int, stop: int, size: int) -> list:
    """(lo, hi, launch) for each bucket [lo, hi) of `grads`, from the buffer's end: `launch` is the
    index of the last launch among plan.launches[first:stop] that touches the bucket.

    Args:
        plan: a compiled step's Plan; first, stop: its backward launches.
        grads: the flat gradient buffer that launches write through views.
        size: elements per bucket (the last, at the buffer's start, may be smaller).
    """
    touched = [(arg.offset - grads.offset, arg.offset - grads.offset + arg.size, i)
               for i in range(first, stop) for arg in plan.launches[i].args
               if isinstance(arg, DeviceTensor) and arg.buffer is grads.buffer]
    found = []
    for hi in range(grads.size, 0, -size):
        lo = max(0, hi - size)
        ready = max((i for a, b, i in touched if a < hi and lo < b), default=stop - 1)
        found.append((lo, hi, ready))
    return found


class BucketedSum:
    """Sums the replicas' flat gradients into every replica, bucket by bucket (module docstring).

    Args:
        runners: each replica's Runner (training, stopped at the seam), in replica order.
        world: the ranks (clnet.distributed.World), whose sums are added too.
        size: elements per bucket (default BUCKET).

    Example:
        >>> summed = BucketedSum(runners, world)
        >>> for runner, shard in zip(runners, shards):
        ...     runner.train(x[shard], y[shard], update=False)
        >>> summed.read([True] * len(runners))   # once every replica's launches are queued
        >>> summed.combine(weights)              # then each runner.update()
    """

    def __init__(self, runners, world, size: int | None = None):
        self.runners, self.world = runners, world
        self.grads = [runner.store.grads for runner in runners]
        ranges = [r.plan.phase_range("input", "backward") for r in runners]  # plans differ by their rows
        found = [buckets(r.plan, g, *span, size or BUCKET) for r, g, span in zip(runners, self.grads, ranges)]
        order = sorted(range(len(found[0])), key=lambda b: found[0][b][2])  # as the first replica's are ready
        self.buckets = [[replica[b] for b in order] for replica in found]
        self.starts = [start for start, _ in ranges]
        self.host = [pinned(g.device, g.size) for g in self.grads]  # page-locked: the reads run on their own
        self.total = np.empty(self.grads[0].size, np.float64)
        self.out = pinned(self.grads[0].device, self.grads[0].size)
        self.reads = [None] * len(runners)
        self.uploads = []  # of the last total, which must be done before `out` is written again
        self._adders = ThreadPoolExecutor(ADDERS, thread_name_prefix="clnet-sum")
        self.times = None  # a SeamTimes, when the steps are timed

    def read(self, trained) -> None:
        """Queue the reads of the buckets of every replica that `trained` a shard this step (its
        launches queued last), each after its last writer, on the replica's copy queue: bucket
        after bucket, each from every replica, so that no replica waits for another's reads (a
        driver may take a read as soon as it is queued)."""
        self.reads = [[] if done else None for done in trained]
        for b in range(len(self.buckets[0])):
            for i, reads in enumerate(self.reads):
                if reads is not None:
                    lo, hi, launch = self.buckets[i][b]
                    runner = self.runners[i]
                    reads.append(self.grads[i].view((hi - lo,), lo).read_into(
                        self.host[i][lo:hi], runner.device.copy_queue, [runner.last_events[launch - self.starts[i]]]))
        for runner, reads in zip(self.runners, self.reads):
            if reads is not None:
                runner.device.copy_queue.flush()

    def _add(self, b, weights):
        """Bucket b's weighted sum over the replicas (float64, in replica order) into `total`, in a
        worker thread (numpy lets go of the interpreter); returns the seconds it took."""
        began = time.perf_counter()
        lo, hi, _ = self.buckets[0][b]
        part = self.total[lo:hi]
        part.fill(0)
        for weight, reads, host in zip(weights, self.reads, self.host):
            if weight and reads is not None:
                part += weight * host[lo:hi]
        return time.perf_counter() - began

    def combine(self, weights) -> None:
        """Write sum_i weights[i] * gradients[i] (float64, in replica order, then over the ranks)
        into every replica's gradients, bucket by bucket as they arrive: each bucket's sum over the
        replicas in a worker thread, the ranks' sums in bucket order in this one (every rank makes
        the same collectives in the same order)."""
        for upload in self.uploads:  # `out` is free again
            upload.wait()
        added, summed, work = [], 0, 0.0

        def sum_ranks(b):
            lo, hi, _ = self.buckets[0][b]
            seconds = added[b].result()
            began = time.perf_counter()
            self.world.sum(self.total[lo:hi], "the gradients")
            self.out[lo:hi] = self.total[lo:hi]
            return seconds + time.perf_counter() - began

        for b in range(len(self.buckets[0])):
            for reads in filter(None, self.reads):
                reads[b].wait()
            arrived = time.perf_counter()
            added.append(self._adders.submit(self._add, b, weights))
            while summed < b and added[summed].done():  # the ranks' sums of buckets ready meanwhile
                work += sum_ranks(summed)
                summed += 1
        for b in range(summed, len(added)):
            work += sum_ranks(b)
        began = time.perf_counter()
        self.uploads = [grads.upload(self.out, wait=False) for grads in self.grads]  # the updates queue after
        self.reads = [None] * len(self.runners)
        if self.times is not None:
            self.times.end(arrived, work + time.perf_counter() - began)


class SeamTimes:
    """Per-step times of a replicated training step with a seam (not one a replica takes alone),
    in seconds, summed over the steps timed:
    `compute` (the step's start until its last gradient bucket arrived on the host), `reduction`
    (the host's work on the gradients: adding, the ranks' sums, the uploads) and `hidden` (the part
    of that work done while the devices were still computing).

    Example:
        >>> times = model.time_seam()          # before fit
        >>> model.fit(x, y, batch_size=1024)
        >>> times.per_step()                   # {"compute": ..., "reduction": ..., "hidden": ...}
    """

    def __init__(self):
        self.reset()

    def reset(self):
        """Forget the steps timed so far (after a warm-up)."""
        self.steps, self.compute, self.reduction, self.hidden = 0, 0.0, 0.0, 0.0
        self._start = None

    def begin(self):
        self._start = time.perf_counter()

    def end(self, arrived, work):
        exposed = time.perf_counter() - arrived
        self.steps += 1
        self.compute += arrived - self._start
        self.reduction += work
        self.hidden += max(0.0, work - exposed)

    def per_step(self) -> dict:
        """The mean seconds per step of compute, reduction and hidden reduction."""
        steps = max(self.steps, 1)
        return {"steps": self.steps, "compute": self.compute / steps, "reduction": self.reduction / steps,
                "hidden": self.hidden / steps}
