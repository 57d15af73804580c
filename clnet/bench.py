"""clnet-bench: clnet side by side with PyTorch on the same hardware, in one run.

Measures, for ARCHITECTURE.md's reference networks, training and inference images/s of clnet and of a
PyTorch twin (CUDA with TF32 off when the clnet device is a GPU, else PyTorch on the CPU), and GEMM
GFLOP/s of clnet against cuBLAS (through PyTorch) or numpy; `--profile` (or CLNET_PROFILE=1) adds
the device time of every kernel of one training step, from OpenCL event profiling.

Protocol: SGD lr 0.01 momentum 0.9, softmax cross-entropy (mean), float32, synthetic data. Before
anything is timed its results are checked: the twin starts from clnet's weights, and the softmax
outputs, the loss of a training step, every parameter's first update and the loss after that step
must agree within float32 tolerances on the very batch to be timed (where the first updates differ
by more, both sides are held to the twin's float64 step: clnet within a few times PyTorch's own
float32 error); a GEMM must match its reference.
Every training step uploads its batch from host memory on both sides; inference is the forward
pass to the logits, not read back. Warm-up steps are not timed; each timed run lasts about
--min-time seconds (or --steps steps) and ends when the device is idle; the median of --repeats
runs is reported, clnet's runs and PyTorch's taken in turn so that a drift of the machine's speed
touches both alike.

    clnet-bench --platform pocl --models mlp --batch-sizes 128 1024 --json bench.json
    clnet-bench --platform nvidia --markdown --profile
"""

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import click
import numpy as np
import pyopencl as cl

from . import __version__, optim, tuning
from .cli_options import CONTEXT_SETTINGS, Several, SeveralValuesCommand, device_options, friendly_errors
from .device import Device
from .device import device as open_device
from .errors import ClnetError, OutOfDeviceMemoryError
from .files import check_writable, replace_atomically
from .models import INPUT_SHAPES, PRESETS
from .layers import Dropout
from .ops import gemm
from .torch_twin import torch_twin
from .plan import Plan
from .tensor import DeviceTensor
from .timing import Timing, measure_in_turn

torch = nn = None  # PyTorch, imported by pick_torch_device (seconds that --help need not wait)


def _import_torch() -> None:
    """Import PyTorch into this module's `torch` and `nn`, where it is installed."""
    global torch, nn
    try:
        import torch
        from torch import nn
    except ImportError:
        pass

SEED = 0
CLASSES = 10
LR, MOMENTUM = 0.01, 0.9
GEMM_SIZES = (512, 1024, 2048, 4096)
# What "agree" means before timing (float32 on both sides, different summation orders):
PROB_ATOL = 1e-4     # softmax outputs: largest absolute difference
LOSS_RTOL = 1e-4     # losses: relative difference
# First update of each parameter tensor, |clnet - torch| / |torch| (L2 norms). Loose because a
# max-pool window whose two largest inputs differ by a rounding error routes its gradient to either:
# measured up to 2e-3 between float32 and float64 PyTorch itself for cifar-cnn at batch 32.
UPDATE_RTOL = 1e-2
UPDATE_FLOOR = 1e-2  # updates below this share of the largest are compared against it (_update_differences)
# Where the first updates differ by more, both sides are compared with the twin's step in float64:
# clnet passes within max(UPDATE_RTOL, PEER_FACTOR x PyTorch's own float32 error) of it, tensor by
# tensor. Some networks' gradients amplify float32 rounding: mobilenet-v2 at batch 16 on PoCL, where
# PyTorch's float32 update of a BatchNorm bias is 0.97% off float64 and clnet's 1.5%.
PEER_FACTOR = 3.0
GEMM_RTOL = 1e-4     # GEMM: largest error relative to the largest |entry| of the reference
SHARED_CPU_PAUSE = 0.3  # seconds idle before each timed run where both sides run on the CPU
ENV_SHOWN = ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS", "POCL_MAX_PTHREAD_COUNT", "CLNET_GEMM", "CLNET_TUNING", "CLNET_WINOGRAD",
             "CLNET_WINOGRAD_TILE", "CLNET_DIRECT_CONV", "CLNET_DENSE_CHAIN", "CUDA_VISIBLE_DEVICES")


