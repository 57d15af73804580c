"""Training throughput on several devices, in one run: clnet on 1 GPU, on 2 GPUs in one process
(replicas), and on 2 MPI ranks (mpiexec -n 2, one GPU each), beside PyTorch DistributedDataParallel
(NCCL, launched with torch.multiprocessing spawn) on 1 and 2 GPUs; then a GPU with the PoCL CPU
beside it against the GPU alone, with the shares clnet chose. Every case trains the preset
(cifar-cnn, resnet18 with the CIFAR stem) on synthetic 32x32 images at one global batch size, with
softmax cross-entropy and SGD (lr 0.01, momentum 0.9), float32, TF32 off in PyTorch.

clnet's steps upload each batch as uint8 images from the host (the way a fit reads data);
PyTorch's use a batch held on the GPU. clnet's seam is timed too: per step, the compute, the
gradients' reduction and the part of it that the compute hid.

    python scripts/multi_device_bench.py                                   # cifar-cnn and resnet18
    python scripts/multi_device_bench.py --models cifar-cnn --steps 20 --json multi.json
    python scripts/multi_device_bench.py --platform pocl --models cifar-cnn --batch-size 64 --steps 2 --skip torch
"""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import click
import numpy as np

import clnet
from clnet import balance, models, optim
from clnet.timing import Timing, measure

SHAPE, CLASSES, LR, MOMENTUM = (3, 32, 32), 10, 0.01, 0.9
CASES = ("torch", "mpi", "cpu")  # the parts --skip may leave out


def clnet_model(name, devices):
    model = models.PRESETS[name](device=devices if len(devices) > 1 else devices[0], seed=0, input_shape=SHAPE,
                                 classes=CLASSES)
    return model.compile("cross_entropy", optim.SGD(lr=LR, momentum=MOMENTUM))


def clnet_rate(name, devices, batch, timing):
    """images/s of clnet's training step on `devices` (this process's; under MPI every rank runs
    this), with the seam's times per step in ms and the shares after the measured steps."""
    model = clnet_model(name, devices)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, *SHAPE), dtype=np.uint8)
    y = rng.integers(0, CLASSES, batch).astype(np.int32)
    times = model.time_seam()  # before the runner is made, which takes it
    runner = model._runner(batch, SHAPE, True, y.dtype, model._spec(x))

    steps = 0

    def step():
        nonlocal steps
        steps += 1
        if steps == timing.warmup + 1:
            times.reset()  # the seam's times of the timed steps only
        runner.train(x, y)

    def sync():
        for device in devices:
            device.finish()
    if model.balancer:  # time the balanced steps, not the measuring ones at the slowest device's pace
        timing = dataclasses.replace(timing, warmup=max(timing.warmup, balance.SETTLED))
    result = measure(step, sync, timing).summary(batch, "images/s")
    seam = times.per_step()
    return {"images_per_second": result["median"], "seconds": result["seconds"],
            "seam_ms": {k: 1e3 * v for k, v in seam.items() if k != "steps"} if seam["steps"] else None,
            "shares": [float(w) for w in model.shares],
            "left_out": sorted(model.balancer.dropped) if model.balancer else []}


