"""Training and inference speed of clnet's preset networks, side by side with PyTorch, in one run.

Protocol (DESIGN.md, "Reference networks"): SGD lr 0.01 momentum 0.9, softmax cross-entropy (mean),
float32, synthetic random data of the preset's input shape. Every step uploads its batch from host
memory on both sides (clnet's Graph.step always does; the PyTorch twin copies it with .to(device));
inference is the forward pass to the logits, without reading them back. Warm-up steps are excluded
and the device is synchronised before the clock stops; the best of --repeats timed runs counts.

The PyTorch twin of each preset has the same layers and starts from clnet's weights (state_dict).
It runs on CUDA (cuDNN, TF32 off) when the clnet device is a GPU, else on the CPU.

    python scripts/bench.py --platform pocl --models mlp --batch-sizes 128 1024
    python scripts/bench.py --platform nvidia --markdown
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyopencl as cl

import clnet
from clnet.models import PRESETS

try:
    import torch
    from torch import nn
except ImportError:
    torch = None

SEED = 0
ENV_SHOWN = ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS", "POCL_MAX_PTHREAD_COUNT", "CLNET_GEMM")


# ---------------------------------------------------------------------- PyTorch twins
def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def _mnist_cnn():
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10))


def _cifar_cnn():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4096, 512), nn.ReLU(), nn.Linear(512, 10))


# preset name -> (input shape of one sample, builder of the torch.nn.Sequential twin)
TWINS = {"mlp": ((1, 28, 28), _mlp), "mnist-cnn": ((1, 28, 28), _mnist_cnn),
         "cifar-cnn": ((3, 32, 32), _cifar_cnn)}


# ---------------------------------------------------------------------- timing
def rate(step, sync, batch, warmup, steps, repeats):
    """Images per second of `step` (one batch each call): the best of `repeats` timed runs."""
    for _ in range(warmup):
        step()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = min(best, time.perf_counter() - start)
    return batch * steps / best


def clnet_rates(model, x, y, timing):
    """(train, infer) images/s of a compiled clnet model on the batch (x, y)."""
    train = model._graph(len(x), x.shape[1:], True, y.dtype)
    infer = model._graph(len(x), x.shape[1:], False)
    finish = model.device.finish
    return (rate(lambda: train.step(x, y), finish, len(x), **timing),
            rate(lambda: infer.infer(x, want_output=False), finish, len(x), **timing))


def torch_rates(net, x, y, device, timing):
    """(train, infer) images/s of the twin; the batch is copied from host memory every step."""
    xh, yh = torch.from_numpy(x), torch.from_numpy(y).long()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xh.to(device)), yh.to(device)).backward()
        opt.step()

    def infer_step():
        with torch.inference_mode():
            net(xh.to(device))

    return rate(train_step, sync, len(x), **timing), rate(infer_step, sync, len(x), **timing)


# ---------------------------------------------------------------------- models
def clnet_model(name, device):
    model = PRESETS[name](device=device, seed=SEED)
    return model.compile(loss="cross_entropy", optimizer=clnet.optim.SGD(lr=0.01, momentum=0.9))


def torch_twin(name, model, device):
    """The twin with clnet's initial weights, and the largest softmax difference on a small batch."""
    net = TWINS[name][1]()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    net.to(device)
    x = batch_data(64, TWINS[name][0], 10, seed=1)[0]
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(x).to(device)), 1).cpu().numpy()
    return net, float(np.abs(model.predict(x, batch_size=len(x)) - expected).max())


def batch_data(batch, shape, classes, seed=SEED):
    rng = np.random.default_rng(seed)
    return (rng.random((batch, *shape), dtype=np.float32),
            rng.integers(0, classes, batch).astype(np.int32))


# ---------------------------------------------------------------------- description
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'unknown CPU'}, {os.cpu_count()} logical CPUs"


def pick_torch_device(choice, cl_device):
    if torch is None or choice == "none":
        return None
    if choice == "auto":
        choice = "cuda" if cl_device.is_gpu and torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--torch-device cuda: this PyTorch sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms
    return torch.device(choice)


