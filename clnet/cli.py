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


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  clnet-train
  clnet-train --platform pocl --device 0 --model mlp --epochs 5 --batch-size 64 --lr 0.05 \\
              --optimizer sgd --momentum 0.9 --seed 1
  clnet-train --model mnist-cnn --epochs 3 --lr 0.02
  clnet-train --optimizer adam --epochs 20
  CLNET_PLATFORM=nvidia clnet-train""")
@_friendly_errors
@click.option("--platform", help="OpenCL platform: index or name substring (pocl, nvidia, intel, ...). "
              "Default: CLNET_PLATFORM, else the best device's.")
@click.option("--device", help="Device: index (within the platform if one is given) or name substring. "
              "Default: CLNET_DEVICE, else the best (a GPU before a CPU).")
@click.option("--model", "model_name", type=click.Choice(sorted(models.PRESETS)), default="lenet5",
              show_default=True, help="Preset network (cifar-cnn needs 3x32x32 images).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(sorted(optim.OPTIMIZERS)), default="sgd", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate. Default: 0.05 for sgd, 0.001 for adam/adamw.")
@click.option("--momentum", type=click.FloatRange(min=0, max=1, max_open=True), default=0.9,
              show_default=True, help="SGD momentum.")
@click.option("--nesterov", is_flag=True, help="Nesterov momentum (SGD).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--validation-split", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1,
              show_default=True, help="Fraction of the training images held out to report val_accuracy.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds initialisation and shuffling.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final result.")
def train(platform, device, model_name, epochs, batch_size, optimizer, lr, momentum, nesterov,
          weight_decay, validation_split, seed, quiet):
    """Train a network on the bundled MNIST-5k images (4000 train, 1000 test) and report test accuracy."""
    start = time.perf_counter()
    dev = open_device(platform, device)
    (x, y), (x_test, y_test) = datasets.load_mnist_5k()
    model = models.PRESETS[model_name](device=dev, seed=seed)
    lr = lr or DEFAULT_LR[optimizer]
    opt = (optim.SGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
           if optimizer == "sgd" else optim.get(optimizer, lr=lr, weight_decay=weight_decay))
    model.compile(loss="cross_entropy", optimizer=opt)
    if not quiet:
        click.echo(f"Device:    {dev.info.label}")
        click.echo(f"Model:     {model_name}, {model.count_params():,} parameters; {opt!r}")
        click.echo(f"Data:      MNIST-5k (bundled), {len(x)} training images "
                   f"({validation_split:.0%} held out for validation), {len(x_test)} test images")
    model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_split=validation_split,
              verbose=not quiet, stream=sys.stdout)
    result = model.evaluate(x_test, y_test)
    click.echo(f"Test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  "
               f"({time.perf_counter() - start:.1f} s in all)")
