"""Shares balanced by measured throughput (`shares="auto"`): how many rows of every batch each
replica gets, so that the replicas' shards finish together.

Shares start from a guess by device type (`first_guess`). During two rounds of a few steps after
the start (the first step is a warm-up), and one step in every RECHECK after that, the replicated
runner records when each replica's input-to-backward finished, counted from the step's start.
A replica that is clearly hopeless gets nothing as soon as one measured step of those rounds shows
it: it took more than HOPELESS times as long as the others would take for the whole batch without
it (a slow CPU beside a GPU, whose fixed costs alone outweigh the GPU's step). After each round the
shares are set proportional to each replica's rows per second. A replica that, at the share its
throughput gave it, still takes longer than the others would take for the whole batch without it
(its fixed costs outweigh its rows) gets nothing from then on too; the run says so either way.
One step every RECHECK re-measures the replicas with rows, and the shares move again when their
times drift apart by more than DRIFT (the step after is measured too, at the new shares, where a
replica may be left out as above); a replica left out is not measured again, nor given rows. Shares
change only which rows go where: a step's result is the same whatever they are (within float32
summation), so balancing never changes what is learnt beyond rounding.
"""

from __future__ import annotations

import logging

import numpy as np

WARMUP = 1      # steps not measured (first launches, caches)
MEASURE = 3     # steps measured in each of the two rounds that set the shares
RECHECK = 50    # later, one measured step in this many
SETTLED = WARMUP + 2 * MEASURE  # steps before the shares are set and a slow device left out: until then
                                # every step runs at the slowest device's pace, unless it is HOPELESS
# A replica whose one measured step took more than HOPELESS times what the others need for the
# whole batch is left out at once (as early as step WARMUP + 1). Even were all its time per row
# (no fixed cost, the case most in its favour), its throughput is then under share / HOPELESS of
# the others': leaving it out loses at most that fraction (under 1% for a CPU at its first guess
# beside a GPU; 6% at equal shares, within the DRIFT the balancer tolerates anyway), where keeping
# it through the rounds costs each of their steps its whole time. The margin is also wide enough
# that one noisy step does not leave out a replica merely a few times slower.
HOPELESS = 8
DRIFT = 0.15    # relative spread of the replicas' times that moves the shares again; the margin of noise
LOG = logging.getLogger(__name__)
CPU_GUESS = 1 / 16  # a CPU's first share beside a GPU's, until measured: most CPUs are far slower


def first_guess(devices) -> np.ndarray:
    """The shares measured steps start from: equal, but a CPU beside a GPU (or an accelerator) gets
    CPU_GUESS of its share, so that the first steps wait less for the CPU. They still wait for its
    fixed costs: a CPU left out when the shares are set sets the pace of the first SETTLED steps, one
    left out as HOPELESS that of the first two."""
    types = [d.info.type for d in devices]
    weights = np.array([CPU_GUESS if t == "CPU" and set(types) != {"CPU"} else 1.0 for t in types])
    return weights / weights.sum()


class Balancer:
    """Measures the replicas of one process and moves their shares (`weights`, changed in place,
    so every runner that holds the array follows).

    Args:
        weights: the starting shares (fractions summing to 1), an array the runners read.
        names: each replica's device name, for the line that says a device was left out.

    Example:
        >>> balancer = Balancer(np.full(2, 0.5), ["GPU", "CPU"])
        >>> if balancer.due():
        ...     balancer.record(rows=[512, 512], seconds=[0.010, 0.080])
        >>> balancer.weights        # after a round of such steps: about [0.89, 0.11]
    """

    def __init__(self, weights: np.ndarray, names):
        self.weights, self.names = weights, list(names)
        self.steps = self.rounds = 0
        self.samples = []          # (rows, seconds) of each measured step of this round
        self.dropped = set()
        self.confirm = False       # measure the next step: the shares just moved after a drift

    def due(self) -> bool:
        """Whether the step about to run is measured (counts the step)."""
        self.steps += 1
        return WARMUP < self.steps <= WARMUP + 2 * MEASURE or self.confirm or self.steps % RECHECK == 0

    def record(self, rows, seconds) -> None:
        """One measured step: each replica's rows and the seconds until its gradients were ready.

        Before the shares are set (the first two rounds), a replica that this one step shows
        HOPELESS is left out at once. Otherwise a replica may be left out only on a measurement
        right after the shares were set from throughputs (the second round, or the step after a
        drift moved them): there a slowness its share cannot cure (a fixed cost) shows; a drift
        alone only moves the shares."""
        rows, seconds = np.asarray(rows, np.float64), np.asarray(seconds, np.float64)
        if self.rounds < 2 and self._leave_out_slow(rows, seconds, HOPELESS, 1):
            self._set(self.weights)  # the others keep their proportions
        self.samples.append((rows, seconds))
        if self.rounds < 2 and len(self.samples) < MEASURE:
            return
        rows = np.sum([r for r, _ in self.samples], axis=0)
        seconds = np.sum([s for _, s in self.samples], axis=0)
        measured, self.samples = len(self.samples), []
        confirming, self.confirm = self.confirm, False
        active = rows > 0
        if not active.any():  # this rank's part of the batches was empty
            return
        spread = seconds[active].max() / max(seconds[active].min(), 1e-9) - 1
        if self.rounds >= 2 and spread <= DRIFT:
            return  # still balanced
        if self.rounds == 1 or confirming:  # the shares are the measured throughputs' already
            self._leave_out_slow(rows, seconds, 1 + DRIFT, measured)  # clearly: not by noise
        self.rounds += 1
        self.confirm = self.rounds > 2 and not confirming
        self._set(_throughput(rows, seconds))

    def _set(self, weights):
        """The shares in proportion to `weights`, none for a replica left out."""
        weights = self._kept(weights)
        self.weights[:] = weights / weights.sum()
        LOG.info("Shares by measured throughput: %s",
                 ", ".join(f"{name} {w:.1%}" for name, w in zip(self.names, self.weights)))

    def _leave_out_slow(self, rows, seconds, margin, measured) -> bool:
        """Leave out the slowest replica when its shard took more than `margin` times as long as the
        others would take for the whole batch without it (`measured` steps' sums); whether it was."""
        throughput = self._kept(_throughput(rows, seconds))  # one left out takes none of the batch
        slowest = int(np.argmax(self._kept(seconds)))  # one left out in this round is not warned of again
        others = throughput.sum() - throughput[slowest]
        if not (others > 0 and seconds[slowest] > margin * rows.sum() / others):
            return False
        self.dropped.add(slowest)
        LOG.warning("%s gets no rows from now on: its shard took %.1f ms, longer than the other "
                    "devices need for the whole batch (%.1f ms)", self.names[slowest],
                    1e3 * seconds[slowest] / measured, 1e3 * rows.sum() / others / measured)
        return True

    def _kept(self, values) -> np.ndarray:
        """A copy of per-replica `values`, 0 for those left out."""
        values = np.array(values, np.float64)
        values[sorted(self.dropped)] = 0
        return values


def _throughput(rows, seconds) -> np.ndarray:
    """Each replica's rows per second, 0 for one without rows."""
    return np.where(rows > 0, rows / np.maximum(seconds, 1e-9), 0.0)
