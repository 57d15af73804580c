"""Command-line tools: clnet-train, clnet-eval, clnet-predict, clnet-export, clnet-pack and clnet-devices.

A user mistake exits 2 (usage, from click) or 1 with a one-line message; --debug shows the traceback.
"""

import contextlib
import csv
import inspect
import io
import json
import os
import sys
import time

import click
import numpy as np

from . import callbacks, datasets, metrics, models, optim, tuning
from .cli_options import CONTEXT_SETTINGS, FiniteFloatRange, device_options, friendly_errors, option_group
from .datasets.feed import parse_augment
from .device import INSTALL_HINT, chosen, kernel_family, list_devices
from .distributed import in_turn, local_devices, world
from .errors import ClnetError, InputError
from .files import check_writable, readable_size, replace_atomically, special_kind
from .model import load as load_model
from .onnx_import import from_onnx
from .balance import first_guess
from .replicas import default_shares
from .text import format_bytes


@click.command(context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-devices
  clnet-devices --json
  clnet-devices --platform nvidia --device all       # what a run on every NVIDIA GPU uses
  clnet-devices --platform nvidia,pocl               # every GPU and the CPU, and their shares""")
@friendly_errors
@device_options
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
def devices(platform, device, as_json):
    """List every OpenCL platform and device clnet can use, and what a run would use: the device it
    opens (the environment's, else the best), the devices each rank of an MPI run takes in turn,
    and with --platform/--device the devices selected, one replica each, with their shares of every
    batch.

    Select one elsewhere with --platform and --device (an index, or a case-insensitive name
    substring), or with the environment variables CLNET_PLATFORM and CLNET_DEVICE, or pyopencl's
    PYOPENCL_CTX ("platform:device") when neither of those is set.
    """
    infos = list_devices()
    selected = local_devices(platform, device) if platform or device else None
    tunings = [tuning.describe(info, kernel_family(info)) for info in infos]
    if as_json:
        listed = [{**info.__dict__, "tuning": described} for info, described in zip(infos, tunings)]
        click.echo(json.dumps(listed if selected is None else
                              {"devices": listed, "selected": [d.info.index for d in selected],
                               "shares": _shares_text(selected)}, indent=2))
        return
    if not infos:
        raise ClnetError("No OpenCL platform was found. " + INSTALL_HINT)
    for info, described in zip(infos, tunings):
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
                ("driver", info.driver),
                ("tuned params", tuning.describe_text(described))]
        for key, value in rows:
            click.echo(f"    {key:<15} {value}")
    if selected is not None:
        click.echo(f"Selected: {len(selected)} replica{'s' if len(selected) > 1 else ''}, shares "
                   f"{_shares_text(selected)}")
        for dev in selected:
            click.echo(f"    [{dev.info.index}] {dev.info.label}")
        return
    click.echo("Default: " + ", ".join(f"[{info.index}] {info.label}" for info in chosen()))
    infos = in_turn()
    click.echo("Under mpirun, " + ("every rank takes the same: the environment names it" if infos is None else
                                   "the ranks of a machine take in turn: " + ", ".join(f"[{i.index}]" for i in infos)))


def _shares_text(selected):
    """How a run on these devices splits each batch: "auto (...)", or the equal percentage."""
    if len(selected) == 1:
        return "100%"
    if default_shares(selected) == "auto":
        guess = " / ".join(f"{w:.1%}" for w in first_guess(selected))
        return f"auto (by throughput measured during the first steps; {guess} until then)"
    return f"equal ({100 / len(selected):.3g}% each)"


_data_options = option_group(
    click.option("--dataset", default="mnist-5k", show_default=True,
                 help="A known dataset (" + ", ".join(sorted(datasets.DATASETS)) + "), found on disk or "
                 "downloaded, or a path: an image folder (a sub-folder per class), a .npz file, a CIFAR "
                 "archive, a folder of IDX files or a pack from clnet-pack."),
    click.option("--data-dir", type=click.Path(file_okay=False),
                 help="Where to look for a known dataset first (then the cache, then /usr/share/datasets)."),
    click.option("--offline", is_flag=True, help="Never download: fail if the files are not on disk."),
    click.option("--stream/--no-stream", default=None,
                 help="Decode an image folder batch by batch in worker processes instead of all at once into "
                 "memory (default: stream when the decoded images would take more than half the available memory, "
                 "or CLNET_MEMORY_LIMIT). Streamed images are resized (short side to size/0.875) and centre-cropped."),
    click.option("--workers", type=click.IntRange(min=0), help="Processes decoding a streamed image folder "
                 "(default: the cores; 0: in the main process)."))


