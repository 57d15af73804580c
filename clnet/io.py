"""Model files and checkpoints: one documented format, written atomically.

Model file format, versions 1 and 2
-----------------------------------
A model file (conventionally named ``*.clnet``) is a zip archive, members stored uncompressed:

``model.json``
    A UTF-8 JSON object:

    - ``"format": "clnet-model"``: says what the file is.
    - ``"format_version"``: 1 for a stack of layers, 2 for a graph; a reader refuses versions newer
      than it knows.
    - ``"clnet_version"``: the clnet that wrote the file (for information).
    - Version 1, ``"layers"``: the stack of layers (a Sequential: nodes ``"0"``, ``"1"``, ... each
      reading the one before), in order, as ``[{"class": "Conv2D", "config": {...}}, ...]``;
      ``class`` names a class of ``clnet.layers`` and ``config`` holds its constructor arguments
      (``Layer.config()``: pairs as lists), so that ``Conv2D(**config)`` rebuilds the layer.
    - Version 2, ``"nodes"``: the graph, in topological order, as ``[{"name": "conv1", "class": ...,
      "config": {...}, "inputs": ["input"]}, ...]``: each node's layer as in version 1, its name (the
      prefix of its weights' keys) and the names of the values it reads (``"input"``, the
      network's input, or earlier nodes); the last node is the output.
    - ``"seed"``: the model's seed (initialisation, dropout masks).
    - ``"loss"``: the name of the compiled loss (``"cross_entropy"``, ...) or null.
    - ``"input_shape"``: the per-sample input shape, such as ``[1, 28, 28]``, or null when unknown.
    - ``"normalization"``: ``{"mean": [...], "std": [...]}`` per input channel, applied to every
      input, or null.
    - ``"classes"``: the class names (a list of strings) or null.

``weights.npz``
    A numpy ``.npz`` archive (one ``<key>.npy`` member per array) of the model's ``state_dict``:
    float32 arrays under PyTorch's keys and layouts (``"0.weight"``, ``"0.bias"``, batch-norm
    ``running_mean`` ...), the arrays ``Sequential.state_dict()`` returns, all float32 (the int64
    ``num_batches_tracked`` too, so that every reader of format version 1 reads them).

A **checkpoint** is a model file (``clnet.load`` reads it as one) with three more members:

``checkpoint.json``
    ``{"format": "clnet-checkpoint", "format_version": 1, "epoch": E, "step": S, "optimizer": O,
    "state": T}``: ``epoch`` and ``step`` as the training loop passed them (by convention the epochs
    completed and the batches done in the epoch in progress); ``optimizer`` is null or
    ``{"class": "Adam", "config": {hyper-parameters}, "steps": optimizer steps taken, "arrays": n}``;
    ``state`` is the training loop's JSON-able state (RNG states, data order, schedule state), with
    every numpy array in it replaced by ``{"__clnet_array__": "<name>"}``. NaN and infinities are
    written as Python's json writes them (``NaN``, ``Infinity``).
``optimizer.npz``
    The optimizer's state tensors over the flat parameter buffer, as float32 arrays ``"0"``,
    ``"1"``, ... (SGD with momentum: the velocity; Adam and AdamW: the first and second moments).
``state.npz``
    The numpy arrays taken out of ``state``, under their names.

Writing is atomic: the archive goes to a temporary file in the target's folder, which is flushed
and fsync'ed, renamed over the target with ``os.replace``, and the folder fsync'ed; a crash at any
moment leaves either the previous file or the new one, never a mixture. Reading checks everything
(zip CRCs, JSON structure, format version, layer classes and arguments, weight keys and shapes) and
raises ``ModelFileError`` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from math import prod
from typing import Any

import numpy as np

from . import layers as _layers
from . import losses, optim
from .errors import InputError, ModelFileError, ShapeError
from .files import replace_atomically, special_kind
from .network import Network, Node
from .npyfiles import check_member, read_npz
from .plan import INDEX_LIMIT
from .text import is_unicode
from .version import __version__

FORMAT_VERSION = 2  # the newest this clnet reads; a chain of layers is still written as version 1
CHECKPOINT_VERSION = 1
MODEL_FORMAT, CHECKPOINT_FORMAT = "clnet-model", "clnet-checkpoint"
ARRAY_TAG = "__clnet_array__"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same model gives the same bytes

#: The layer classes a model file may name: the concrete layers of clnet.layers, and nothing else.
LAYER_CLASSES = {**_layers.LAYERS, **_layers.ALIASES}  # files name layers as they are called (or were)
#: The optimizer classes a checkpoint may name.
OPTIMIZER_CLASSES = {cls.__name__: cls for cls in optim.OPTIMIZERS.values()}


@dataclass
class SavedModel:
    """What a model file holds, checked: the network (its layers fit `input_shape` when that is
    known), the weights (a state_dict, not yet checked against the network), the seed, the loss
    name or None, the input shape, the normalisation ((mean, std) per channel) and the class names."""
    network: Network
    weights: dict[str, np.ndarray]
    seed: int
    loss: str | None
    input_shape: tuple[int, ...] | None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    classes: list[str] | None


@dataclass
class SavedOptimizer:
    """A checkpoint's optimizer: a fresh one with the saved hyper-parameters, the steps it had
    taken and its state arrays (over the flat parameters)."""
    optimizer: optim.Optimizer
    steps: int
    state: list[np.ndarray]


@dataclass
class SavedCheckpoint:
    """What a checkpoint holds beside its model: the epoch and step reached, the optimizer (None if
    none was saved) and the training loop's `state`."""
    model: SavedModel
    epoch: int
    step: int
    optimizer: SavedOptimizer | None
    state: Any


