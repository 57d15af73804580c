"""Replicas: one network trained data-parallel on several devices of one process (the same device may
be listed twice), and over the ranks of an MPI run (clnet.distributed). Each replica holds its own
ParamStore, metrics and compiled steps over the same network; parameters are identical on every
replica of every rank that runs or is read (`Lag`).

A training step splits the global batch into contiguous shards: first equally among the ranks,
then each rank's part by its replicas' shares; each replica runs input to backward on its shard and
stops at the seam; the flat gradients are combined, each weighted by its shard's share of the
global batch, into the gradient of the global batch's mean loss; every replica then applies the
same update. The combination goes through the host, in buckets read as the backward pass writes
them (clnet.reduction): summed in replica order in float64, then over the ranks by MPI (in
float64), and the total written back to every replica. BatchNorm's running statistics are combined
the same way after the step (each replica normalised by its own shard's statistics, as PyTorch's
DistributedDataParallel without SyncBatchNorm).

Where one replica of a process has every row of a step (the others left out, a zero share) and
there is one rank, that sum would give back its own gradients: it steps alone on its device, no
round trip through the host, and the others catch up from it when they are next used (`Lag`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .balance import Balancer
from .device import Device
from .distributed import World
from .errors import InputError
from .params import ParamStore
from .reduction import BucketedSum
from .runner import Runner, Stopwatch
from .tensor import DeviceTensor


def device_list(device) -> list:
    """The devices of `device=`: one Device, or a non-empty list of them (repeats allowed)."""
    devices = [device] if isinstance(device, Device) else device
    if not isinstance(devices, (list, tuple)) or not devices or not all(isinstance(d, Device) for d in devices):
        raise InputError(f"device= takes a clnet.Device or a non-empty list of them (from clnet.device(...)), "
                         f"got {device!r}")
    return list(devices)


def default_shares(devices) -> str | None:
    """`shares=` when none is given: "auto" (by measured throughput) when the devices differ, else
    None (equal)."""
    return "auto" if len({d.info.label for d in devices}) > 1 else None


def share_weights(shares, replicas: int) -> np.ndarray:
    """The replicas' shares of a batch as fractions summing to 1 (equal when `shares` is None, and
    where "auto" starts)."""
    wanted = f"shares= needs \"auto\" or {replicas} non-negative numbers, one per device, not all zero"
    if isinstance(shares, str) and shares != "auto":
        raise InputError(f"{wanted}; got {shares!r}")
    if shares is None or isinstance(shares, str):
        return np.full(replicas, 1.0 / replicas)
    weights = np.asarray(shares, dtype=np.float64).reshape(-1)
    if len(weights) != replicas or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise InputError(f"{wanted}; got {shares!r}")
    return weights / weights.sum()


def shard_bounds(n, weights: np.ndarray) -> np.ndarray:
    """Where each replica's contiguous shard of `n` samples starts, and where the last ends (R + 1
    bounds): the cumulative shares of n, rounded half up, so that a batch splits the same way every
    time. For an array of batch sizes, a row of bounds per size."""
    cumulative = np.concatenate([[0.0], np.cumsum(weights)[:-1], [1.0]])
    return np.floor(np.multiply.outer(n, cumulative) + 0.5).astype(int)


class Replica:
    """One device's copy of a model: its parameter store and its metrics (loss, -, correct, count)."""

    def __init__(self, device, network, seed, like=None):
        self.device = device
        self.store = ParamStore(device, network, seed, like=like and like.store)
        self.metrics = DeviceTensor.empty(device, (4,), what="the metrics")


class SummedMetrics:
    """The metrics of every replica as one, read as their sum (`download`: this process's replicas;
    `total`: over every rank too); a checkpoint keeps each replica's of every rank (`state`), so
    that a resumed fit adds in the same order as one never interrupted."""

    def __init__(self, replicas, world: World):
        self.tensors, self.world = [r.metrics for r in replicas], world

    def fill(self, value=0):
        for tensor in self.tensors:
            tensor.fill(value)

    def download(self):
        return np.sum([t.download() for t in self.tensors], axis=0, dtype=np.float32)

    def total(self):
        """The sum over every replica of every rank (a collective under MPI)."""
        return self.world.sum(self.download().astype(np.float64), "the metrics").astype(np.float32)

    def state(self):
        """Each replica's metrics: (4,) on one device, (replicas, 4) on several, rank after rank
        under MPI (a collective)."""
        rows = np.concatenate(self.world.gather(np.stack([t.download() for t in self.tensors]), "the metrics"))
        return rows[0] if len(rows) == 1 else rows

    def load_state(self, state):
        """`state()` of the same replicas and ranks, or else metrics as one (4,) row, which the first
        replica takes."""
        rows = np.asarray(state, np.float32).reshape(-1, 4)
        mine = len(self.tensors)
        if len(rows) == mine * self.world.size:
            rows = rows[self.world.rank * mine:(self.world.rank + 1) * mine]
        if len(rows) != len(self.tensors):
            rows = np.concatenate([rows.sum(axis=0, keepdims=True), np.zeros((len(self.tensors) - 1, 4), np.float32)])
        for tensor, row in zip(self.tensors, rows):
            tensor.upload(row)


