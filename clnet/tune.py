"""clnet-tune: times GEMM kernel parameters on this device and caches the fastest (tuning.py).

The cases are the GEMMs of the networks to be run, the implicit convolutions included (forward,
data and weight gradients), as their training and inference plans record them (the reference
networks at batch 128 and 1024 unless told otherwise), plus square GEMMs; the cases with the most
work go first, so that --max-seconds spends its time where it counts. --export-table also writes
the tuned cases as the table that ships for the device's class (tuning.py). Every candidate is
first checked against the default parameters' result on the same operands; a candidate that fails
to build, to launch or to agree is reported and skipped.
Each candidate is timed for about --min-time seconds, several times; the median counts. The winners
go to the tuning cache, which every later plan on this device reads.

    clnet-tune --platform nvidia
    clnet-tune --platform pocl --models mnist-cnn --batch-sizes 128 --sizes
"""

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import click
import numpy as np
import pyopencl as cl

from . import tuning
from .cli_options import (CONTEXT_SETTINGS, FiniteFloatRange, Several, SeveralValuesCommand, device_options,
                          friendly_errors)
from .compiler import Target
from .device import device as open_device
from .errors import ClnetError
from .files import check_writable, refuse_special
from .models import INPUT_SHAPES, PRESETS
from .ops.gemm import SPECS, Matrix, gemm, record_gemm
from .plan import Plan
from .tensor import DeviceTensor
from .timing import Timing, measure

SIZES = (1024, 4096)
# The presets tuned unless told otherwise: the reference networks (a ResNet at 224 x 224 and batch
# 1024 would not fit most devices; name one to tune it at the batch sizes that suit it)
DEFAULT_MODELS = ("mlp", "mnist-cnn", "cifar-cnn", "lenet5")
REPEATS = 3
MIN_TIME = 0.02    # seconds per timed run
AGREE = 1e-3       # a candidate's largest difference from the default, relative to the largest |entry|
MARGIN = 1.03      # how much faster than the default a candidate must be to replace it
FINALISTS = 2      # candidates whose switch variants (gemm_tiled's PREFETCH / VECTOR / VLOAD) are timed too
BUILDERS = 8       # threads that build the candidates' programs on GPUs (one on CPUs)


def collect(device, models, batch_sizes, sizes):
    """(Case, Call) of every distinct GEMM of the networks' training and inference graphs (their
    plans recorded, not allocated), and of square products of `sizes`, the most work first (a
    case's FLOPs times the launches that share it), so that a bounded run tunes what matters most."""
    with tuning.recording() as calls:
        for name in models:
            model = PRESETS[name](device=device, seed=0).compile("cross_entropy", "sgd")
            for batch in batch_sizes:
                for training in (True, False):
                    target = Target(batch, INPUT_SHAPES[name], training, np.dtype(np.int32).str if training else None)
                    model._compile(target, allocate=False)
        scratch = Plan(device)
        for n in sizes:
            square = scratch.value((n, n), "square")
            gemm(scratch, square, square, square)
    distinct, work = {}, {}
    for case, call in calls:
        distinct.setdefault(case, call)
        work[case] = work.get(case, 0) + case.m * case.n * case.k * call.groups
    return sorted(distinct.items(), key=lambda item: -work[item[0]])


class Operands:
    """Random operands for a recorded call, uploaded once; C starts from the same values each run."""

    def __init__(self, device, call, rng):
        self.device, self.call = device, call
        self.a = self._upload(rng.uniform(-1, 1, call.a[0]))
        self.b = self._upload(rng.uniform(-1, 1, call.b[0]))
        self.c0 = rng.uniform(-1, 1, call.c[0]).astype(np.float32)
        self.c = DeviceTensor.from_numpy(device, self.c0)
        self.bias = self._upload(rng.uniform(-1, 1, call.bias)) if call.bias else None

    def _upload(self, values):
        return DeviceTensor.from_numpy(self.device, values.astype(np.float32))

    def record(self, params):
        """A plan of this one GEMM with `params`, not yet placed; recording it builds its programs."""
        call, plan = self.call, Plan(self.device)
        m, n, k = call.shape
        a_rows, a_cols = ((k, m) if dict(call.defines).get("TRANS_A") else (m, k))
        b_rows, b_cols = ((n, k) if dict(call.defines).get("TRANS_B") else (k, n))
        group_a, group_b = call.group_strides
        record_gemm(plan, call.kernel, dict(call.defines), call.shape,
                    Matrix(self.a, a_rows, a_cols, ld=call.a[1], image_cols=call.a[2], group_stride=group_a),
                    Matrix(self.b, b_rows, b_cols, ld=call.b[1], image_cols=call.b[2], group_stride=group_b),
                    Matrix(self.c, m, n, ld=call.c[1], image_cols=call.c[2]), self.bias, params=params,
                    groups=call.groups)
        return plan

    def run(self, plan):
        """Place and run the plan once from the initial C; its result."""
        self.c.upload(self.c0)
        plan.finalize(plan.place())
        plan.run()
        return self.c.download()


