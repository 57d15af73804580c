"""The streaming input pipeline measured: decoding throughput against torchvision's DataLoader, and
what streaming costs a training run.

decode: images/s of clnet's pipeline alone (ImageFolder(stream=True) batches: worker processes,
shared memory) beside torchvision's ImageFolder + DataLoader with the same transforms (training:
random-resized-crop and flip; evaluation: resize and centre crop), batch size and workers, both to
uint8 batches; a table with the ratio clnet / torchvision.

    python3 scripts/pipeline_bench.py unpack /work/main/.data/cifar10-train-jpg.tar.gz /tmp/cifar
    python3 scripts/pipeline_bench.py enlarge /tmp/cifar/cifar10-jpg/train /tmp/cifar-500x375 --per-class 1000
    python3 scripts/pipeline_bench.py decode /tmp/cifar/cifar10-jpg/train /tmp/cifar-500x375 --workers 2 16

train: a streamed resnet18 at 224x224 (random-resized-crop, flip) beside the same run on a synthetic
set held on the device: images/s of each after a first, untimed epoch, the ratio, and the share of
the streamed epoch spent waiting for input.

    python3 scripts/pipeline_bench.py train /tmp/cifar-500x375 --workers 16 --batch-size 256 --steps 40
"""

import argparse
import multiprocessing
import tarfile
import time
from pathlib import Path

import numpy as np

import clnet
from clnet.datasets import ImageFolder, ImageStream


def unpack(args):
    with tarfile.open(args.archive) as tar:
        tar.extractall(args.dest, filter="data")
    print(f"unpacked {args.archive} into {args.dest}")


def _enlarge_one(task):
    from PIL import Image
    source, dest, size = task
    with Image.open(source) as image:
        image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(dest, quality=90)


def enlarge(args):
    """Every class folder's first --per-class JPEGs upscaled to 500x375 and re-encoded at quality 90."""
    source, dest = Path(args.source), Path(args.dest)
    tasks = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.jpg"))[:args.per_class]:
            tasks.append((path, dest / folder.name / path.name, (500, 375)))
    with multiprocessing.Pool() as pool:
        pool.map(_enlarge_one, tasks, chunksize=64)
    print(f"wrote {len(tasks)} images of 500x375 into {dest}")


def clnet_rate(folder, size, batch, workers, images, train):
    """Images/s of a streamed folder's batches, after the first (the workers' start-up)."""
    stream = ImageFolder(folder, image_size=size, stream=True, workers=workers, augment="random-resized-crop,flip")
    order = np.random.default_rng(0).permutation(len(stream))[:images]
    feed = stream.batches(order, batch, seed=0, epoch=1, train=train)
    next(feed)
    start, done = time.perf_counter(), 0
    for images_, _ in feed:
        done += len(images_)
    rate = done / (time.perf_counter() - start)
    stream.close()
    return rate


def torchvision_rate(folder, size, batch, workers, images, train):
    """Images/s of torchvision's ImageFolder through a DataLoader with the same transforms, as uint8."""
    import torch
    from torchvision import datasets, transforms
    steps = ([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if train
             else [transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size)])
    data = datasets.ImageFolder(folder, transforms.Compose(steps + [transforms.PILToTensor()]))
    order = np.random.default_rng(0).permutation(len(data))[:images].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, order), batch_size=batch,
                                         num_workers=workers, prefetch_factor=2 if workers else None)
    feed = iter(loader)
    next(feed)
    start, done = time.perf_counter(), 0
    for x, _ in feed:
        done += len(x)
    return done / (time.perf_counter() - start)


def decode(args):
    print(f"{'folder':<40} {'transform':<9} {'workers':>7} {'clnet img/s':>12} {'torchvision img/s':>18} {'ratio':>6}")
    for folder in args.folders:
        for workers in args.workers:
            for train in (True, False):
                ours = clnet_rate(folder, args.image_size, args.batch_size, workers, args.images, train)
                theirs = torchvision_rate(folder, args.image_size, args.batch_size, workers, args.images, train)
                print(f"{str(folder)[-40:]:<40} {'train' if train else 'eval':<9} {workers:>7} {ours:>12,.0f} "
                      f"{theirs:>18,.0f} {ours / theirs:>6.2f}", flush=True)


class _EpochTimes(clnet.callbacks.Callback):
    """Each epoch's seconds and input wait."""

    def __init__(self):
        self.seconds, self.waits = [], []

    def on_epoch_metrics(self, epoch, logs):
        self.seconds.append(self.trainer.epoch_seconds)
        self.waits.append(self.trainer.input_wait)


def _timed_fit(model, x, y, batch, **kwargs):
    """(seconds, input wait) of the second of two epochs."""
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.01, momentum=0.9))
    times = _EpochTimes()
    model.fit(x, y, epochs=2, batch_size=batch, verbose=0, callbacks=[times], **kwargs)
    return times.seconds[-1], times.waits[-1]


def train(args):
    device = clnet.device(platform=args.platform, device=args.device)
    folder = ImageFolder(args.folder, image_size=args.image_size, stream=True)
    chosen = np.random.default_rng(0).permutation(len(folder))[:args.steps * args.batch_size]
    size = (args.image_size, args.image_size)
    stream = ImageStream([folder.files[i] for i in chosen], folder.y[chosen], folder.classes, size, 3,
                         augment="random-resized-crop,flip", workers=args.workers)
    streamed = clnet.models.resnet18(device=device, input_shape=stream.image_shape, classes=stream.num_classes)
    seconds, wait = _timed_fit(streamed, stream, None, args.batch_size)
    x = np.random.default_rng(0).integers(0, 256, stream.shape, dtype=np.uint8)
    resident = clnet.models.resnet18(device=device, input_shape=stream.image_shape, classes=stream.num_classes)
    resident_seconds, _ = _timed_fit(resident, x, stream.y, args.batch_size, resident=True)
    rate, resident_rate = len(stream) / seconds, len(stream) / resident_seconds
    print(f"device: {device.info.label}; resnet18 at {size[0]}x{size[1]}, batch {args.batch_size}, "
          f"{args.steps} steps an epoch, {args.workers} workers")
    print(f"streamed: {rate:,.0f} img/s (input wait {wait / seconds:.0%});  resident synthetic: "
          f"{resident_rate:,.0f} img/s;  streamed / resident {rate / resident_rate:.2f}")


def main():
    intro, _, rest = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=intro,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest)
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("unpack", help="unpack an archive of JPEG folders (under /tmp, not the repository)")
    p.add_argument("archive")
    p.add_argument("dest")
    p.set_defaults(run=unpack)
    p = modes.add_parser("enlarge", help="make a folder of 500x375 JPEGs (quality 90) upscaled from a folder's")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--per-class", type=int, default=1000)
    p.set_defaults(run=enlarge)
    p = modes.add_parser("decode", help="decoding throughput, clnet against torchvision's DataLoader")
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--workers", type=int, nargs="+", default=[multiprocessing.cpu_count()])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=5120, help="images decoded per measurement")
    p.set_defaults(run=decode)
    p = modes.add_parser("train", help="a streamed resnet18 against the same run on a resident synthetic set")
    p.add_argument("folder", type=Path)
    p.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=40, help="steps an epoch")
    p.add_argument("--platform")
    p.add_argument("--device")
    p.set_defaults(run=train)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