class CheckError(ClnetError, RuntimeError):
    """clnet and its reference disagree on a result that was about to be timed."""


# ---------------------------------------------------------------------- the networks
# the reference networks (ARCHITECTURE.md), run unless --models says otherwise; any preset can be
REFERENCE_MODELS = ("mlp", "mnist-cnn", "cifar-cnn")


def clnet_model(name, device):
    """The preset, compiled as the protocol says, its Dropout layers off: the two sides would draw
    different masks, and the check could not compare their steps."""
    model = PRESETS[name](device=device, seed=SEED)
    for layer in model.network.layers:
        if isinstance(layer, Dropout):
            layer.p = 0.0
    return model.compile(loss="cross_entropy", optimizer=optim.SGD(lr=LR, momentum=MOMENTUM))


def batch_data(batch, shape):
    rng = np.random.default_rng(SEED)
    return rng.random((batch, *shape), dtype=np.float32), rng.integers(0, CLASSES, batch).astype(np.int32)


def clnet_steps(model, x, y):
    """(step, sync) of a compiled clnet model training, and inferring, on the batch (x, y)."""
    train = model._runner(len(x), x.shape[1:], True, y.dtype)
    infer = model._runner(len(x), x.shape[1:], False)
    finish = model.device.finish
    return {"train": (lambda: train.train(x, y), finish), "infer": (lambda: infer.infer(x, want_output=False), finish)}