def mpi_rate(name, platform, batch, timing, ranks):
    """clnet under `mpiexec -n ranks`: each rank on its local GPU (by local rank); rank 0's result."""
    launcher = shutil.which("mpiexec") or shutil.which("mpirun")
    if launcher is None:
        return {"error": "no mpiexec (pip install mpich mpi4py)"}
    command = [launcher, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker", "mpi",
               "--models", name, "--platform", platform, "--batch-size", str(batch), "--steps", str(timing.steps),
               "--warmup", str(timing.warmup), "--repeats", str(timing.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["mpiexec failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mpi_worker(name, platform, batch, timing):
    world = clnet.distributed.init()
    result = clnet_rate(name, clnet.distributed.local_devices(platform), batch, timing)
    if world.lead:
        print(json.dumps({**result, "ranks": world.size}), flush=True)


def _ddp_worker(rank, ranks, network, batch, timing, port, results):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from clnet.torch_twin import torch_twin
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=ranks)
    net = DistributedDataParallel(torch_twin(network).cuda(rank), device_ids=[rank])
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.rand(batch // ranks, *SHAPE, device=f"cuda:{rank}")
    y = torch.randint(0, CLASSES, (batch // ranks,), device=f"cuda:{rank}")

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
    result = measure(step, torch.cuda.synchronize, timing).summary(batch, "images/s")
    if rank == 0:
        results.put({"images_per_second": result["median"], "seconds": result["seconds"]})
    dist.destroy_process_group()


def ddp_rate(network, batch, timing, ranks):
    """images/s of PyTorch DDP (NCCL) on `ranks` GPUs, batch // ranks per GPU."""
    import torch
    import torch.multiprocessing as mp
    if torch.cuda.device_count() < ranks:
        return {"error": f"{torch.cuda.device_count()} CUDA GPUs"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_worker, args=(ranks, network, batch, timing, port, results), nprocs=ranks, join=True)
    return results.get()


def rate(result):
    return result.get("images_per_second") if result else None


def table(rows, headers):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def number(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


def report(results, batch):
    rows, seams, mixed = [], [], []
    for name, r in results.items():
        one, two, mpi = rate(r["clnet_1"]), rate(r["clnet_2"]), rate(r.get("clnet_mpi"))
        t1, t2 = rate(r.get("torch_1")), rate(r.get("torch_2"))
        rows.append([name, number(one), number(two), ratio(two, one), number(mpi), ratio(mpi, two), number(t1),
                     number(t2), ratio(t2, t1), ratio(two, t2)])
        for case in ("clnet_2", "clnet_mpi"):
            seam = (r.get(case) or {}).get("seam_ms")
            if seam:
                seams.append([name, case, f"{seam['compute']:.2f}", f"{seam['reduction']:.2f}",
                              f"{seam['hidden']:.2f}"])
        if r.get("gpu_cpu"):
            g = r["gpu_cpu"]
            mixed.append([name, number(one), number(rate(g)), ratio(rate(g), one),
                          " / ".join(f"{w:.1%}" for w in g.get("shares", [])),
                          "CPU left out" if g.get("left_out") else ""])
    text = [f"Training images/s at global batch {batch} (median of the timed runs)", "",
            table(rows, ["model", "clnet 1 GPU", "clnet 2 GPUs", "2/1", "clnet mpirun -n 2", "mpi/in-process",
                         "DDP 1 GPU", "DDP 2 GPUs", "DDP 2/1", "clnet 2 / DDP 2"])]
    if seams:
        text += ["", "clnet's seam per step (ms)", "",
                 table(seams, ["model", "case", "compute", "reduction", "hidden by compute"])]
    if mixed:
        text += ["", "GPU + PoCL CPU against the GPU alone (shares by measured throughput)", "",
                 table(mixed, ["model", "GPU alone", "GPU + CPU", "ratio", "shares GPU / CPU", ""])]
    return "\n".join(text)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", "names", default="cifar-cnn,resnet18", show_default=True,
              help="Comma-separated presets (any of clnet's, trained on 3x32x32 images).")
@click.option("--batch-size", type=click.IntRange(min=2), default=1024, show_default=True,
              help="The global batch: split among the devices.")
@click.option("--platform", default="nvidia", show_default=True, help="The GPUs' OpenCL platform.")
@click.option("--cpu-platform", default="pocl", show_default=True, help="The CPU's, for the GPU + CPU case.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Steps per timed run.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Untimed steps first (at least the 7 that balanced shares take to settle; a hopeless "
                   "device is left out at step 2).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed runs (median).")
@click.option("--skip", default="", help="Comma-separated parts to leave out: " + ", ".join(CASES) + ".")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results here.")
@click.option("--worker", type=click.Choice(["mpi"]), hidden=True)
def main(names, batch_size, platform, cpu_platform, steps, warmup, repeats, skip, json_path, worker):
    """Images/s of clnet on 1 GPU, 2 GPUs in one process and 2 MPI ranks, beside PyTorch DDP on 1
    and 2 GPUs, and of a GPU with the CPU beside it; a table with the ratios."""
    timing = Timing(warmup=warmup, steps=steps, repeats=repeats, min_time=0)
    names = [n.strip() for n in names.split(",") if n.strip()]
    if worker == "mpi":
        return mpi_worker(names[0], platform, batch_size, timing)
    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    if skipped - set(CASES):
        raise click.BadParameter(f"{', '.join(sorted(skipped - set(CASES)))}: the parts are {', '.join(CASES)}",
                                 param_hint="--skip")
    gpus = clnet.devices(platform, "all")[:2]
    if len(gpus) < 2:
        gpus = gpus * 2  # one GPU listed twice: the code paths, not the speed-up
        click.echo(f"Only one device on {platform}: it is listed twice", err=True)
    results = {}
    for name in names:
        r = results[name] = {}
        cases = {"clnet_1": lambda: clnet_rate(name, gpus[:1], batch_size, timing),
                 "clnet_2": lambda: clnet_rate(name, gpus, batch_size, timing)}
        if "mpi" not in skipped:
            cases["clnet_mpi"] = lambda: mpi_rate(name, platform, batch_size, timing, 2)
        if "torch" not in skipped:
            network = clnet_model(name, gpus[:1]).network
            cases["torch_1"] = lambda: ddp_rate(network, batch_size, timing, 1)
            cases["torch_2"] = lambda: ddp_rate(network, batch_size, timing, 2)
        if "cpu" not in skipped:
            cases["gpu_cpu"] = lambda: clnet_rate(name, [gpus[0], clnet.device(platform=cpu_platform)], batch_size,
                                                  timing)
        for case, run in cases.items():
            started = time.perf_counter()
            try:
                r[case] = run()
            except Exception as exc:  # one case failing (out of memory, no driver) leaves the others
                r[case] = {"error": f"{type(exc).__name__}: {exc}"}
            message = r[case].get("error") or f"{number(rate(r[case]))} images/s"
            click.echo(f"{name} {case}: {message} ({time.perf_counter() - started:.0f} s)", err=True)
    described = {"gpus": [g.info.label for g in gpus], "batch_size": batch_size, "steps": steps, "warmup": warmup,
                 "repeats": repeats, "results": results}
    click.echo(report(results, batch_size))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(described, f, indent=1)


if __name__ == "__main__":
    main()
