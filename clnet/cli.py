"""Command-line tools: clnet-train and clnet-devices.

A user mistake exits 2 (usage, from click) or 1 with a one-line message; --debug shows the traceback.
"""

import functools
import json
import sys
import time

import click

from . import datasets, models, optim
from .device import INSTALL_HINT, device as open_device, list_devices
from .errors import ClnetError
from .text import format_bytes

DEFAULT_LR = {"sgd": 0.05, "adam": 0.001, "adamw": 0.001}


def _friendly_errors(command):
    """Turn clnet errors (and any unexpected one) into a message and exit status 1, unless --debug."""
    @functools.wraps(command)
    def wrapper(*args, debug=False, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.ClickException:  # usage errors: click prints them and exits 2
            raise
        except (ClnetError, OSError) as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: still one line, with the way to see more
            if debug:
                raise
            click.echo(f"Error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", err=True)
        sys.exit(1)
    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(wrapper)


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  clnet-devices
  clnet-devices --json""")
@_friendly_errors
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
def devices(as_json):
    """List every OpenCL platform and device clnet can use.

    Select one elsewhere with --platform and --device (an index, or a case-insensitive name
    substring), or with the environment variables CLNET_PLATFORM and CLNET_DEVICE.
    """
    infos = list_devices()
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    if not infos:
        raise ClnetError("No OpenCL platform was found. " + INSTALL_HINT)
    for info in infos:
        click.echo(f"[{info.index}] platform {info.platform_index}, device {info.device_index}: "
                   f"{info.name} ({info.type})")
        rows = [("platform", f"{info.platform} ({info.platform_vendor})"),
                ("version", info.platform_version),
                ("compute units", info.compute_units),
                ("global memory", format_bytes(info.global_mem)),
                ("max allocation", format_bytes(info.max_alloc)),
                ("local memory", format_bytes(info.local_mem)),
                ("fp64 / fp16", f"{'yes' if info.fp64 else 'no'} / {'yes' if info.fp16 else 'no'}"),
                ("OpenCL C", info.opencl_c),
                ("driver", info.driver)]
        for key, value in rows:
            click.echo(f"    {key:<15} {value}")


def _image_size(ctx, param, value):
    """"64x64" (or "64") -> (64, 64)."""
    if value is None:
        return None
    try:
        h, _, w = value.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 64x64") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  clnet-train
  clnet-train --platform pocl --device 0 --model mlp --epochs 5 --batch-size 64 --lr 0.05 \\
              --optimizer sgd --momentum 0.9 --seed 1
  clnet-train --model mnist-cnn --epochs 3 --lr 0.02
  clnet-train --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
  clnet-train --dataset cifar10 --model cifar-cnn --augment crop,flip --normalize --lr 0.02
  clnet-train --dataset ./my_images/ --image-size 64x64 --model cifar-cnn
  clnet-train --dataset data.npz --optimizer adam --epochs 20 --save model.clnet
  clnet-train --dataset fashion-mnist --epochs 30 --checkpoint run.clnet     # Ctrl-C, then the same with --resume
  CLNET_PLATFORM=nvidia clnet-train""")
@_friendly_errors
@click.option("--platform", help="OpenCL platform: index or name substring (pocl, nvidia, intel, ...). "
              "Default: CLNET_PLATFORM, else the best device's.")
@click.option("--device", help="Device: index (within the platform if one is given) or name substring. "
              "Default: CLNET_DEVICE, else the best (a GPU before a CPU).")
@click.option("--dataset", default="mnist-5k", show_default=True,
              help="A known dataset (" + ", ".join(sorted(datasets.DATASETS)) + "), found on disk or "
              "downloaded, or a path: an image folder (a sub-folder per class), a .npz file, a CIFAR "
              "archive or a folder of IDX files.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Where to look for a known dataset first (then the cache, then /usr/share/datasets).")
