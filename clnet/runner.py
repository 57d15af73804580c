"""The runner: replays a CompiledStep. It stages host batches into the plan's two upload slots (the
upload of the next batch overlaps this one's kernels), binds the input stage to its source (a staged
batch, or a dataset held on the device), sets the per-step arguments, and keeps the host at most
AHEAD steps in front of the device."""

import threading
import time
from collections import deque

import numpy as np
import pyopencl as cl

from . import losses
from .tensor import DeviceTensor

AHEAD = 3  # steps the host may queue before the device has finished them


class Runner:
    """Runs one CompiledStep on its device. Training steps advance `store.steps`, the optimizer
    step count that also keys dropout and augmentation."""

    def __init__(self, compiled, store, optimizer=None):
        self.compiled, self.store, self.optimizer = compiled, store, optimizer
        self.plan, self.device, self.output_shape = compiled.plan, compiled.device, compiled.output_shape
        self._slot, self._slots, self._ahead = 0, [None, None], deque()
        self._source = None
        self.last_events = []  # of the launches queued by the last run, in order
        self.n_valid = compiled.batch_size
        self._gathers = self.plan.phase_range("input", "input")[1]  # launches of the input stage, first in the plan
        if compiled.training:
            self._gradients = self.plan.phase_range("input", "backward")
            self._update = self.plan.phase_range("update", "update")
        elif compiled.loss_launch is not None:  # the last launch of an inference plan: the logits are before it
            self._logits = self.plan.launches.index(compiled.loss_launch)

    def _bind_source(self, images, targets, order, start, n):
        """Point the input stage at a source; arguments are set only when they change."""
        source = (images, targets, order)
        if source != self._source:
            self.plan.set_dynamic("image_source", images)
            self.plan.set_dynamic("order", order)
            if targets is not None:
                self.plan.set_dynamic("target_source", targets)
            self._source = source
        self.plan.set_dynamic("start", start)
        if n != self.n_valid:
            self.plan.set_dynamic("n_valid", n)
            self.n_valid = n

    def _stage(self, x, targets):
        """Upload a batch into the next staging slot on the copy queue; returns the upload events
        and the host arrays, which must live until the uploads are done. Images already on the
        device (a DeviceTensor: a pyopencl array's rows) are read where they lie.

        A slot is refilled only after the gather that read it two steps ago has run."""
        self._slot ^= 1
        images, target_tensor = self.compiled.staging[self._slot]
        wait_for = []
        if self._slots[self._slot] is not None:
            uploads, _, gathered = self._slots[self._slot]
            if uploads:
                cl.wait_for_events(uploads)
            wait_for = [gathered]
        queue = self.device.copy_queue
        arrays, events = [], []
        if isinstance(x, DeviceTensor):
            images = x
        else:
            arrays.append(np.ascontiguousarray(x, images.dtype))
            events.append(images.view((len(x), *images.shape[1:])).upload(arrays[-1], False, queue, wait_for))
        if targets is not None:
            arrays.append(np.ascontiguousarray(targets, target_tensor.dtype).reshape(len(x), -1))
            events.append(target_tensor.view((len(x), *target_tensor.shape[1:]))
                          .upload(arrays[-1], False, queue, wait_for))
        queue.flush()
        self._bind_source(images, target_tensor if targets is not None else None, self.compiled.identity, 0, len(x))
        return events, arrays

    def _run(self, staged, *ranges):
        """Enqueue the launch ranges in order, the first after the staged uploads."""
        events = []
        for start, stop in ranges:
            events += self.plan.run(wait_for=staged[0] if staged and not events else None, start=start, stop=stop)
        self.last_events = events
        if staged:  # the slot may be refilled once the input stage's gathers have read it
            self._slots[self._slot] = (*staged, events[self._gathers - 1])
        # The host stays at most AHEAD steps in front of the device: progress shown is progress made.
        self._ahead.append(events[-1])
        if len(self._ahead) > AHEAD:
            self._ahead.popleft().wait()

    def train(self, x, targets, update=True):
        """Queue one training step on a host batch of at most batch_size samples (raw images).

        With update=False the step stops at the seam: the batch's gradients are in `store.grads` and
        `update()` applies them. An empty batch only counts the step (a replica without a shard)."""
        self._begin_step()
        ranges = [self._update] if update else []
        staged = None
        if len(x):
            staged = self._stage(x, targets)
            ranges.insert(0, self._gradients)
        if ranges:
            self._run(staged, *ranges)

    def update(self):
        """Queue the optimizer's update of a step trained with update=False."""
        self._run(None, self._update)

    def train_resident(self, data, start, n):
        """Queue one training step on samples data.order[start:start + n] of a DeviceDataset."""
        self._bind_source(data.images, data.targets, data.order, start, n)
        self._begin_step()
        self._run(None, self._gradients, self._update)

    def _begin_step(self):
        self.store.steps += 1
        self.optimizer.prepare(self.compiled.update_launch, self.store.steps)
        self.plan.set_dynamic("step", self.store.steps)

    def infer(self, x, targets=None, want_output=True, read=True):
        """Queue one evaluation batch: metrics accumulate when targets are given; returns the
        outputs for the valid rows when asked (that download waits for the queue), or with
        read=False computes them for `output()` to read later."""
        staged = self._stage(x, targets)
        stop = None
        if self.compiled.loss_launch is not None:
            flags = (losses.PROBS if want_output else 0) | (losses.METRICS if targets is not None else 0)
            self.compiled.loss_launch.set("flags", flags)
            if not flags:  # the loss launch would write nothing: the batch ends at the logits
                stop = self._logits
        self._run(staged, (0, stop))
        return self.output() if want_output and read else None

    def output(self):
        """The outputs of the valid rows of the last batch run (waits for the queue)."""
        return self.compiled.output.tensor().download()[:self.n_valid]

    def sync(self):
        """Wait for the device; forget the source, so that a dataset held on the device is freed
        once its fit ends (the next step binds its source again)."""
        self.device.finish()
        self._slots = [None, None]
        self._ahead.clear()
        self._source = None


class Stopwatch:
    """When each of several runners' launches queued so far complete, in seconds from the
    stopwatch's start: a callback on each runner's last event records it as the device finishes,
    whatever the host is doing then.

    Example:
        >>> watch = Stopwatch(len(runners))
        >>> for i, runner in enumerate(runners):
        ...     runner.train(x, y, update=False)
        ...     watch.mark(i, runner)
        >>> watch.wait()    # [seconds until each finished]
    """

    def __init__(self, count: int):
        self.start, self.times, self._events = time.perf_counter(), [0.0] * count, []
        self._done = threading.Semaphore(0)

    def mark(self, index: int, runner: Runner) -> None:
        """Record when what `runner` has queued completes, as `times[index]`."""
        event = runner.last_events[-1]
        event.set_callback(cl.command_execution_status.COMPLETE, lambda status: self._record(index))
        runner.device.queue.flush()  # else a driver may hold the launches back
        self._events.append(event)

    def _record(self, index):
        self.times[index] = time.perf_counter() - self.start
        self._done.release()

    def wait(self) -> list:
        """The seconds until each marked runner finished (0 for those not marked)."""
        for _ in self._events:
            self._done.acquire()
        return self.times