# ---------------------------------------------------------------------- writing
def _npz_bytes(arrays):
    """An .npz archive (as np.savez writes it, without pickles) with fixed member times."""
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for key, array in arrays.items():
            member = BytesIO()
            np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", _ZIP_TIME), member.getvalue())
    return buffer.getvalue()


def _json_bytes(value, allow_nan=False):
    return json.dumps(value, indent=1, allow_nan=allow_nan).encode("utf-8")


def write_atomic(path: str | os.PathLike, members: Iterable[tuple[str, bytes]]) -> None:
    """Write a zip archive of `members` ((name, bytes) pairs) to `path` atomically (files.py): on
    any failure the previous file at `path` is untouched. Members are stored uncompressed, with
    fixed times, so the same members give the same bytes.

    Raises:
        ClnetError: `path` is not a regular file (a folder, a device, a FIFO): see files.py.
        ModelFileError: `path` cannot be written.

    Example:
        >>> write_atomic("notes.zip", [("a.txt", b"first"), ("b.txt", b"second")])
    """
    path = os.fspath(path)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data)
    try:
        replace_atomically(path, write)
    except OSError as exc:
        raise ModelFileError(path, f"cannot be written: {exc.strerror or exc}") from exc


def _describe(model, path, classes):
    """model.json's object for `model`; refuses what a file could not rebuild."""
    network, specs = model.network, []
    for node in network.nodes:
        name = type(node.layer).__name__
        if _layers.LAYERS.get(name) is not type(node.layer):
            raise ModelFileError(path, f"cannot save layer {node.name} ({node.layer!r}): model files hold only the "
                                       f"layers of clnet.layers ({', '.join(sorted(_layers.LAYERS))})")
        specs.append({"name": node.name, "class": name, "config": node.layer.config(), "inputs": list(node.inputs)})
    chain = network.is_sequential
    architecture = {"layers": [{k: spec[k] for k in ("class", "config")} for spec in specs]} if chain \
        else {"nodes": specs}
    loss = None
    if model.loss is not None:
        loss = model.loss.name
        if losses.LOSSES.get(loss) is not type(model.loss):
            raise ModelFileError(path, f"cannot save the loss {model.loss!r}: model files hold only clnet's "
                                       f"losses ({', '.join(sorted(set(losses.LOSSES)))})")
    normalization = None
    if model.normalization:
        mean, std = model.normalization
        normalization = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    if classes is None:
        classes = model.classes
    if classes is not None:
        classes = [c if isinstance(c, str) else str(c) for c in classes]
        unencodable = next((c for c in classes if not is_unicode(c)), None)
        if unencodable is not None:
            raise ModelFileError(path, f"cannot save the class name {unencodable!r}: it is not valid Unicode text "
                                       "(a folder name in another encoding?): rename it or pass classes=")
    return {"format": MODEL_FORMAT, "format_version": 1 if chain else 2, "clnet_version": __version__,
            **architecture, "seed": model.seed, "loss": loss,
            "input_shape": list(model.input_shape) if model.input_shape else None,
            "normalization": normalization, "classes": classes}