def time_plan(plan, min_time, repeats):
    """Median seconds of one run of the plan, over `repeats` timed runs of about `min_time` seconds."""
    result = measure(plan.run, plan.device.finish, Timing(warmup=1, steps=0, repeats=repeats, min_time=min_time))
    return statistics.median(result.seconds) / result.steps


def _agrees(got, reference):
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    return bool(np.all(np.isfinite(got))) and float(np.abs(got - reference).max(initial=0.0)) <= AGREE * scale


class _Trial:
    """Runs candidates of one call on the same operands: checked against the first that runs (the
    default), then timed."""

    def __init__(self, device, call, min_time, repeats, report, builders):
        self.operands = Operands(device, call, np.random.default_rng(0))
        self.min_time, self.repeats, self.report, self.builders = min_time, repeats, report, builders
        self.reference, self.timed = None, []   # timed: (seconds, params)

    def _record(self, params):
        try:
            return self.operands.record(params)
        except (ClnetError, cl.Error) as exc:
            return exc

    def __call__(self, candidates):
        with ThreadPoolExecutor(max_workers=self.builders) as pool:
            plans = list(pool.map(self._record, candidates))
        for params, plan in zip(candidates, plans):
            try:
                if isinstance(plan, Exception):
                    raise plan
                got = self.operands.run(plan)
            except (ClnetError, cl.Error) as exc:
                self.report(f"  skipped {params}: {str(exc).splitlines()[0]}")
                continue
            if self.reference is None:
                self.reference = got
            elif not _agrees(got, self.reference):
                self.report(f"  skipped {params}: its result differs from the default's")
                continue
            self.timed.append((time_plan(plan, self.min_time, self.repeats), params))


def tune_case(device, case, call, min_time=MIN_TIME, repeats=REPEATS, report=print, builders=None):
    """The fastest correct parameters for one call: {"params", "seconds", "default_seconds"}.
    The switches (gemm_tiled's) are tried on the FINALISTS fastest candidates only. `builders` threads
    build the candidates' programs: by default several on GPUs, whose drivers compile on the
    otherwise idle host cores, and one on CPUs, where compiling competes with the timing."""
    if builders is None:
        builders = 1 if device.info.type == "CPU" else min(BUILDERS, os.cpu_count() or 1)
    spec, trial = SPECS[call.kernel], _Trial(device, call, min_time, repeats, report, builders)
    trial(spec.candidates(device, call))
    if not trial.timed:
        raise ClnetError(f"{case.key}: not even the default parameters run on {device.info.name}")
    if spec.switches:
        finalists = sorted(trial.timed, key=lambda t: t[0])[:FINALISTS]
        trial([variant for _, params in finalists for variant in spec.variants(device, params)])
    default_seconds, params = trial.timed[0]
    seconds, fastest = min(trial.timed, key=lambda t: t[0])
    if seconds < default_seconds / MARGIN:  # else a tie within the timing noise: the default stays
        params = fastest
    else:
        seconds = default_seconds
    return {"params": params, "seconds": seconds, "default_seconds": default_seconds}