def _default_lrs():
    """"0.05 for sgd, 0.001 for adam/adamw": every optimizer's default --lr, for the help."""
    names = {}
    for name, cls in optim.OPTIMIZERS.items():
        names.setdefault(cls.cli_lr, []).append(name)
    return ", ".join(f"{lr:g} for {'/'.join(group)}" for lr, group in names.items())


def _image_size(ctx, param, value):
    """"64x64" (or "64") -> (64, 64)."""
    if value is None:
        return None
    try:
        h, _, w = value.lower().partition("x")
        size = int(h), int(w or h)
    except ValueError:
        size = None
    if size is None or min(size) < 1:
        raise click.BadParameter(f"{value!r} is not HxW of positive integers, e.g. 64x64")
    return size


def _augment(ctx, param, value):
    """The --augment spec, checked here so that a malformed one is a usage error before any data loads."""
    try:
        parse_augment(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _is_onnx(path):
    return path.lower().endswith(".onnx")


def _model_option(ctx, param, value):
    """A preset's name, or the path of an ONNX file."""
    if value in models.PRESETS or _is_onnx(value):
        return value
    raise click.BadParameter(f"{value!r} is neither a preset ({', '.join(sorted(models.PRESETS))}) nor an ONNX "
                             "file (*.onnx)")


@click.command(context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-train
  clnet-train --platform pocl --device 0 --model mlp --epochs 5 --batch-size 64 --lr 0.05 \\
              --optimizer sgd --momentum 0.9 --seed 1
  clnet-train --model mnist-cnn --epochs 3 --lr 0.02
  clnet-train --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
  clnet-train --dataset cifar10 --model cifar-cnn --augment crop,flip --normalize --lr 0.02
  clnet-train --dataset ./my_images/ --image-size 64x64 --model cifar-cnn
  clnet-train --dataset /data/imagenet --stream --workers 16 --image-size 224 --model resnet18 \
              --augment random-resized-crop,flip --batch-size 256   # train/ and val/, streamed
  clnet-train --dataset ./my_images/ --model exported.onnx --lr 0.01   # fine-tune an ONNX network
  clnet-train --dataset data.npz --optimizer adam --epochs 20 --save model.clnet
  clnet-train --dataset fashion-mnist --epochs 30 --checkpoint-dir runs/f30 --plot runs/f30/curves.png
  clnet-train --resume runs/f30                    # after Ctrl-C or a crash: continues where it stopped
  clnet-train --dataset cifar10 --model cifar-cnn --epochs 30 --lr-schedule cosine --warmup 2 --early-stopping 5
  CLNET_PLATFORM=nvidia clnet-train""")
@friendly_errors
@device_options
@_data_options
@click.option("--image-size", callback=_image_size, help="Resize the images of an image folder, e.g. 64x64.")
@click.option("--model", "model_name", callback=_model_option, default="lenet5", show_default=True,
              metavar="PRESET|FILE.onnx", help="A preset network (" + ", ".join(sorted(models.PRESETS)) + "), "
              "sized for the dataset's images and classes; or an ONNX file of a network to fine-tune, whose "
              "outputs must match the classes (images are resized to its input unless --image-size says otherwise).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(sorted(optim.OPTIMIZERS)), default="sgd", show_default=True)
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True),
              help=f"Learning rate. Default: {_default_lrs()}.")
@click.option("--momentum", type=FiniteFloatRange(min=0, max=1, max_open=True), default=0.9,
              show_default=True, help="SGD momentum.")
@click.option("--nesterov", is_flag=True, help="Nesterov momentum (SGD).")
@click.option("--weight-decay", type=FiniteFloatRange(min=0), default=0.0, show_default=True)
@click.option("--label-smoothing", type=FiniteFloatRange(min=0, max=1, max_open=True), default=0.0,
              show_default=True, help="Spread this share of each target over all classes (as PyTorch's).")
@click.option("--lr-schedule", type=click.Choice(sorted(callbacks.SCHEDULES)), default="constant",
              show_default=True, help="step: x0.1 every third of the epochs; cosine: down to 0 at the end; "
              "plateau: x0.1 when val_loss stalls for 2 epochs.")
@click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True,
              help="Epochs of linear learning-rate warm-up.")
@click.option("--early-stopping", type=click.IntRange(min=1), metavar="PATIENCE",
              help="Stop when val_loss has not improved for PATIENCE epochs, keeping the best weights.")
@click.option("--augment", callback=_augment,
              help="Training only: crop (random crops of the image padded by 4 pixels; crop=N for N), flip "
              "(random horizontal flips), or crop,flip, on the device; a streamed folder's workers also draw "
              "random-resized-crop (and flip).")
@click.option("--normalize", is_flag=True, help="Normalise each channel by the training images' mean and std.")
@click.option("--validation-split", type=FiniteFloatRange(min=0, max=1, max_open=True), default=0.1,
              show_default=True, help="Fraction of the training images held out to report val_accuracy.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds initialisation and shuffling.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False),
              help="Write the trained model to this file (load it with clnet.load).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False),
              help="A folder for the run: its options, a checkpoint after every epoch and on Ctrl-C, the "
              "best model (best.clnet, by val_accuracy), the final model (model.clnet) and metrics.csv.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True),
              help="Continue the run in this --checkpoint-dir folder, with the options it was started with.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Append every epoch's metrics, seconds and images/s to this .csv (or .json) file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Draw the loss and accuracy curves into this PNG after every epoch (needs matplotlib).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final result.")
def train(**options):
    """Train a preset network on a dataset (by default the bundled MNIST-5k: 4000 training and 1000
    test images) and report its test accuracy."""
    if options["resume_dir"]:
        options = _run_options(options)
    _train(**options)


RUN_OPTIONS = "options.json"


def _run_options(given):
    """The options a --checkpoint-dir run was started with, checked as the command line's are;
    where to run, how much to print and the decoding workers (which do not change the batches) may
    change on resuming."""
    path = os.path.join(given["resume_dir"], RUN_OPTIONS)
    kind = special_kind(path)
    if kind:
        raise ClnetError(f"{path} is {kind}, not the file of options a run folder holds: give --resume a folder "
                         "that clnet-train --checkpoint-dir made")
    try:
        with open(path) as f:
            options = json.load(f)
    except (OSError, ValueError) as exc:
        raise ClnetError(f"{given['resume_dir']} is not a run folder of clnet-train --checkpoint-dir "
                         f"({path}: {exc})") from None
    options = _checked_run_options(path, options)
    options.update({key: given[key] for key in ("platform", "device", "quiet", "workers")},
                   resume_dir=given["resume_dir"], checkpoint_dir=given["resume_dir"])
    return options


def _checked_run_options(path, options):
    """options.json's object checked field by field by the click option of the same name (its type,
    range, choices and callback), as if given on the command line; a ClnetError names the file and
    the field. Options added to clnet-train after a run folder was made (a default in `_train`) may
    be missing."""
    def fail(problem):
        raise ClnetError(f"{path}: {problem}; it should hold the options of clnet-train --checkpoint-dir "
                         "as it wrote them")
    if not isinstance(options, dict):
        fail(f"holds a JSON {type(options).__name__}, not an object of options")
    fields = inspect.signature(_train).parameters
    unknown = sorted(set(options) - set(fields))
    if unknown:
        fail(f"unknown field {unknown[0]!r}")
    missing = [name for name, field in fields.items() if field.default is field.empty and name not in options]
    if missing:
        fail(f"the field {missing[0]!r} is missing")
    ctx = click.Context(train)
    params = {param.name: param for param in train.params}
    checked = {}
    for name, value in options.items():
        param = params[name]
        if name == "image_size" and isinstance(value, list):  # written as [height, width]
            value = "x".join(map(str, value))
        if value is None and not isinstance(param.default, (str, int, float, bool)):  # an option without a default
            checked[name] = None
            continue
        kinds, what = ((bool,), "true or false") if isinstance(param.type, click.types.BoolParamType) else \
            ((int,), "a whole number") if isinstance(param.type, click.types.IntParamType) else \
            ((int, float), "a number") if isinstance(param.type, click.types.FloatParamType) else ((str,), "a string")
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            fail(f"the field {name!r} must be {what}, got {value!r}")
        try:
            checked[name] = param.process_value(ctx, value)
        except click.BadParameter as exc:
            fail(f"the field {name!r}: {exc.message.rstrip('.')}")
    return checked


def _check_outputs(*paths):
    """Fail now on an output path that cannot be written, not after the training it would record."""
    for path in paths:
        if path:
            check_writable(path)


def _train(platform, device, dataset, data_dir, offline, image_size, model_name, epochs, batch_size, optimizer,
           lr, momentum, nesterov, weight_decay, lr_schedule, warmup, early_stopping, augment, normalize,
           validation_split, seed, save_path, checkpoint_dir, resume_dir, log_path, plot_path, quiet,
           label_smoothing=0.0, stream=None, workers=None):  # defaults for run folders made before the options
    start = time.perf_counter()
    lead = world().lead  # under MPI only rank 0 writes (and prints: friendly_errors); every rank trains
    _check_outputs(save_path, log_path, plot_path)
    extra, checkpoint = [], None
    if plot_path:
        extra.append(callbacks.PlotCurves(plot_path))
    if checkpoint_dir and not resume_dir and lead:
        if os.path.exists(os.path.join(checkpoint_dir, RUN_OPTIONS)):  # never overwrite a run
            raise ClnetError(f"{checkpoint_dir} holds a run already: continue it with --resume {checkpoint_dir}, "
                             "or give a new --checkpoint-dir")
        try:
            os.makedirs(checkpoint_dir, exist_ok=True)
        except OSError as exc:
            raise ClnetError(f"cannot make the --checkpoint-dir folder {checkpoint_dir}: "
                             f"{exc.strerror or exc}") from None
        options = {k: v for k, v in locals().items() if k not in ("start", "lead", "extra", "checkpoint")}
        text = json.dumps({**options, "image_size": image_size and list(image_size)}, indent=1)
        replace_atomically(os.path.join(checkpoint_dir, RUN_OPTIONS), lambda f: f.write(text.encode()))
    best_path = None
    if checkpoint_dir:
        world().share(None, "the run folder")  # rank 0 has made it
        checkpoint = os.path.join(checkpoint_dir, "checkpoint.clnet")
        if resume_dir and not log_path and not os.path.exists(checkpoint) and lead:
            # killed before its first checkpoint: the run starts again, and so does its own log
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(checkpoint_dir, "metrics.csv"))
        log_path = log_path or os.path.join(checkpoint_dir, "metrics.csv")
        save_path = save_path or os.path.join(checkpoint_dir, "model.clnet")
        best_path = os.path.join(checkpoint_dir, "best.clnet") if validation_split else None
        _check_outputs(checkpoint, log_path, save_path, best_path)
    dev = _open_devices(platform, device)
    if _is_onnx(model_name):
        model = from_onnx(model_name, dev, seed)
        model.check_fits()
        train_set, test_set = datasets.load(dataset, data_dir=data_dir, download=not offline,
                                            image_size=image_size or _model_image_size(model),
                                            **_streaming(stream, workers))
        train_set, test_set = _fit_channels(train_set, model), test_set and _fit_channels(test_set, model)
        outputs = model.network.output_shape(train_set.image_shape)
        if outputs != (train_set.num_classes,):
            raise ClnetError(f"{model_name} gives outputs {outputs} per image but {train_set.name} has "
                             f"{train_set.num_classes} classes: export the network with one output per class "
                             "(for a torchvision network, replace its last layer first, e.g. net.fc = "
                             f"torch.nn.Linear(net.fc.in_features, {train_set.num_classes}))")
    else:
        if image_size:
            _check_image_size(dev, image_size, batch_size)
        train_set, test_set = datasets.load(dataset, data_dir=data_dir, download=not offline, image_size=image_size,
                                            **_streaming(stream, workers))
        model = models.PRESETS[model_name](device=dev, seed=seed, input_shape=train_set.image_shape,
                                           classes=train_set.num_classes)
    opt = optim.from_options(optimizer, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    model.compile(loss="cross_entropy", optimizer=opt, label_smoothing=label_smoothing)
    if best_path:
        extra.append(callbacks.SaveBest(best_path, classes=train_set.classes))
    if not quiet:
        ranks = world().size
        click.echo(f"Device:    {_label(dev)}" + (f" (rank 0's; {ranks} MPI ranks)" if ranks > 1 else ""))
        click.echo(f"Data:      {train_set.name}, {len(train_set)} training images of {train_set.image_shape} "
                   f"({validation_split:.0%} held out for validation), {train_set.num_classes} classes, "
                   + (f"{len(test_set)} test images" if test_set is not None else "no test set"))
        click.echo(f"Model:     {model_name}, {model.count_params():,} parameters; {model.loss!r}, {opt!r}")
    try:
        history = model.fit(train_set, epochs=epochs, batch_size=batch_size, validation_split=validation_split,
                            verbose=not quiet, stream=sys.stdout, normalize=normalize or None, augment=augment,
                            checkpoint=checkpoint, resume=bool(resume_dir), log=log_path,
                            schedule=callbacks.SCHEDULES[lr_schedule](epochs, warmup),
                            early_stopping=callbacks.EarlyStopping(patience=early_stopping) if early_stopping else None,
                            callbacks=extra)
    except KeyboardInterrupt:
        if checkpoint:
            if lead:
                click.echo(f"Interrupted: the run is saved in {checkpoint_dir}; continue it with "
                           f"clnet-train --resume {checkpoint_dir}", err=True)
            sys.exit(130)
        raise
    if save_path:
        model.save(save_path, classes=train_set.classes)
    result = model.evaluate(test_set) if test_set is not None else None  # every rank: evaluation is split
    elapsed = f"({time.perf_counter() - start:.1f} s in all)"
    if result is not None:
        click.echo(f"Test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  {elapsed}")
    elif "val_accuracy" in history.history:
        click.echo(f"Validation accuracy {history.history['val_accuracy'][-1]:.4f} (the dataset has no test "
                   f"split)  {elapsed}")
    else:
        click.echo(f"Training accuracy {history.history['accuracy'][-1]:.4f} (no test split, no validation) "
                   f"{elapsed}")



def _check_image_size(dev, image_size, batch_size):
    """Fail before any image is decoded when a batch at --image-size cannot fit the device: one
    channel of uint8 pixels in two staging slots and as float32 input is the least a step holds."""
    device = dev[0] if isinstance(dev, list) else dev
    (h, w), bytes_per_pixel = image_size, 2 + 4
    needed = batch_size * h * w * bytes_per_pixel
    if needed > device.info.global_mem:
        raise ClnetError(f"--image-size {h}x{w} at --batch-size {batch_size} needs at least {format_bytes(needed)} "
                         f"of device memory for the input batches alone, more than the "
                         f"{format_bytes(device.info.global_mem)} of {device.info.name}: use a smaller --image-size "
                         "or --batch-size")


def _streaming(stream, workers):
    """datasets.load's streaming options from --stream/--no-stream (None: "auto") and --workers."""
    return {"stream": "auto" if stream is None else stream, "workers": workers}


def _open_devices(platform, device):
    """The device the options name, or the list of them (replicas: "--device 0,1", "all", "--platform a,b");
    under MPI without --device, the local rank's (clnet.distributed.local_devices)."""
    opened = local_devices(platform, device)
    return opened[0] if len(opened) == 1 else opened


def _label(dev):
    """The device's label, or the replicas' labels joined."""
    return "; ".join(d.info.label for d in dev) if isinstance(dev, list) else dev.info.label


def _open_model(model_file, platform, device):
    """(device, model) for a model file (.clnet, or .onnx), which must exist (checked here for a
    one-line message); a model whose input shape (as the file says) cannot fit the device even one
    sample at a time is refused before any data is read or resized to it."""
    if not os.path.exists(model_file):
        raise ClnetError(f"{model_file}: no such model file")
    dev = _open_devices(platform, device)
    model = from_onnx(model_file, dev) if _is_onnx(model_file) else load_model(model_file, dev)
    if model.input_shape:
        model.check_fits()
    return dev, model


def _model_image_size(model):
    """The (height, width) of a model's images, None for a model of other inputs."""
    shape = model.input_shape
    return tuple(shape[1:]) if shape and len(shape) == 3 else None


def _fit_channels(data, model):
    """A dataset's images converted between grey and RGB to the model's channels."""
    shape = model.input_shape
    if not (shape and len(shape) == 3):
        return data
    if isinstance(data, datasets.ImageStream):
        return data if data.channels == shape[0] else data.with_channels(shape[0])
    return datasets.Dataset(datasets.match_channels(data.x, shape[0]), data.y, data.classes, data.name)


@click.command(context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-eval lenet.clnet                                  # the bundled MNIST-5k test images
  clnet-eval fashion.clnet --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
  clnet-eval c10.clnet --dataset cifar10 --confusion-matrix --save-matrix c10-confusion.csv
  clnet-eval model.clnet --dataset ./my_images/ --split train --top-k 3 --json
  clnet-eval exported.onnx --dataset cifar10              # an ONNX network (torch.onnx.export's)""")
@friendly_errors
@click.argument("model_file", type=click.Path(dir_okay=False))
@device_options
@_data_options
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--top-k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Report top-k accuracy for this k (at most the number of classes).")
@click.option("--confusion-matrix", "show_matrix", is_flag=True,
              help="Also print the confusion matrix (rows: true class) with per-class precision and recall.")
@click.option("--save-matrix", "matrix_path", type=click.Path(dir_okay=False),
              help="Write the confusion matrix to this CSV file (rows: true class, columns: predicted).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def evaluate(model_file, platform, device, dataset, data_dir, offline, stream, workers, split, batch_size, k,
             show_matrix, matrix_path, as_json):
    """Evaluate a saved model (MODEL_FILE, from --save or model.save, or an ONNX file *.onnx) on a
    dataset: loss, accuracy and top-k accuracy, and optionally the confusion matrix and per-class
    precision and recall."""
    _check_outputs(matrix_path)
    dev, model = _open_model(model_file, platform, device)
    train_set, test_set = datasets.load(dataset, data_dir=data_dir, download=not offline,
                                        image_size=_model_image_size(model), **_streaming(stream, workers))
    data = train_set if split == "train" else test_set
    if data is None:
        raise ClnetError(f"{dataset} has no test split: use --split train")
    if len(data) == 0:
        raise ClnetError(f"{dataset}: the {split} split has no images")
    data = _fit_channels(data, model)
    result = model.evaluate(data, batch_size=batch_size)
    probs = model.predict(data if isinstance(data, datasets.ImageStream) else data.x, batch_size=batch_size)
    if probs.ndim != 2:
        raise ClnetError(f"{model_file}: the model's outputs have shape {probs.shape[1:]}, not one score per class")
    classes_n = probs.shape[1]
    k = min(k, classes_n)
    names = model.classes if model.classes and len(model.classes) == classes_n else \
        (data.classes if data.classes and len(data.classes) == classes_n else None)
    report = metrics.report(probs, data.y, k=k, classes=names)
    out = {"model": model_file, "dataset": data.name, "split": split, "samples": len(data), "device": _label(dev),
           "loss": result["loss"], "accuracy": result.get("accuracy", report["accuracy"]),
           "top_k": k, "top_k_accuracy": report["top_k_accuracy"]}
    if show_matrix:
        out.update({key: report[key] for key in ("classes", "confusion_matrix", "precision", "recall", "support")})
    if matrix_path:
        _write_matrix(matrix_path, report["confusion_matrix"], report["classes"])
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"Model:     {model_file}")
    click.echo(f"Device:    {_label(dev)}")
    click.echo(f"Data:      {data.name}, {split} split, {len(data)} images")
    click.echo(f"Loss {out['loss']:.4f}  accuracy {out['accuracy']:.4f}  top-{k} accuracy {out['top_k_accuracy']:.4f}")
    if show_matrix:
        click.echo("")
        click.echo(metrics.format_confusion_matrix(np.array(report["confusion_matrix"]), report["classes"]))


def _write_matrix(path, matrix, classes):
    """The confusion matrix as CSV, written atomically: a header of predicted classes, then one row per true class."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["true \\ predicted", *classes])
    writer.writerows([name, *row] for name, row in zip(classes, matrix))
    replace_atomically(path, lambda f: f.write(text.getvalue().encode()))


@click.command(context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-predict lenet.clnet digit.png
  clnet-predict c10.clnet cat.png dog.jpg --top-k 3
  clnet-predict c10.clnet images.npz --json          # every image of an array file (x: (N, C, H, W))
  clnet-predict exported.onnx cat.png                # an ONNX network (torch.onnx.export's)""")