class TorchTwin:
    """The PyTorch twin of a clnet model (clnet.torch_twin), from its current weights, with the same
    loss and optimizer."""

    def __init__(self, model, device, state=None, dtype=None):
        """`state`: the weights to start from (the model's own by default); `dtype`: torch.float64
        makes the exact reference of the check."""
        self.device, self.dtype = device, dtype or torch.float32
        self.net = torch_twin(model.network)
        state = model.state_dict() if state is None else state
        self.net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        self.net.to(device, self.dtype)
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step(self, x, y):
        """One optimizer step on host tensors; returns the loss (a device tensor)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(x.to(self.device, self.dtype)), y.to(self.device))
        loss.backward()
        self.optimizer.step()
        return loss

    def logits(self, x):
        with torch.inference_mode():
            return self.net(x.to(self.device, self.dtype))

    def probabilities(self, x):
        self.net.eval()  # running statistics, as clnet's predict (and no update of them)
        return torch.softmax(self.logits(torch.from_numpy(x)), 1).cpu().numpy()

    def train_loss(self, x, y):
        self.net.train()
        return self.train_step(torch.from_numpy(x), torch.from_numpy(y).long()).item()

    def state_dict(self):
        """A copy (on the CPU, .numpy() would share the parameters' memory, which the next step changes)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()}

    def steps(self, x, y):
        """(step, sync) of training, and inferring, on the batch (x, y), each in its mode
        (`self.net.train(kind == "train")`, which the caller sets)."""
        xh, yh = torch.from_numpy(x), torch.from_numpy(y).long()
        return {"train": (lambda: self.train_step(xh, yh), self.sync), "infer": (lambda: self.logits(xh), self.sync)}


# ---------------------------------------------------------------------- correctness
def _update_differences(before, after, reference_after, keys):
    """{key: difference} for the parameter tensors `keys` (the trainable ones): how far the update
    `after - before` is from the reference's, relative to the size of the reference's update, or to
    UPDATE_FLOOR of the largest tensor's update where it is smaller: there it is a sum that cancels
    (a BatchNorm bias before a residual add), whose float32 rounding is its own size (L2 norms; NaN
    counts as infinitely different)."""
    theirs = {key: reference_after[key] - before[key] for key in keys}
    floor = UPDATE_FLOOR * max(np.linalg.norm(update) for update in theirs.values())

    def difference(key):
        ours = after[key] - before[key]
        size = max(np.linalg.norm(theirs[key]), floor, 1e-30)
        return float(np.nan_to_num(np.linalg.norm(ours - theirs[key]) / size, nan=np.inf))
    return {key: difference(key) for key in keys}


def judge_updates(before, clnet_after, torch_after, exact_after, keys):
    """The first updates of clnet and of the float32 twin, each against the twin's update in float64
    (`exact_after`): (failures, the worst tensor's figures). A tensor fails where clnet's difference
    exceeds max(UPDATE_RTOL, PEER_FACTOR times PyTorch's own): what float32 can give there, as
    PyTorch's rounding shows it.

    Args:
        before: the parameters before the step (name -> array); clnet_after, torch_after, exact_after:
            after it, on each side.
        keys: the trainable parameters' names.

    Example:
        >>> failures, worst = judge_updates(start, model.state_dict(), twin.state_dict(), exact.state_dict(), keys)
    """
    ours = _update_differences(before, clnet_after, exact_after, keys)
    theirs = _update_differences(before, torch_after, exact_after, keys)
    allowed = {key: max(UPDATE_RTOL, PEER_FACTOR * theirs[key]) for key in keys}
    worst = max(keys, key=lambda key: ours[key] / allowed[key])
    figures = {"at": worst, "clnet": ours[worst], "torch": theirs[worst], "tolerance": allowed[worst]}
    failures = [f"the first update of {key} differs from float64 PyTorch's by {ours[key]:.2e} of its size, "
                f"PyTorch's float32 update by {theirs[key]:.2e} (tolerance {allowed[key]:.2e}: the larger of "
                f"{UPDATE_RTOL:g} and {PEER_FACTOR:g} times PyTorch's)"
                for key in keys if not ours[key] <= allowed[key]]
    return failures, figures


def check_twin(model, twin, x, y):
    """Compare clnet with its twin on the batch (x, y): forward, one training step, the loss after it.
    The first updates must agree within UPDATE_RTOL, or else, each against the twin's step in float64,
    clnet's within PEER_FACTOR of PyTorch's own float32 error (`judge_updates`). Returns the
    differences found; raises CheckError when one exceeds its tolerance."""
    start = model.state_dict()
    prob_diff = float(np.abs(model.predict(x, batch_size=len(x)) - twin.probabilities(x)).max())
    losses = [[model.train_on_batch(x, y), twin.train_loss(x, y)]]
    keys, clnet_after, torch_after = list(model.gradients()), model.state_dict(), twin.state_dict()
    differences = _update_differences(start, clnet_after, torch_after, keys)
    worst = max(keys, key=differences.get)
    losses.append([model.train_on_batch(x, y), twin.train_loss(x, y)])
    found = {"max_probability_difference": prob_diff, "loss": losses[0], "loss_after_step": losses[1],
             "max_update_difference": differences[worst], "max_update_difference_at": worst}
    failures = []
    if not prob_diff <= PROB_ATOL:
        failures.append(f"softmax outputs differ by up to {prob_diff:.2e} (tolerance {PROB_ATOL:g})")
    for what, (ours, theirs) in (("loss", losses[0]), ("loss after one step", losses[1])):
        if not abs(ours - theirs) <= LOSS_RTOL * abs(theirs):
            failures.append(f"{what}: clnet {ours:.6f}, PyTorch {theirs:.6f} (relative tolerance {LOSS_RTOL:g})")
    if not differences[worst] <= UPDATE_RTOL:
        exact = TorchTwin(model, twin.device, state=start, dtype=torch.float64)
        exact.train_loss(x, y)
        update_failures, found["float64_update_difference"] = judge_updates(
            start, clnet_after, torch_after, exact.state_dict(), keys)
        failures += update_failures
    if failures:
        raise CheckError("; ".join(failures))
    return found


def bench_model(name, batch, cl_device, torch_device, timing):
    """One row: clnet (and its twin, checked against it first) training and inferring on one batch."""
    model = clnet_model(name, cl_device)
    x, y = batch_data(batch, INPUT_SHAPES[name])
    row = {"model": name, "batch": batch, "check": None, "clnet": None, "torch": None, "ratio": None}
    if torch_device is not None:
        twin = TorchTwin(model, torch_device)
        try:
            row["check"] = check_twin(model, twin, x, y)
        except CheckError as exc:
            raise CheckError(f"{name} at batch {batch}: clnet and PyTorch disagree, so nothing was timed: "
                             f"{exc}") from None
    steps = {"clnet": clnet_steps(model, x, y), **({"torch": twin.steps(x, y)} if torch_device is not None else {})}
    for side in steps:
        row[side] = {}
    for kind in ("train", "infer"):
        if torch_device is not None:
            twin.net.train(kind == "train")
        for side, measured in zip(steps, measure_in_turn([steps[side][kind] for side in steps], timing)):
            row[side][kind] = measured.summary(batch, "images/s")
    if torch_device is not None:
        row["ratio"] = {k: row["clnet"][k]["median"] / row["torch"][k]["median"] for k in ("train", "infer")}
    return row


# ---------------------------------------------------------------------- GEMM
@dataclasses.dataclass
class GemmRunner:
    """C = A B for one implementation: `step` enqueues it, `sync` waits, `result` reads C."""
    step: object
    sync: object
    result: object


def clnet_gemm(device, a, b):
    """clnet.ops.gemm recorded into a plan over device tensors; a step replays the plan."""
    plan = Plan(device)
    c = DeviceTensor.empty(device, (len(a), b.shape[1]), what="the GEMM output")
    gemm(plan, DeviceTensor.from_numpy(device, a), DeviceTensor.from_numpy(device, b), c)
    plan.finalize(plan.place(), what=f"the {len(a)}x{b.shape[1]} GEMM")
    return GemmRunner(plan.run, device.finish, c.download)


def torch_gemm(device, a, b):
    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
    tc = torch.empty((len(a), b.shape[1]), device=device)
    return GemmRunner(lambda: torch.matmul(ta, tb, out=tc), torch.cuda.synchronize, lambda: tc.cpu().numpy())


def numpy_gemm(a, b):
    c = np.empty((len(a), b.shape[1]), np.float32)
    return GemmRunner(lambda: np.matmul(a, b, out=c), lambda: None, lambda: c)


def gemm_reference(torch_device):
    """(name, maker of its GemmRunner): cuBLAS through PyTorch on CUDA, else numpy on the CPU."""
    if torch_device is not None and torch_device.type == "cuda":
        return "cuBLAS", lambda a, b: torch_gemm(torch_device, a, b)
    return "numpy", numpy_gemm


def bench_gemm(n, cl_device, reference, timing):
    """Square float32 C = A B, clnet against `reference` (see gemm_reference); the results are
    compared before anything is timed."""
    rng = np.random.default_rng(SEED)
    a, b = (rng.uniform(-1, 1, (n, n)).astype(np.float32) for _ in range(2))
    name, make = reference
    ours, theirs = clnet_gemm(cl_device, a, b), make(a, b)
    for runner in (ours, theirs):
        runner.step()
        runner.sync()
    expected = theirs.result()
    error = float(np.abs(ours.result() - expected).max() / np.abs(expected).max())
    if not error <= GEMM_RTOL:
        raise CheckError(f"GEMM {n}x{n}x{n}: clnet differs from {name} by {error:.2e} of the largest entry "
                         f"(tolerance {GEMM_RTOL:g}), so nothing was timed")
    flops = 2.0 * n ** 3
    ours_rate, theirs_rate = (m.summary(flops / 1e9, "GFLOP/s")
                              for m in measure_in_turn([(r.step, r.sync) for r in (ours, theirs)], timing))
    return {"n": n, "flop": flops, "max_relative_error": error, "clnet": ours_rate,
            "reference": {"name": name, **theirs_rate}, "ratio": ours_rate["median"] / theirs_rate["median"]}


# ---------------------------------------------------------------------- profile
def profile_step(name, batch, device, warmup):
    """Device time of every launch of one training step, from the events of the plan's replay
    (`device` has profiling queues). The step runs `warmup` times first, which also stages the batch."""
    model = clnet_model(name, device)
    x, y = batch_data(batch, INPUT_SHAPES[name])
    runner = model._runner(batch, x.shape[1:], True, y.dtype)
    for _ in range(max(1, warmup)):
        runner.train(x, y)
    device.finish()
    events = runner.plan.run()
    device.finish()
    launches = [{"kernel": launch.kernel.function_name, "global_size": list(launch.global_size),
                 "local_size": launch.local_size and list(launch.local_size),
                 "ms": (event.profile.end - event.profile.start) / 1e6}
                for launch, event in zip(runner.plan.launches, events)]
    total = sum(launch["ms"] for launch in launches)
    kernels = {}
    for launch in launches:
        launch["share"] = launch["ms"] / total
        entry = kernels.setdefault(launch["kernel"], {"kernel": launch["kernel"], "launches": 0, "ms": 0.0})
        entry["launches"] += 1
        entry["ms"] += launch["ms"]
    for entry in kernels.values():
        entry["share"] = entry["ms"] / total
    return {"model": name, "batch": batch, "kernel_ms": total,
            "span_ms": (events[-1].profile.end - events[0].profile.start) / 1e6,
            "launches": launches, "kernels": sorted(kernels.values(), key=lambda e: -e["ms"])}


# ---------------------------------------------------------------------- description
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'unknown CPU'}, {os.cpu_count()} logical CPUs"