@click.command(cls=SeveralValuesCommand, context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-tune --platform nvidia
  clnet-tune --platform pocl --models mnist-cnn --batch-sizes 128 --sizes
  clnet-tune --models resnet20 --batch-sizes 128 --sizes --max-seconds 300
  clnet-tune --models --sizes 512 1024 2048 4096 --export-table nvidia-hopper.json""")
@friendly_errors
@device_options
@click.option("--models", type=Several(click.Choice(list(PRESETS))), default=list(DEFAULT_MODELS), show_default=True,
              metavar="[MODEL...]", help="Networks whose GEMMs and convolutions to tune.")
@click.option("--batch-sizes", type=Several(click.IntRange(min=1), at_least=1), default=[128, 1024],
              show_default=True, metavar="N...", help="Their batch sizes.")
@click.option("--sizes", type=Several(click.IntRange(min=1)), default=list(SIZES), show_default=True,
              metavar="[N...]", help="Square GEMM sizes to tune as well.")
@click.option("--min-time", type=FiniteFloatRange(min=0, min_open=True), default=MIN_TIME, show_default=True,
              help="Seconds per timed run.")
@click.option("--repeats", type=click.IntRange(min=1), default=REPEATS, show_default=True,
              help="Timed runs per candidate.")
@click.option("--max-seconds", type=FiniteFloatRange(min=0),
              help="Begin no case that would, at the average length of a case so far, end later than this "
              "(the cases with the most work go first); what is tuned is kept.")
@click.option("--skip-tuned", is_flag=True,
              help="Skip the cases this device's cache entry holds already: a bounded run goes on where the "
              "last one stopped.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="The tuning cache to update. Default: CLNET_TUNING_FILE, else tuning.json in clnet's user "
              "cache folder (~/.cache/clnet on Linux).")
@click.option("--export-table", type=click.Path(dir_okay=False), metavar="PATH",
              help="Also write the cases tuned here as a table to ship for the device's class "
              "(clnet/tuned/<class>.json); a table at PATH of the same class, made on as many compute units, "
              "is extended.")
@click.option("--table-class", metavar="NAME", help="The class of --export-table's table (default: the device's "
              "class, as `clnet.tuning.device_class` names it).")
def main(platform, device, models, batch_sizes, sizes, min_time, repeats, max_seconds, skip_tuned, output,
         export_table, table_class):
    """Time GEMM kernel parameters on this device and cache the fastest, for every later plan: the
    GEMMs of the networks at these batch sizes (their convolutions' implicit GEMMs included: forward,
    data and weight gradients), and square ones."""
    dev = open_device(platform=platform, device=device)
    if export_table is not None and not (table_class or tuning.device_class(dev.info)):
        raise click.BadParameter(f"{dev.info.name} belongs to no known device class: name one",
                                 param_hint="--table-class")
    path = output or tuning.cache_path()
    # a bad path fails before the tuning, not after its first case (the cache's folder is made if missing)
    refuse_special(path)
    if export_table is not None:
        check_writable(export_table)
    cases = collect(dev, models, batch_sizes, sizes)
    if skip_tuned:
        done = tuning.tuned_cases(dev, path)
        cases = [(case, call) for case, call in cases if case.key not in done]
    click.echo(f"tuning {len(cases)} GEMMs on {dev.info.label} ({dev.family} family)")
    note = (f"clnet-tune --models {' '.join(models)} --batch-sizes {' '.join(map(str, batch_sizes))} "
            f"--sizes {' '.join(map(str, sizes))} on {dev.info.label}, {dev.info.compute_units} compute units")
    started, tuned = time.perf_counter(), 0
    for begun, (case, call) in enumerate(cases):
        elapsed = time.perf_counter() - started
        # a case is begun only where one of the average length so far would still end in time
        if max_seconds is not None and elapsed + (elapsed / begun if begun else 0) >= max_seconds:
            click.echo(f"stopped after {elapsed:.0f} s of {max_seconds:g}: {len(cases) - begun} cases left untuned")
            break
        try:
            result = tune_case(dev, case, call, min_time, repeats)
        except ClnetError as exc:
            click.echo(f"{case.key}: {exc}")
            continue
        # case by case, into the cache and the table: an interrupted run keeps its work
        tuning.store(dev, {case: result}, path)
        if export_table is not None:
            tuning.export_table(dev, {case: result}, export_table, table_class, note)
        tuned += 1
        gflops = 2e-9 * case.m * case.n * case.k * call.groups / result["seconds"]
        click.echo(f"{case.key:<42} {gflops:9.1f} GFLOP/s  x{result['default_seconds'] / result['seconds']:.2f} "
                   f"over the default  {_short(result['params'])}")
    click.echo(f"wrote {tuned} tuned cases to {path}")
    if export_table is not None:
        click.echo(f"and to the table of {table_class or tuning.device_class(dev.info)}, {export_table}")


def _short(params):
    return " ".join(f"{key}={value}" for key, value in params.items())


if __name__ == "__main__":
    main()