@friendly_errors
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@device_options
@click.option("--top-k", "k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of the most probable classes to print for each input.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with one object per input.")
def predict(model_file, files, platform, device, k, as_json):
    """Classify image files (PNG, JPEG, BMP, WebP, TIFF, GIF: converted to the model's channels and
    resized to its input size) or the images of .npz/.npy array files with a saved model (MODEL_FILE, or an ONNX
    file *.onnx), printing the most probable classes of each with their probabilities."""
    for path in files:
        readable_size(path)  # missing, or a FIFO or a device: refused before the model is loaded
    _, model = _open_model(model_file, platform, device)
    inputs = [datasets.read_inputs(path, model.input_shape) for path in files]  # (names, images) per file
    images = [x for _, x in inputs if x.dtype == np.uint8 and len(x)]
    names = [name for batch_names, _ in inputs for name in batch_names]
    if not names:
        raise ClnetError("no images to classify in " + ", ".join(files))
    # one predict call for all uint8 images (image files), one per float array file
    uint8_probs = iter(model.predict(np.concatenate(images))) if images else iter(())
    probs = []
    for _, x in inputs:
        if x.dtype == np.uint8:
            probs += [next(uint8_probs) for _ in range(len(x))]
        elif len(x):
            probs += list(model.predict(x))
    probs = np.stack(probs).reshape(len(names), -1)
    classes_n = probs.shape[1]
    labels = model.classes if model.classes and len(model.classes) == classes_n else [str(i) for i in range(classes_n)]
    indices, values = metrics.top_k(probs, min(k, classes_n))
    results = [{"input": name, "top_k": [{"class": labels[i], "index": int(i), "probability": float(p)}
                                         for i, p in zip(row_i, row_p)]}
               for name, row_i, row_p in zip(names, indices, values)]
    if as_json:
        click.echo(json.dumps(results))
        return
    for result in results:
        click.echo(f"{result['input']}: " + ", ".join(f"{t['class']} ({t['probability']:.4f})" for t in result["top_k"]))