def source_commit():
    """`git describe --always --dirty` of the tree clnet is imported from, or None outside git."""
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def pick_torch_device(choice: str, cl_device: Device) -> Optional["torch.device"]:
    """The PyTorch device of the twins, or None where PyTorch is not run.

    Args:
        choice: --torch-device: "auto" (CUDA when `cl_device` is a GPU and PyTorch sees CUDA, else
            the CPU), "cpu", "cuda" or "none".
        cl_device: the clnet device being measured.

    Example:
        pick_torch_device("auto", clnet.device("pocl"))  # torch.device("cpu"), or None without PyTorch
    """
    _import_torch()
    if torch is None or choice == "none":
        return None
    if choice == "auto":
        choice = "cuda" if cl_device.is_gpu and torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ClnetError("--torch-device cuda: this PyTorch sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms
    return torch.device(choice)


def describe_torch(torch_device):
    if torch_device is None:
        return {"device": None, "why": "not installed" if torch is None else "--torch-device none"}
    if torch_device.type == "cuda":
        return {"device": "cuda", "name": torch.cuda.get_device_name(torch_device), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "tf32": False, "cudnn_benchmark": True}
    return {"device": "cpu", "threads": torch.get_num_threads()}


def shared_cpu_pause(cl_device, torch_device):
    """SHARED_CPU_PAUSE where clnet's device and the reference (PyTorch's CPU, or numpy's GEMM, which
    runs where PyTorch has no CUDA) take the same CPU cores, else 0 (`Timing.pause` says why)."""
    reference_on_cpu = torch_device is None or torch_device.type != "cuda"
    return SHARED_CPU_PAUSE if reference_on_cpu and cl_device.info.type == "CPU" else 0.0


def describe(cl_device, torch_device, args, argv, pause=0.0):
    """The hardware, software and protocol of this run, as JSON-able values."""
    versions = {"clnet": __version__, "commit": source_commit(), "torch": torch and torch.__version__,
                "pyopencl": cl.VERSION_TEXT, "numpy": np.__version__, "python": platform.python_version()}
    protocol = {"optimizer": f"SGD lr {LR} momentum {MOMENTUM}", "loss": "softmax cross-entropy (mean)",
                "dtype": "float32", "data": "synthetic (uniform images, random labels)", "dropout": "off (p = 0)",
                "warmup_steps": args.warmup, "steps_per_run": args.steps or None, "min_time_s": args.min_time,
                "repeats": args.repeats, "statistic": "median of the runs (best also in JSON)",
                "pause_s": pause,
                "training": "every step uploads its batch from host memory",
                "inference": "forward to the logits, not read back",
                "check": {"probability_atol": PROB_ATOL, "loss_rtol": LOSS_RTOL, "update_rtol": UPDATE_RTOL,
                          "update_peer_factor": PEER_FACTOR, "gemm_rtol": GEMM_RTOL}}
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": ["clnet-bench", *argv],
            "opencl": dataclasses.asdict(cl_device.info), "cpu": cpu_model(), "torch": describe_torch(torch_device),
            "environment": {k: os.environ[k] for k in ENV_SHOWN if k in os.environ},
            "tuning": tuning.describe(cl_device.info, cl_device.family), "versions": versions, "protocol": protocol}