class Lag:
    """Which replica is ahead of the others: the one that took the last steps alone (the only one
    with rows, in one process), which nothing else saw. `current` is the one place where the others
    catch up: called before anything runs on replicas or reads one, it copies the state of the one
    ahead (parameters, gradients, BatchNorm buffers, optimizer state, step count) to every other
    through the host, unless the replicas about to be used are that one alone. So every replica
    that runs, or is read, holds the current state, as if all had taken every step.

    Example:
        >>> lag = Lag(model.replicas)
        >>> lag.current([runner.store]); runner.train(x, y); lag.ahead = runner.store   # a step alone
        >>> lag.current([r.store for r in model.replicas])                             # all alike again
    """

    def __init__(self, replicas):
        self.stores = [r.store for r in replicas]
        self.ahead = None  # the store that stepped alone since the replicas were last alike

    def current(self, stores) -> None:
        """Bring every replica in line with the one ahead, unless `stores` are that one alone."""
        source = self.ahead
        if source is None or all(store is source for store in stores):
            return
        state = source.flat_state(("params", "grads", "buffers"))
        for store in self.stores:
            if store is not source:
                store.load_flat_state(*state)
        self.ahead = None


def combine(tensors, weights, world: World, what):
    """Queue the writing of sum_i weights[i] * tensors[i] (float64, in replica order, then over the
    ranks) into every tensor; returns (the uploads' events, the host total they read, which must
    live until they are done). Only tensors of a weight are read: a replica without rows is never
    waited for."""
    total = np.zeros(tensors[0].size, np.float64)
    for tensor, weight in zip(tensors, weights):
        if weight:
            total += weight * tensor.download()
    total = world.sum(total, what).astype(np.float32)
    return [tensor.upload(total, wait=False) for tensor in tensors], total


def rank_part(n, world: World):
    """The rows [start, stop) of a global batch of `n` that this rank's replicas share: equal parts
    in rank order, as `shard_bounds` splits (for an array of batch sizes, an array of starts and one
    of stops). The one split of a global batch among the ranks: what a rank reads, decodes and trains.

    Example:
        >>> stream.batches(order, 256, part=functools.partial(rank_part, world=world))   # this rank's rows
    """
    bounds = shard_bounds(n, share_weights(None, world.size))
    return np.take(bounds, world.rank, axis=-1), np.take(bounds, world.rank + 1, axis=-1)