def _model_members(model, path, classes):
    description = _describe(model, path, classes)
    try:
        text = _json_bytes(description)
    except (TypeError, ValueError) as exc:  # a layer config that is not JSON, a NaN normalisation
        raise ModelFileError(path, f"cannot describe the model as JSON: {exc}") from exc
    weights = {key: value.astype(np.float32) for key, value in model.state_dict().items()}  # counters too
    return [("model.json", text), ("weights.npz", _npz_bytes(weights))]


def save(model, path: str | os.PathLike, classes: Sequence[str] | None = None) -> None:
    """Write `model` to `path` (see the module docstring for the format), atomically.
    `classes`: the class names, in output order (default: those the model was loaded with).

    Args:
        model: a clnet.Model whose network is a chain of clnet.layers, with clnet's loss (or none).
        path: the file to write, conventionally `*.clnet`.
        classes: the class names; entries that are not strings are written as `str(c)`.

    Raises:
        ModelFileError: the model cannot be described in the format, or the file cannot be written.

    Example:
        >>> save(model, "mnist.clnet", classes=[str(d) for d in range(10)])   # what model.save does
    """
    write_atomic(path, _model_members(model, os.fspath(path), classes))


def _encode_state(value, arrays, where):
    """`value` as JSON, numpy arrays moved to `arrays` and replaced by a tag."""
    if isinstance(value, dict):
        if ARRAY_TAG in value:
            raise InputError(f"checkpoint state{where} uses the reserved key {ARRAY_TAG!r}")
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"checkpoint state{where} has the key {key!r}: JSON keys must be strings")
            encoded[key] = _encode_state(item, arrays, f"{where}[{key!r}]")
        return encoded
    if isinstance(value, (list, tuple)):
        return [_encode_state(item, arrays, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise InputError(f"checkpoint state{where} is an array of Python objects: use numbers")
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {ARRAY_TAG: name}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise InputError(f"checkpoint state{where} is a {type(value).__name__}: the state may hold only JSON "
                     "values (dict, list, str, int, float, bool, None) and numpy arrays")


def save_checkpoint(path: str | os.PathLike, model, state: dict[str, Any] | None = None, *, epoch: int = 0,
                    step: int = 0, classes: Sequence[str] | None = None) -> None:
    """Write a checkpoint, atomically: the model file plus the optimizer (class, hyper-parameters,
    state tensors, step count), `epoch` and `step`, and the training loop's `state` (JSON values and
    numpy arrays, such as `numpy.random.Generator.bit_generator.state`, the data order and the
    schedule's state), returned as it was by `load_checkpoint` (tuples come back as lists).

    Args:
        path: the file to write.
        model: as `save`; its optimizer, if it is compiled, must be one of clnet's.
        state: a dict with string keys of JSON values and numpy arrays, at any depth.
        epoch, step: where training stands (by convention the epochs completed and the batches done
            in the epoch in progress).
        classes: as `save`.

    Raises:
        InputError: `state` holds something other than JSON values and numpy arrays.
        ModelFileError: as `save`, or the optimizer is not one of clnet's.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> save_checkpoint("run.clnet", model, {"rng": rng.bit_generator.state}, epoch=3)
        >>> read_checkpoint("run.clnet").state["rng"]
    """
    path = os.fspath(path)
    members = _model_members(model, path, classes)
    optimizer, optimizer_arrays = None, {}
    if model.optimizer is not None:
        saved = model.optimizer_state_dict()
        if OPTIMIZER_CLASSES.get(saved["class"]) is not type(model.optimizer):
            raise ModelFileError(path, f"cannot save the optimizer {model.optimizer!r}: checkpoints hold only "
                                       f"clnet's optimizers ({', '.join(sorted(OPTIMIZER_CLASSES))})")
        optimizer = {"class": saved["class"], "config": saved["config"], "steps": saved["steps"],
                     "arrays": len(saved["state"])}
        optimizer_arrays = {str(i): a for i, a in enumerate(saved["state"])}
    state_arrays = {}
    record = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "epoch": int(epoch),
              "step": int(step), "optimizer": optimizer,
              "state": _encode_state({} if state is None else state, state_arrays, "")}
    members += [("checkpoint.json", _json_bytes(record, allow_nan=True)),
                ("optimizer.npz", _npz_bytes(optimizer_arrays)), ("state.npz", _npz_bytes(state_arrays))]
    write_atomic(path, members)


# ---------------------------------------------------------------------- reading
class _Archive:
    """A model file opened for reading; every failure becomes a ModelFileError naming the file."""

    def __init__(self, path):
        self.path = path = os.fspath(path)
        try:
            kind = special_kind(path)  # stat before opening: a FIFO would block, /dev/zero never end
        except OSError as exc:
            raise ModelFileError(path, f"cannot be read: {exc.strerror or exc}") from None
        if not os.path.exists(path):
            raise ModelFileError(path, "no such file")
        if kind:
            raise ModelFileError(path, f"is {kind}, not a clnet model file: give the path of a .clnet file")
        try:
            self.size = os.path.getsize(path)
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ModelFileError(path, f"is not a clnet model file, or it is truncated: not a complete zip "
                                       f"archive ({exc})") from None
        except OSError as exc:
            raise ModelFileError(path, f"cannot be read: {exc.strerror or exc}") from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def error(self, problem):
        return ModelFileError(self.path, problem)

    def read(self, name, missing):
        if name not in self.zip.namelist():
            raise self.error(missing)
        check_member(self.zip.getinfo(name), self.size, name, self.error)
        try:
            return self.zip.read(name)
        except Exception as exc:  # bad CRC, truncated member, bad header: the bytes are not what was written
            raise self.error(f"is corrupt: {name} cannot be read ({exc})") from None

    def json(self, name, missing, format_name, version, constants=True):
        """The JSON object of member `name`; `constants`: whether NaN and Infinity may appear."""
        def refuse(constant):
            raise ValueError(f"{constant} is not a number a model file holds")
        try:
            value = json.loads(self.read(name, missing).decode("utf-8"), **({} if constants else
                                                                           {"parse_constant": refuse}))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self.error(f"is corrupt: {name} is not valid JSON ({exc})") from None
        except RecursionError:
            raise self.error(f"is corrupt: {name} nests its JSON too deeply to be a clnet file") from None
        if not isinstance(value, dict) or value.get("format") != format_name:
            raise self.error(f"{name} does not describe a {format_name} (no \"format\": \"{format_name}\")")
        found = value.get("format_version")
        if not _is_int(found) or found < 1:
            raise self.error(f"{name} has no valid format_version (got {found!r})")
        if found > version:
            raise self.error(f"has {name} format version {found} (written by clnet "
                             f"{value.get('clnet_version', 'of a newer version')}); this clnet "
                             f"{__version__} reads versions up to {version}: upgrade clnet to read it")
        return value

    def arrays(self, name, missing):
        """The arrays of the .npz member `name`, each .npy header checked against its member's size
        before the array is allocated (npyfiles.read_npz)."""
        data = self.read(name, missing)
        return read_npz(BytesIO(data), len(data), name, self.error, compressed=False)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _too_large(value):
    """The first integer in a layer's description (a JSON value) beyond INDEX_LIMIT, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, list):
            stack += item
        elif _is_int(item) and abs(item) > INDEX_LIMIT:
            return item
    return None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_description(archive, meta):
    """Types of model.json's fields; the values are checked while the model is rebuilt."""
    def check(ok, what):
        if not ok:
            raise archive.error(f"model.json is invalid: {what}")
    key = "layers" if meta["format_version"] == 1 else "nodes"
    check(isinstance(meta.get(key), list), f"{key!r} must be a list of {key}")
    for i, spec in enumerate(meta[key]):
        large = _too_large(spec)
        check(large is None, f"layer {i} has the argument {large}, beyond the {INDEX_LIMIT} that clnet's kernels index")
    check(_is_int(meta.get("seed")) and 0 <= meta["seed"] < 2**63, "'seed' must be an integer in [0, 2**63)")
    loss = meta.get("loss")
    check(loss is None or (isinstance(loss, str) and loss in losses.LOSSES), f"unknown loss {loss!r}")
    shape = meta.get("input_shape")
    check(shape is None or (isinstance(shape, list) and shape and all(_is_int(s) and s > 0 for s in shape)),
          f"'input_shape' must be a list of positive integers or null, got {shape!r}")
    check(shape is None or prod(shape) <= INDEX_LIMIT,
          f"'input_shape' {shape} holds more than the {INDEX_LIMIT} values per sample that clnet's kernels index")
    norm = meta.get("normalization")
    if norm is not None:
        check(isinstance(norm, dict) and isinstance(norm.get("mean"), list) and isinstance(norm.get("std"), list)
              and len(norm["mean"]) == len(norm["std"]) > 0 and all(map(_is_number, norm["mean"] + norm["std"]))
              and all(s > 0 for s in norm["std"]),
              "'normalization' must be {\"mean\": [...], \"std\": [...]} of equal lengths, std positive")
    classes = meta.get("classes")
    check(classes is None or (isinstance(classes, list) and all(isinstance(c, str) for c in classes)),
          "'classes' must be a list of strings or null")
    unencodable = next((c for c in classes or () if not is_unicode(c)), None)
    check(unencodable is None, f"the class name {unencodable!r} is not valid Unicode text (UTF-8)")


def _build_layers(archive, specs):
    built = []
    for i, spec in enumerate(specs):
        if not (isinstance(spec, dict) and isinstance(spec.get("class"), str)
                and isinstance(spec.get("config", {}), dict)):
            raise archive.error(f"model.json is invalid: layer {i} is not {{\"class\": name, \"config\": {{...}}}}")
        name, config = spec["class"], spec.get("config", {})
        cls = LAYER_CLASSES.get(name)
        if cls is None:
            raise archive.error(f"layer {i} has the unknown class {name!r}; clnet {__version__} knows "
                                f"{', '.join(sorted(_layers.LAYERS))} (a file from a newer clnet? upgrade clnet)")
        try:
            built.append(cls(**config))
        except (TypeError, ValueError, OverflowError) as exc:
            raise archive.error(f"layer {i} ({name}) has invalid arguments {config}: {exc}") from None
    return built


def _graph(archive, nodes):
    """The Network of version 2's "nodes"."""
    for i, node in enumerate(nodes):
        if not (isinstance(node, dict) and isinstance(node.get("name"), str) and isinstance(node.get("inputs"), list)
                and all(isinstance(name, str) for name in node["inputs"])):
            raise archive.error(f"model.json is invalid: node {i} has no \"name\" or no list of \"inputs\"")
    layers = _build_layers(archive, nodes)
    try:
        return Network(Node(node["name"], layer, tuple(node["inputs"])) for node, layer in zip(nodes, layers))
    except ValueError as exc:
        raise archive.error(f"model.json is invalid: {exc}") from None


def _read_model(archive):
    """(model.json's object, the weights) of an open archive."""
    # A truncated file can still open as a zip: that of a stored .npz member, without model.json.
    meta = archive.json("model.json", "is not a clnet model file, or it is truncated: the archive has no "
                        "model.json", MODEL_FORMAT, FORMAT_VERSION, constants=False)
    _check_description(archive, meta)
    weights = archive.arrays("weights.npz", "is incomplete: the archive has no weights.npz")
    for key, value in weights.items():
        if value.dtype.kind != "f":
            raise archive.error(f"weights.npz holds {key!r} as {value.dtype}, not floating point")
    return meta, weights


def _check_weights(archive, network, weights):
    """The weights present are those the layers declare, key by key and shape by shape, checked
    before any model is built: a file that declares Dense(16000, 16000) without its weights is
    refused before a GiB of parameters is allocated."""
    declared = {f"{node.name}.{name}": tuple(shape) for node in network.nodes
                for shapes in (node.layer.param_shapes(), node.layer.buffer_shapes()) for name, shape in shapes.items()}
    missing, unexpected = sorted(set(declared) - set(weights)), sorted(set(weights) - set(declared))
    if missing or unexpected:
        raise archive.error(f"the weights do not fit the architecture: weights.npz has missing {_some(missing)}, "
                            f"unexpected {_some(unexpected)}")
    for key, shape in declared.items():
        if weights[key].shape != shape:
            raise archive.error(f"the weights do not fit the architecture: weights.npz holds {key!r} of shape "
                                f"{weights[key].shape}, the layers declare {shape}")


def _some(keys, shown=5):
    """"keys ['3.bias']" for messages: the first few keys, and how many more."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"keys {keys[:shown]}{more}"


def _saved_model(archive, meta, weights):
    """The SavedModel of model.json's object and the weights."""
    if meta["format_version"] == 1:
        network = Network.chain(_build_layers(archive, meta["layers"]))
    else:
        network = _graph(archive, meta["nodes"])
    _check_weights(archive, network, weights)
    input_shape = tuple(meta["input_shape"]) if meta.get("input_shape") else None
    if input_shape:
        try:
            network.shapes(input_shape)
        except ShapeError as exc:
            raise archive.error(f"the layers do not fit the input shape {input_shape}: {exc}") from None
    norm = meta.get("normalization")
    return SavedModel(network, weights, meta["seed"], meta.get("loss"), input_shape,
                      (tuple(norm["mean"]), tuple(norm["std"])) if norm else None, meta.get("classes"))


def info(path: str | os.PathLike) -> dict[str, Any]:
    """model.json's object (architecture, seed, loss, input shape, normalisation, classes), checked,
    without building the model or opening a device.

    Example:
        >>> meta = info("mnist.clnet")
        >>> [layer["class"] for layer in meta["layers"]], meta["input_shape"], meta["classes"]
    """
    with _Archive(path) as archive:
        return _read_model(archive)[0]


def read_model(path: str | os.PathLike) -> SavedModel:
    """The SavedModel in the model file (or checkpoint) at `path`; a ModelFileError says what is
    wrong with a file that cannot be read. `clnet.load` builds the model on a device.

    Example:
        >>> saved = read_model("mnist.clnet")
        >>> saved.network.layers, saved.weights["0.weight"].shape, saved.classes
    """
    with _Archive(path) as archive:
        return _saved_model(archive, *_read_model(archive))


def _decode_state(archive, value, arrays):
    if isinstance(value, dict):
        if set(value) == {ARRAY_TAG}:
            if value[ARRAY_TAG] not in arrays:
                raise archive.error(f"is corrupt: state.npz has no array {value[ARRAY_TAG]!r}")
            return arrays[value[ARRAY_TAG]]
        return {key: _decode_state(archive, item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_state(archive, item, arrays) for item in value]
    return value


_COUNT_LIMIT = 2 ** 63  # epochs and steps beyond any run are refused, not carried as huge integers


def _saved_optimizer(archive, record, arrays, loss):
    def check(ok, what):
        if not ok:
            raise archive.error(f"checkpoint.json is invalid: {what}")
    check(isinstance(record, dict) and isinstance(record.get("config"), dict), "'optimizer' must be an object")
    cls = OPTIMIZER_CLASSES.get(record.get("class"))
    check(cls is not None, f"unknown optimizer class {record.get('class')!r}")
    check(_is_int(record.get("steps")) and 0 <= record["steps"] < _COUNT_LIMIT,
          f"the optimizer's 'steps' must be an integer from 0 to {_COUNT_LIMIT - 1}")
    check(_is_int(record.get("arrays")) and sorted(arrays) == sorted(map(str, range(record["arrays"]))),
          f"optimizer.npz holds {sorted(arrays)}, expected {record.get('arrays')!r} arrays")
    if loss is None:
        raise archive.error("checkpoint.json names an optimizer but model.json no loss")
    for key, value in record["config"].items():  # NaN passes every range check the optimizers make
        check(all(map(_is_number, value if isinstance(value, list) else [value])) or isinstance(value, bool),
              f"the optimizer's {key!r} must be a finite number, got {value!r}")
    try:
        optimizer = cls(**record["config"])
    except (TypeError, ValueError) as exc:
        raise archive.error(f"the optimizer {record['class']} has invalid hyper-parameters "
                            f"{record['config']}: {exc}") from None
    state = [arrays[str(i)] for i in range(record["arrays"])]
    for i, array in enumerate(state):
        if array.dtype.kind != "f":
            raise archive.error(f"optimizer.npz array {i} holds {array.dtype}, not floating point")
        if not np.isfinite(array).all():
            raise archive.error(f"optimizer.npz array {i} holds NaN or infinity")
    return SavedOptimizer(optimizer, record["steps"], state)


def read_checkpoint(path: str | os.PathLike) -> SavedCheckpoint:
    """The SavedCheckpoint at `path` (model, epoch, step, optimizer, training state), checked;
    `clnet.load_checkpoint` builds its model, and a fit with `resume=True` loads it into its own.
    A model file that is not a checkpoint is a ModelFileError.

    Example:
        >>> saved = read_checkpoint("run.clnet")
        >>> saved.epoch, saved.step, saved.optimizer and saved.optimizer.optimizer
    """
    with _Archive(path) as archive:
        meta, weights = _read_model(archive)
        record = archive.json("checkpoint.json", "is a model file, not a checkpoint: the archive has no "
                              "checkpoint.json", CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
        for key in ("epoch", "step"):
            if not (_is_int(record.get(key)) and 0 <= record[key] < _COUNT_LIMIT):
                raise archive.error(f"checkpoint.json is invalid: {key!r} must be an integer from 0 to "
                                    f"{_COUNT_LIMIT - 1}")
        optimizer_arrays = archive.arrays("optimizer.npz", "is incomplete: the archive has no optimizer.npz")
        state_arrays = archive.arrays("state.npz", "is incomplete: the archive has no state.npz")
        state = _decode_state(archive, record.get("state"), state_arrays)
        saved = _saved_model(archive, meta, weights)
        optimizer = None
        if record.get("optimizer") is not None:
            optimizer = _saved_optimizer(archive, record["optimizer"], optimizer_arrays, saved.loss)
    return SavedCheckpoint(saved, record["epoch"], record["step"], optimizer, state)