def header(desc):
    info, t, v, p = desc["opencl"], desc["torch"], desc["versions"], desc["protocol"]
    if t["device"] is None:
        peer = f"PyTorch: not run ({t['why']})"
    elif t["device"] == "cuda":
        peer = f"PyTorch device: {t['name']} (CUDA {t['cuda']}, cuDNN {t['cudnn']}, TF32 off, cudnn.benchmark on)"
    else:
        peer = f"PyTorch device: the CPU; torch.get_num_threads() = {t['threads']}"
    env = " ".join(f"{k}={value}" for k, value in desc["environment"].items())
    return [f"clnet vs PyTorch, {desc['date']}",
            f"OpenCL device: {info['name']} ({info['type']}, {info['compute_units']} compute units); "
            f"platform {info['platform']} [{info['platform_version']}]; driver {info['driver']}",
            peer, f"CPU: {desc['cpu']}",
            "versions: " + ", ".join(f"{k} {value}" for k, value in v.items() if value is not None),
            f"protocol: {p['optimizer']}, {p['loss']}, {p['dtype']}, {p['data']}, dropout {p['dropout']}; "
            f"warm-up: {p['warmup_steps']} "
            f"steps; timed: the median of {p['repeats']} runs, each of "
            + (f"{p['steps_per_run']} steps" if p["steps_per_run"] else f"about {p['min_time_s']} s")
            + (", clnet's and PyTorch's in turn" if t["device"] is not None else "")
            + (f", each after {p['pause_s']:g} s idle" if p.get("pause_s") else "")
            + f"; training: {p['training']}; inference: {p['inference']}; results checked before timing",
            "environment: " + (env or "no thread, BLAS or clnet algorithm variables set"),
            "tuned parameters: " + tuning.describe_text(desc["tuning"])]