@click.command(context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-export lenet.clnet lenet.onnx
  clnet-export c10.clnet c10.onnx --opset 17
  python -c "import onnxruntime as ort; s = ort.InferenceSession('lenet.onnx'); print(s.get_inputs()[0])"
""")
@friendly_errors
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.argument("out_file", metavar="OUT.onnx", type=click.Path(dir_okay=False))
@device_options
@click.option("--opset", type=click.IntRange(min=1), default=13, show_default=True,
              help="ONNX operator set version to target.")
def export(model_file, out_file, platform, device, opset):
    """Export a saved model (MODEL_FILE, from --save or model.save, or an ONNX file it imports) as an
    ONNX file (needs the onnx package: pip install onnx, or clnet's onnx extra).

    The ONNX graph takes "input": float32 images (N, C, H, W) already scaled to [0, 1] (uint8
    images are not converted), applies the model's normalisation, and returns "probabilities" as
    clnet-predict computes them."""
    from .export import _import_onnx, to_onnx
    _import_onnx()  # a missing onnx fails before a device is opened
    _, model = _open_model(model_file, platform, device)
    proto = to_onnx(model, out_file, opset=opset)
    def dims(value):
        return "(" + ", ".join(d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim) + ")"
    click.echo(f"Wrote {out_file}: ONNX opset {opset}, input {dims(proto.graph.input[0])} float32 in [0, 1], "
               f"output probabilities {dims(proto.graph.output[0])}")


@click.command(context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet-pack ./my_images packed/ --image-size 128
  clnet-train --dataset packed/ --model resnet18""")
@friendly_errors
@click.argument("source", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--image-size", callback=_image_size, required=True, help="Resize every image, e.g. 128 or 128x96.")
@click.option("--grayscale/--rgb", default=None, help="Force one or three channels (default: RGB when any training "
              "image is colour).")
@click.option("--workers", type=click.IntRange(min=1), help="Decoding processes (default: the cores).")
@click.option("--on-error", type=click.Choice(["skip", "raise"]), default="skip", show_default=True,
              help="Unreadable images: leave them out and count them, or stop at the first.")
def pack(source, dest, image_size, grayscale, workers, on_error):
    """Decode and resize an image folder (SOURCE: a sub-folder per class, or train/ and test/ folders
    of those) once into a pack at DEST, which clnet-train --dataset DEST reads memory-mapped, with
    no decoding. An interrupted pack resumes when run again with the same arguments."""
    report = datasets.pack(source, dest, image_size, grayscale=grayscale, workers=workers, on_error=on_error)
    counts = ", ".join(f"{n} {name}" for name, n in report.counts.items())
    click.echo(f"Packed {counts} images of {image_size[0]}x{image_size[1]} into {report.path}")
    skipped = sum(report.skipped.values())
    if skipped:
        first = "; ".join(f"{path} ({reason})" for path, reason in report.first_skipped)
        click.echo(f"Skipped {skipped} unreadable images, the first: {first}", err=True)