@click.option("--offline", is_flag=True, help="Never download: fail if the files are not on disk.")
@click.option("--image-size", callback=_image_size, help="Resize the images of an image folder, e.g. 64x64.")
@click.option("--model", "model_name", type=click.Choice(sorted(models.PRESETS)), default="lenet5",
              show_default=True, help="Preset network, sized for the dataset's images and classes.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(sorted(optim.OPTIMIZERS)), default="sgd", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate. Default: 0.05 for sgd, 0.001 for adam/adamw.")
@click.option("--momentum", type=click.FloatRange(min=0, max=1, max_open=True), default=0.9,
              show_default=True, help="SGD momentum.")
@click.option("--nesterov", is_flag=True, help="Nesterov momentum (SGD).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--augment", help="On the device, training only: crop (random crops of the image padded "
              "by 4 pixels; crop=N for N), flip (random horizontal flips), or crop,flip.")
@click.option("--normalize", is_flag=True, help="Normalise each channel by the training images' mean and std.")
@click.option("--validation-split", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1,
              show_default=True, help="Fraction of the training images held out to report val_accuracy.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds initialisation and shuffling.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False),
              help="Write the trained model to this file (load it with clnet.load).")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Write a checkpoint to this file after every epoch and on Ctrl-C.")
@click.option("--resume", is_flag=True, help="Continue the run saved in --checkpoint (same options).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final result.")
def train(platform, device, dataset, data_dir, offline, image_size, model_name, epochs, batch_size, optimizer,
          lr, momentum, nesterov, weight_decay, augment, normalize, validation_split, seed, save_path,
          checkpoint, resume, quiet):
    """Train a preset network on a dataset (by default the bundled MNIST-5k: 4000 training and 1000
    test images) and report its test accuracy."""
    start = time.perf_counter()
    dev = open_device(platform, device)
    train_set, test_set = datasets.load(dataset, data_dir=data_dir, download=not offline, image_size=image_size)
    model = models.PRESETS[model_name](device=dev, seed=seed, input_shape=train_set.image_shape,
                                       classes=train_set.num_classes)
    lr = lr or DEFAULT_LR[optimizer]
    opt = (optim.SGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
           if optimizer == "sgd" else optim.get(optimizer, lr=lr, weight_decay=weight_decay))
    model.compile(loss="cross_entropy", optimizer=opt)
    if not quiet:
        click.echo(f"Device:    {dev.info.label}")
        click.echo(f"Data:      {train_set.name}, {len(train_set)} training images of {train_set.image_shape} "
                   f"({validation_split:.0%} held out for validation), {train_set.num_classes} classes, "
                   + (f"{len(test_set)} test images" if test_set is not None else "no test set"))
        click.echo(f"Model:     {model_name}, {model.count_params():,} parameters; {opt!r}")
    if resume and not checkpoint:
        raise click.UsageError("--resume needs --checkpoint, the file of the run to continue")
    try:
        history = model.fit(train_set, epochs=epochs, batch_size=batch_size, validation_split=validation_split,
                            verbose=not quiet, stream=sys.stdout, normalize=normalize or None, augment=augment,
                            checkpoint=checkpoint, resume=resume)
    except KeyboardInterrupt:
        if checkpoint:
            click.echo(f"Interrupted: the run is saved in {checkpoint}; continue it with the same command "
                       "and --resume.", err=True)
            sys.exit(130)
        raise
    if save_path:
        model.save(save_path, classes=train_set.classes)
    elapsed = f"({time.perf_counter() - start:.1f} s in all)"
    if test_set is not None:
        result = model.evaluate(test_set)
        click.echo(f"Test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  {elapsed}")
    elif "val_accuracy" in history.history:
        click.echo(f"Validation accuracy {history.history['val_accuracy'][-1]:.4f} (the dataset has no test "
                   f"split)  {elapsed}")
    else:
        click.echo(f"Training accuracy {history.history['accuracy'][-1]:.4f} (no test split, no validation) "
                   f"{elapsed}")