# ---------------------------------------------------------------------- output
class Table:
    """Prints rows as they come, as aligned text or markdown; the first `left` columns align left."""

    def __init__(self, columns, markdown, left=1, widths=None):
        self.markdown, self.left = markdown, left
        self.widths = widths or [max(len(c), 9) for c in columns]
        self.row(columns)
        if markdown:
            print("|" + "|".join(" --- " if i < left else " ---: " for i in range(len(columns))) + "|")

    def row(self, cells):
        cells = cells + [""] * (len(self.widths) - len(cells))
        if self.markdown:
            print("| " + " | ".join(cells) + " |", flush=True)
        else:
            print("  ".join(c.ljust(w) if i < self.left else c.rjust(w)
                            for i, (c, w) in enumerate(zip(cells, self.widths))).rstrip(), flush=True)


def print_table(columns, rows, markdown, left=1):
    """A whole table at once, the columns as wide as their longest cell."""
    widths = [max(len(c) for c in column) for column in zip(columns, *rows)]
    table = Table(columns, markdown, left, widths)
    for cells in rows:
        table.row(cells)


def model_table(markdown, with_torch):
    columns = ["model", "batch", "clnet train img/s"]
    columns += (["torch train img/s", "train clnet/torch", "clnet infer img/s", "torch infer img/s",
                 "infer clnet/torch"] if with_torch else ["clnet infer img/s"])
    return Table(columns, markdown, left=2)