def header(cl_device, torch_device, args):
    info = cl_device.info
    lines = [f"clnet vs PyTorch, {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
             f"OpenCL device: {info.name} ({info.type}, {info.compute_units} compute units); "
             f"platform {info.platform} [{info.platform_version}]; driver {info.driver}"]
    if torch_device is None:
        lines.append("PyTorch: " + ("not installed" if torch is None else "not run (--torch-device none)"))
    elif torch_device.type == "cuda":
        lines.append(f"PyTorch device: {torch.cuda.get_device_name(torch_device)} (CUDA {torch.version.cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}, TF32 off, cudnn.benchmark on)")
    else:
        lines.append(f"PyTorch device: CPU {cpu_model()}; torch.get_num_threads() = {torch.get_num_threads()}")
    versions = [f"clnet {clnet.__version__} from {Path(clnet.__file__).parent}",
                f"pyopencl {cl.VERSION_TEXT}", f"numpy {np.__version__}", f"Python {platform.python_version()}"]
    if torch is not None:
        versions.insert(1, f"torch {torch.__version__}")
    lines.append("versions: " + ", ".join(versions))
    lines.append(f"protocol: SGD lr 0.01 momentum 0.9, softmax cross-entropy (mean), float32, synthetic data; "
                 f"{args.warmup} warm-up + {args.steps} timed steps, best of {args.repeats}; every step "
                 f"uploads its batch from host memory; inference = forward to logits, no readback")
    env = [f"{k}={os.environ[k]}" for k in ENV_SHOWN if k in os.environ]
    lines.append("environment: " + (" ".join(env) if env else "no thread/BLAS variables set"))
    return lines


class Table:
    """Prints rows as they are measured, as aligned text or markdown."""

    def __init__(self, columns, markdown):
        self.columns, self.markdown = columns, markdown
        self.widths = [max(len(c), 9) for c in columns]

    def row(self, cells):
        if self.markdown:
            print("| " + " | ".join(cells) + " |", flush=True)
        else:
            print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, self.widths))),
                  flush=True)

    def head(self):
        self.row(self.columns)
        if self.markdown:
            print("|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(self.columns))) + "|")


def cells(name, batch, ours, theirs):
    out = [name, str(batch)]
    if theirs is None:
        return out + [f"{ours[0]:,.0f}", f"{ours[1]:,.0f}"]
    for mine, peer in zip(ours, theirs):
        out += [f"{mine:,.0f}", f"{peer:,.0f}", f"{mine / peer:.2f}"]
    return out


# ---------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--platform", help="clnet OpenCL platform: index or name substring (nvidia, pocl, 3.1...)")
    p.add_argument("--device", help="clnet OpenCL device within the platform: index or name substring")
    p.add_argument("--models", nargs="+", default=[n for n in PRESETS if n in TWINS],
                   help="presets to run (default: every preset with a PyTorch twin)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    p.add_argument("--steps", type=int, default=50, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed runs")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest counts")
    p.add_argument("--torch-device", choices=("auto", "cpu", "cuda", "none"), default="auto",
                   help="auto: CUDA when the clnet device is a GPU, else the CPU")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in PRESETS or m not in TWINS]
    if unknown:
        p.error(f"no preset with a PyTorch twin named {', '.join(unknown)}; "
                f"choose from {', '.join(n for n in PRESETS if n in TWINS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        cl_device = clnet.device(platform=args.platform, device=args.device)
    except clnet.DeviceNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    torch_device = pick_torch_device(args.torch_device, cl_device)
    timing = dict(warmup=args.warmup, steps=args.steps, repeats=args.repeats)
    lines = header(cl_device, torch_device, args)
    if args.markdown:
        lines = [f"**{lines[0]}**", ""] + [f"- {line}" for line in lines[1:]]
    print("\n".join(lines) + "\n", flush=True)

    columns = ["model", "batch"]
    columns += (["clnet train img/s", "clnet infer img/s"] if torch_device is None else
                ["clnet train img/s", "torch train img/s", "train clnet/torch",
                 "clnet infer img/s", "torch infer img/s", "infer clnet/torch"])
    table, notes = Table(columns, args.markdown), []
    table.head()
    for name in args.models:
        model = clnet_model(name, cl_device)
        net = None
        if torch_device is not None:
            net, diff = torch_twin(name, model, torch_device)
            notes.append(f"{name}: clnet and PyTorch softmax outputs differ by at most {diff:.1e} at the start")
        for batch in args.batch_sizes:
            x, y = batch_data(batch, TWINS[name][0], 10)
            ours = clnet_rates(model, x, y, timing)
            theirs = None if net is None else torch_rates(net, x, y, torch_device, timing)
            table.row(cells(name, batch, ours, theirs))
    if notes:
        print("\n" + "\n".join(notes))


if __name__ == "__main__":
    sys.exit(main())