class ReplicatedRunner:
    """Runs one step over the replicas' runners, each compiled for the most rows its shard can have,
    on this rank's part of every global batch.

    Args:
        runners: a Runner per replica, in the replicas' order.
        weights: the replicas' shares (`share_weights`), an array that `balancer` may change.
        world: the ranks (clnet.distributed.World) whose gradients are summed too.
        lag: the replicas' Lag, shared by every runner over them.
        balancer: a clnet.balance.Balancer that measures training steps and moves the shares, or None.
    """

    def __init__(self, runners, weights, world: World, lag: Lag, balancer: Balancer | None = None):
        self.runners, self.weights, self.world, self.lag, self.balancer = runners, weights, world, lag, balancer
        self.output_shape = runners[0].output_shape
        stores = [r.store for r in runners]
        self._summed = BucketedSum(runners, world) if runners[0].compiled.training else None
        self._buffers = [s.buffers for s in stores] if any(not e.trainable for e in stores[0].entries) else None
        self._buffer_uploads = ([], None)  # the last combined running statistics' uploads, and their total

    @property
    def times(self):
        """The clnet.reduction.SeamTimes that training steps add to, or None: kept by the gradients'
        sum, which ends each step's timing (an inference runner has none, and ignores one set)."""
        return self._summed.times if self._summed is not None else None

    @times.setter
    def times(self, times):
        if self._summed is not None:
            self._summed.times = times

    def _shards(self, x, batch):
        """The global batch's rows n, and this rank's replicas' shards of it as (rows of the global
        batch, rows of x) slices; x is the whole global batch (`batch` None) or this rank's part of
        a global batch of `batch` rows."""
        n = len(x) if batch is None else batch
        start, stop = rank_part(n, self.world)
        if batch is not None and len(x) != stop - start:
            raise InputError(f"rank {self.world.rank}'s part of a batch of {batch} is {stop - start} rows, "
                             f"not {len(x)}: feed it rows rank_part(batch, world)")
        offset = 0 if batch is None else start  # where x starts in the global batch
        bounds = start + shard_bounds(stop - start, self.weights)
        return n, [(slice(a, b), slice(a - offset, b - offset)) for a, b in zip(bounds[:-1], bounds[1:])]

    def _alone(self, sizes) -> bool:
        """Whether the one replica with rows steps alone: no other replica's gradients, nor another
        rank's, to add, so the seam's round trip through the host would give back its own."""
        return sum(size > 0 for size in sizes) == 1 and self.world.size == 1

    def train(self, x, targets, batch=None):
        """One step on a host batch: gradients per shard, combined, then the same update everywhere;
        or, where one replica has every row (`_alone`), its own step on its device, the others
        left behind until used (`Lag`). x and targets are this rank's part (`rank_part`) of a
        global batch of `batch` rows, as a fit feeds them, or without `batch` the whole global
        batch, of which this rank trains its part."""
        n, shards = self._shards(x, batch)
        sizes = [shard.stop - shard.start for shard, _ in shards]
        alone = self._alone(sizes)
        stepping = [i for i, size in enumerate(sizes) if size or not alone]
        self.lag.current([self.runners[i].store for i in stepping])
        if self.times is not None and not alone:
            self.times.begin()
        watch = Stopwatch(len(shards)) if self.balancer is not None and self.balancer.due() else None
        for i in stepping:
            (shard, rows), runner = shards[i], self.runners[i]
            runner.plan.set_dynamic("first_row", shard.start)  # the global row: draws as one device's
            runner.train(x[rows], targets[rows], update=False)
            if watch and sizes[i]:
                watch.mark(i, runner)
        if not alone:
            self._summed.read([size > 0 for size in sizes])
        if watch:
            self.balancer.record(sizes, watch.wait())
        if not alone:
            weights = [size / n for size in sizes]
            self._summed.combine(weights)
            if self._buffers is not None:
                for upload in self._buffer_uploads[0]:  # their total may go
                    upload.wait()
                self._buffer_uploads = combine(self._buffers, weights, self.world, "the running statistics")
        for i in stepping:
            self.runners[i].update()
        if alone:
            self.lag.ahead = self.runners[stepping[0]].store

    def infer(self, x, targets=None, want_output=True, batch=None):
        """One evaluation batch split into shards (x as for `train`); the outputs of the valid rows
        of the global batch in order when asked (gathered from every rank under MPI)."""
        shards = [(runner, rows) for runner, (shard, rows) in zip(self.runners, self._shards(x, batch)[1])
                  if shard.stop > shard.start]
        self.lag.current([runner.store for runner, _ in shards])
        for runner, rows in shards:
            runner.infer(x[rows], None if targets is None else targets[rows], want_output, read=False)
        if not want_output:
            return None
        outputs = [runner.output() for runner, _ in shards]
        mine = np.concatenate(outputs) if outputs else np.zeros((0, *self.output_shape), np.float32)
        return np.concatenate(self.world.gather(mine, "the outputs")) if self.world.size > 1 else mine

    def sync(self):
        for runner in self.runners:
            runner.sync()


def capacity(batch_size: int, weights: np.ndarray, world: World = World(), balanced: bool = False) -> list:
    """The rows each of this rank's replicas' steps is compiled for: the most its shard of any
    global batch up to `batch_size` samples holds (at least 1, as a replica without a shard still
    updates); with `balanced` shares, which move during a run, the most this rank's part holds, so
    that no share needs another compilation."""
    starts, stops = rank_part(np.arange(1, batch_size + 1), world)
    if balanced:
        return [max(1, int((stops - starts).max()))] * len(weights)
    bounds = shard_bounds(stops - starts, weights)
    return [max(1, int(c)) for c in np.diff(bounds, axis=1).max(axis=0)]


def make_runner(replicas, weights, target, compile_step, optimizer, world: World, lag: Lag,
                balancer: Balancer | None = None):
    """A Runner for one replica of one process, or a ReplicatedRunner over all of them (behind
    `lag`, the replicas' Lag); `compile_step(replica, target)` compiles one replica's step, `target`
    the global batch's; a training runner's steps feed `balancer` when there is one."""
    if len(replicas) == 1 and world.size == 1:
        return Runner(compile_step(replicas[0], target), replicas[0].store, optimizer)
    rows = capacity(target.batch_size, weights, world, balanced=balancer is not None)
    runners = [Runner(compile_step(replica, replace(target, batch_size=size)), replica.store, optimizer)
               for replica, size in zip(replicas, rows)]
    return ReplicatedRunner(runners, weights, world, lag, balancer if target.training else None)
