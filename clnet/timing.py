"""Timing device work on the host clock: the protocol of clnet-bench, also used by clnet-tune."""

import dataclasses
import math
import statistics
import time


@dataclasses.dataclass
class Timing:
    warmup: int       # untimed steps first
    steps: int        # steps per timed run; 0: as many as last about min_time seconds
    repeats: int      # timed runs; their median is reported
    min_time: float
    pause: float = 0.0  # seconds the host is left idle before each timed run of several taken in turn


@dataclasses.dataclass
class Measurement:
    steps: int        # steps of each timed run
    seconds: list     # wall time of each run, the device idle at its end

    def summary(self, work, unit):
        """`work` units per step as rates: the median and the best run, and the raw times."""
        return {"unit": unit, "median": work * self.steps / statistics.median(self.seconds),
                "best": work * self.steps / min(self.seconds), "steps": self.steps, "seconds": self.seconds}


def measure(step, sync, timing):
    """Time `step` (enqueue one unit of work) under `timing`; `sync` waits for the device."""
    return measure_in_turn([(step, sync)], timing)[0]


def measure_in_turn(pairs, timing):
    """A Measurement of each (step, sync) pair under `timing`, as `measure` makes one, their timed
    runs taken in turn (a run of each, `repeats` times) once each has warmed up: where the machine's
    speed drifts (a shared host, clocks, another tenant), it drifts for all of them alike, and the
    ratio of their medians compares them over the same stretch of time. With `timing.pause`, each
    timed run of several starts after that many idle seconds: where the sides share the CPU, the
    threads of the one before still spin for a while after its run (OpenBLAS's, OpenMP's) and
    would take their cores from the next (a 512 GEMM under PoCL on a 2-core EPYC ran at 165
    GFLOP/s right after numpy's, 200 after 0.3 s idle or alone)."""
    runs = [_timed_runs(step, sync) for step, sync in pairs]
    steps = []
    for run in runs:
        run(timing.warmup)
        steps.append(timing.steps or calibrate(run, timing.min_time))
    seconds = [[] for _ in runs]
    for _ in range(timing.repeats):
        for run, count, times in zip(runs, steps, seconds):
            if len(runs) > 1:
                time.sleep(timing.pause)
            times.append(run(count))
    return [Measurement(count, times) for count, times in zip(steps, seconds)]


def _timed_runs(step, sync):
    """A function that runs `steps` steps and returns their wall time, the device idle at its end."""
    def run(steps):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        return time.perf_counter() - start
    return run


def calibrate(run, min_time):
    """Steps for a run of about `min_time` seconds, grown tenfold until a run takes a tenth of it
    (timeit.autorange's idea); these runs add to the warm-up."""
    steps = 1
    while True:
        elapsed = run(steps)
        if elapsed >= min_time / 10:
            return max(1, math.ceil(steps * min_time / elapsed))
        steps *= 10