def model_cells(row):
    cells = [row["model"], str(row["batch"])]
    if row["clnet"] is None:  # the table's other cells of the row stay empty
        return cells + ["does not fit"]
    for kind in ("train", "infer"):
        cells.append(f"{row['clnet'][kind]['median']:,.0f}")
        if row["torch"] is not None:
            cells += [f"{row['torch'][kind]['median']:,.0f}", f"{row['ratio'][kind]:.2f}"]
    return cells


def check_note(row):
    c = row["check"]
    return (f"{row['model']} batch {row['batch']}: softmax outputs within {c['max_probability_difference']:.1e}, "
            f"loss {c['loss'][0]:.5f} / {c['loss'][1]:.5f}, after one step {c['loss_after_step'][0]:.5f} / "
            f"{c['loss_after_step'][1]:.5f}, first updates within {c['max_update_difference']:.1e} (relative, "
            f"at {c['max_update_difference_at']})" + _float64_note(c.get("float64_update_difference")))


def _float64_note(figures):
    if not figures:
        return ""
    return (f"; against float64 PyTorch at {figures['at']}: clnet {figures['clnet']:.1e}, PyTorch's float32 "
            f"{figures['torch']:.1e} (tolerance {figures['tolerance']:.1e})")


def gemm_table(markdown, reference):
    return Table(["n", "clnet GFLOP/s", f"{reference} GFLOP/s", f"clnet/{reference}", "max rel. error"],
                 markdown)


def gemm_cells(result):
    return [str(result["n"]), f"{result['clnet']['median']:,.1f}", f"{result['reference']['median']:,.1f}",
            f"{result['ratio']:.2f}", f"{result['max_relative_error']:.1e}"]


def print_profile(profile, markdown):
    print(f"\nProfile of one training step: {profile['model']}, batch {profile['batch']}: kernels "
          f"{profile['kernel_ms']:.3f} ms, first start to last end {profile['span_ms']:.3f} ms\n")
    print_table(["#", "kernel", "global size", "local size", "ms", "share"],
                [[str(i), e["kernel"], "x".join(map(str, e["global_size"])),
                  "x".join(map(str, e["local_size"])) if e["local_size"] else "-", f"{e['ms']:.3f}",
                  f"{e['share']:.1%}"] for i, e in enumerate(profile["launches"])], markdown, left=2)
    print()
    print_table(["kernel", "launches", "ms", "share"],
                [[e["kernel"], str(e["launches"]), f"{e['ms']:.3f}", f"{e['share']:.1%}"]
                 for e in profile["kernels"]], markdown)


# ---------------------------------------------------------------------- main
def write_json(path, results):
    text = (json.dumps(results, indent=1) + "\n").encode()
    replace_atomically(path, lambda f: f.write(text))


def run_models(args, cl_device, torch_device, timing):
    rows, table = [], model_table(args.markdown, torch_device is not None)
    for name in args.models:
        for batch in args.batch_sizes:
            try:
                rows.append(bench_model(name, batch, cl_device, torch_device, timing))
            except OutOfDeviceMemoryError as exc:  # a row that does not fit is reported; the others still run
                rows.append({"model": name, "batch": batch, "check": None, "clnet": None, "torch": None,
                             "ratio": None, "skipped": str(exc)})
            table.row(model_cells(rows[-1]))
    notes = [("- " if args.markdown else "  ") + check_note(row) for row in rows if row["check"]]
    print("\nchecked before timing (clnet / PyTorch):\n" + "\n".join(notes) if notes else
          "\nnot checked against PyTorch (not run)")
    return rows


def run_gemm(args, cl_device, torch_device, timing):
    print()
    results, reference = [], gemm_reference(torch_device)
    table = gemm_table(args.markdown, reference[0])
    for n in args.gemm_sizes:
        results.append(bench_gemm(n, cl_device, reference, timing))
        table.row(gemm_cells(results[-1]))
    return results


def run_profiles(args, cl_device):
    profiling, profiles = Device(cl_device.info, cl_device.cl_device, profiling=True, family=cl_device.family), []
    for name in args.models:
        for batch in args.batch_sizes:
            profiles.append(profile_step(name, batch, profiling, args.warmup))
            print_profile(profiles[-1], args.markdown)
    return profiles


def run(args: SimpleNamespace, argv: List[str]) -> Dict[str, Any]:
    """Measure and print everything `args` asks for; returns the results as JSON-able values.

    Args:
        args: the options of clnet-bench as attributes (platform, device, models, batch_sizes, ...).
        argv: the command line, recorded in the results as the command that produced them.

    Example:
        clnet-bench --json bench.json ...  # writes what run() returns
    """
    cl_device = open_device(platform=args.platform, device=args.device)
    torch_device = pick_torch_device(args.torch_device, cl_device)
    timing = Timing(args.warmup, args.steps, args.repeats, args.min_time,
                    pause=shared_cpu_pause(cl_device, torch_device))
    results = describe(cl_device, torch_device, args, argv, timing.pause)
    lines = header(results)
    if args.markdown:
        lines = [f"**{lines[0]}**", ""] + [f"- {line}" for line in lines[1:]]
    print("\n".join(lines) + "\n", flush=True)
    results["models"] = run_models(args, cl_device, torch_device, timing) if args.models else []
    results["gemm"] = [] if args.no_gemm else run_gemm(args, cl_device, torch_device, timing)
    results["profile"] = run_profiles(args, cl_device) if args.profile else []
    return results


def _writable(ctx, param, path):
    """--json checked before the benchmark runs, not after: a regular file or none, in a writable folder."""
    if path is not None:
        try:
            check_writable(path)
        except ClnetError as exc:
            raise click.BadParameter(str(exc)) from None
    return path


@click.command(cls=SeveralValuesCommand, context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-bench --platform pocl --models mlp --batch-sizes 128 1024 --json bench.json
  clnet-bench --platform nvidia --markdown --profile
  clnet-bench --models mnist-cnn --batch-sizes 128 --no-gemm --torch-device none""")
@friendly_errors
@device_options
@click.option("--models", type=Several(click.Choice(sorted(PRESETS))), default=list(REFERENCE_MODELS),
              show_default=True, metavar="[MODEL...]", help="Presets to run, at their default input size "
              "(none: skip them).")
@click.option("--batch-sizes", type=Several(click.IntRange(min=1), at_least=1), default=[128, 1024],
              show_default=True, metavar="N...", help="Batch sizes of the networks.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed steps before the timed runs.")
@click.option("--steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Steps per timed run (0: as many as take --min-time seconds).")
@click.option("--min-time", type=float, default=0.5, show_default=True,
              help="About how long a timed run lasts without --steps, in seconds.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs; the median is reported.")
@click.option("--torch-device", type=click.Choice(["auto", "cpu", "cuda", "none"]), default="auto", show_default=True,
              help="auto: CUDA when the clnet device is a GPU, else the CPU.")
@click.option("--gemm-sizes", type=Several(click.IntRange(min=1), at_least=1), default=list(GEMM_SIZES),
              show_default=True, metavar="N...", help="Square GEMM sizes.")
@click.option("--no-gemm", is_flag=True, help="Skip the GEMM benchmark.")
@click.option("--profile", is_flag=True, default=lambda: os.environ.get("CLNET_PROFILE", "0") not in ("", "0"),
              help="Also print the device time of every kernel of one training step (or CLNET_PROFILE=1).")
@click.option("--markdown", is_flag=True, help="Print the tables as markdown.")
@click.option("--json", type=click.Path(dir_okay=False, path_type=Path), callback=_writable, metavar="PATH",
              help="Write every number and the hardware description here.")
@click.pass_context
def main(ctx, **options):
    """clnet side by side with PyTorch on the same hardware, in one run: training and inference
    images/s of the reference networks, GEMM GFLOP/s, each checked against PyTorch (or numpy)
    before it is timed."""
    args = SimpleNamespace(**options)  # the options as run() and describe() read them
    results = run(args, ctx.meta["argv"])
    if args.json is not None:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
