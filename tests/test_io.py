"""Model files and checkpoints (clnet.io): round trips on the same and on another device, clear
errors for every kind of bad file, atomic writes, and checkpoints that continue training bit for bit."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import clnet
import conftest
from clnet import io as cio
from clnet import layers as L
from clnet.errors import InputError, ModelFileError
from clnet.models import INPUT_SHAPES, PRESETS


# ---------------------------------------------------------------------- helpers
def other_device(device):
    """Another test device than `device` (opened once per session, as the fixture does), or None."""
    for info in conftest.DEVICES:
        if info.index != device.info.index:
            if info.index not in conftest._opened:
                conftest._opened[info.index] = clnet.device(device=info.index)
            return conftest._opened[info.index]
    return None


def assert_same_outputs_across(device, other, moved, expected):
    """Outputs on another device: bit for bit between two PoCL builds on this CPU (the kernels fix
    the order of every sum), within float32 rounding elsewhere (another vendor's compiler)."""
    pocl = all(d.info.matches_platform("portable computing language") for d in (device, other))
    if pocl:
        np.testing.assert_array_equal(moved, expected, err_msg="two PoCL devices disagree: a kernel, not the file")
    else:
        np.testing.assert_allclose(moved, expected, rtol=1e-4, atol=1e-6)


def assert_same_weights(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32), key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def perturbed(model, seed=0):
    """Load weights unlike the seed's initialisation, so that a loader that ignored the file's
    weights and kept the seeded ones would be caught."""
    rng = np.random.default_rng(seed)
    state = {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model


def rewrite(path, replace=None, drop=()):
    """Rewrite the zip at `path` with members replaced ({name: bytes}) or dropped."""
    with zipfile.ZipFile(path) as zf:
        members = [(name, zf.read(name)) for name in zf.namelist() if name not in drop]
    replace = dict(replace or {})
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, replace.pop(name, data))
        for name, data in replace.items():
            zf.writestr(name, data)


def edit_json(path, change, member="model.json"):
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read(member))
    change(meta)
    rewrite(path, {member: json.dumps(meta).encode()})


def small_net(device, seed=0):
    return clnet.Sequential([L.Flatten(), L.Dense(12, 8), L.ReLU(), L.Dense(8, 3)], device=device, seed=seed)


def norm_net(device, seed=5):
    """Every layer kind that presets lack, with non-default arguments."""
    return clnet.Sequential([
        L.Conv2D(3, 4, 3, padding="same", init="glorot"), L.BatchNorm2d(4, momentum=0.2), L.ReLU(),
        L.AvgPool2D(3, stride=2, padding=1), L.Dropout(0.25), L.Conv2D(4, 6, (3, 1), stride=(1, 2), bias=False),
        L.Tanh(), L.MaxPool2D((2, 1)), L.GlobalAvgPool2D(), L.Flatten(), L.BatchNorm1d(6, eps=1e-3, affine=False),
        L.Dense(6, 5, init="he"), L.Sigmoid(), L.Dense(5, 4), L.Softmax()], device=device, seed=seed)


# ---------------------------------------------------------------------- layer descriptions
LAYER_EXAMPLES = [
    L.Dense(7, 3, bias=False, init="glorot"), L.Conv2D(2, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=2,
                                                    bias=False, init="he"),
    L.Conv2D(1, 2, 4, padding="same"), L.MaxPool2D(3, stride=2, padding=1), L.AvgPool2D((2, 4), padding=(1, 2)),
    L.GlobalAvgPool2D(), L.Dropout(0.3), L.BatchNorm2d(4, eps=1e-3, momentum=None, affine=False),
    L.BatchNorm1d(9, momentum=0.05), L.ReLU(), L.Sigmoid(), L.Tanh(), L.Softmax(), L.Flatten(),
    L.Add(), L.Concatenate(), L.ReLU6(), L.LeakyReLU(0.2), L.SiLU(), L.Identity(),
    L.AdaptiveAvgPool2D((7, 5))]


def test_every_layer_class_is_described_by_its_config():
    assert set(L.LAYERS) == {type(layer).__name__ for layer in LAYER_EXAMPLES}
    assert set(cio.LAYER_CLASSES) == set(L.LAYERS) | set(L.ALIASES)
    for layer in LAYER_EXAMPLES:
        config = layer.config()
        assert json.loads(json.dumps(config)) == config, layer  # JSON as it is
        rebuilt = type(layer)(**config)
        assert rebuilt.config() == config and repr(rebuilt) == repr(layer)
        assert vars(rebuilt) == vars(layer), layer


# ---------------------------------------------------------------------- round trips
# the presets of 224x224 images are graphs as resnet20 is, and slow at that size
@pytest.mark.parametrize("name", sorted(name for name, shape in INPUT_SHAPES.items() if shape != (3, 224, 224)))
def test_presets_round_trip_on_this_and_another_device(device, name, tmp_path):
    model = perturbed(PRESETS[name](device=device, seed=3))
    model.compile("cross_entropy", "adam")
    x = np.random.default_rng(1).uniform(size=(3, *INPUT_SHAPES[name])).astype(np.float32)
    expected = model.predict(x)
    path = tmp_path / f"{name}.clnet"
    model.save(path, classes=[f"class {i}" for i in range(10)])

    loaded = clnet.load(path, device=device)
    assert repr(loaded) == repr(model) and loaded.seed == 3 and loaded.input_shape == INPUT_SHAPES[name]
    assert loaded.classes == [f"class {i}" for i in range(10)]
    assert loaded.loss.name == "cross_entropy" and isinstance(loaded.optimizer, clnet.optim.SGD)
    assert_same_weights(loaded.state_dict(), model.state_dict())
    np.testing.assert_array_equal(loaded.predict(x), expected)

    other = other_device(device)
    if other is not None:  # the same file on another device: the same weights, so the same outputs
        moved = clnet.load(path, device=other)
        assert moved.device is other
        assert_same_weights(moved.state_dict(), model.state_dict())
        twin = PRESETS[name](device=other, seed=0)
        twin.load_state_dict(model.state_dict())
        twin.compile("cross_entropy")
        np.testing.assert_array_equal(moved.predict(x), twin.predict(x))
        assert_same_outputs_across(device, other, moved.predict(x), expected)


def test_batchnorm_dropout_pool_net_round_trip_with_normalisation(device, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(10, 3, 9, 8), dtype=np.uint8)
    y = rng.integers(0, 4, 10)
    model = norm_net(device)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, normalize=True)  # moves running statistics
    assert model.normalization is not None
    expected = model.predict(x)
    path = tmp_path / "net.clnet"
    model.save(path)

    loaded = clnet.load(path, device=device)
    assert repr(loaded) == repr(model)
    assert [layer.config() for layer in loaded.layers] == [layer.config() for layer in model.layers]
    assert loaded.normalization == model.normalization and loaded.input_shape == (3, 9, 8)
    assert loaded.classes is None
    assert_same_weights(loaded.state_dict(), model.state_dict())
    assert np.any(model.state_dict()["1.running_mean"] != 0)
    np.testing.assert_array_equal(loaded.predict(x), expected)
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    info = cio.info(path)
    assert info["normalization"] == {"mean": list(model.normalization[0]), "std": list(model.normalization[1])}

    other = other_device(device)
    if other is not None:
        moved = clnet.load(path, device=other)
        assert moved.normalization == model.normalization
        assert_same_weights(moved.state_dict(), model.state_dict())
        assert_same_outputs_across(device, other, moved.predict(x), expected)


def _layer_classes(path):
    with zipfile.ZipFile(path) as zf:
        return [spec["class"] for spec in json.loads(zf.read("model.json"))["layers"]]


def test_model_files_keep_each_layers_initialisation(device, tmp_path):
    """Dense and Conv2D store `init`, so a loaded model rebuilds as it was."""
    layers = [L.Conv2D(1, 2, 3, init="glorot"), L.ReLU(), L.Conv2D(2, 2, 1, init="auto"), L.Flatten(),
              L.Dense(8, 3, init="he"), L.Dense(3, 2)]
    clnet.Sequential(layers, device=device).save(tmp_path / "m.clnet")
    loaded = clnet.load(tmp_path / "m.clnet", device=device)
    assert [layer.init for layer in loaded.layers if hasattr(layer, "init")] == ["glorot", "auto", "he", "torch"]


def test_files_naming_former_layer_names_load(device, tmp_path):
    """Files written before BatchNorm1d / BatchNorm2d became BatchNorm1D / BatchNorm2D still load;
    saving again writes the canonical names."""
    model = perturbed(norm_net(device))
    x = np.random.default_rng(3).uniform(size=(2, 3, 9, 8)).astype(np.float32)
    path = tmp_path / "old.clnet"
    model.save(path)
    former = {cls.__name__: name for name, cls in L.ALIASES.items()}

    def write_former_names(meta):
        for spec in meta["layers"]:
            spec["class"] = former.get(spec["class"], spec["class"])
    edit_json(path, write_former_names)
    assert {"BatchNorm1d", "BatchNorm2d"} <= set(_layer_classes(path))

    loaded = clnet.load(path, device=device)
    assert repr(loaded) == repr(model) and "BatchNorm2D(4" in repr(loaded)
    assert_same_weights(loaded.state_dict(), model.state_dict())
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    loaded.save(tmp_path / "new.clnet")
    assert _layer_classes(tmp_path / "new.clnet") == [type(layer).__name__ for layer in model.layers]


def test_saving_is_deterministic_and_keeps_loaded_class_names(device, tmp_path):
    model = small_net(device)
    first, second, third = tmp_path / "a.clnet", tmp_path / "b.clnet", tmp_path / "c.clnet"
    model.save(first, classes=["cat", "dog", "eel"])
    model.save(second, classes=["cat", "dog", "eel"])
    assert first.read_bytes() == second.read_bytes()
    loaded = clnet.load(first, device=device)
    assert loaded.loss is None and loaded.input_shape is None  # saved uncompiled, before any input
    loaded.save(third)  # the class names come along
    assert first.read_bytes() == third.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert first.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes files, not mkstemp's 0600
    with zipfile.ZipFile(first) as zf:
        assert zf.namelist() == ["model.json", "weights.npz"]
        meta = json.loads(zf.read("model.json"))
    assert meta["format"] == "clnet-model" and meta["format_version"] == 1
    assert meta["clnet_version"] == clnet.__version__ and meta["classes"] == ["cat", "dog", "eel"]


# ---------------------------------------------------------------------- bad files
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _flip_weight_byte(path):
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weights.npz")
    data = bytearray(path.read_bytes())
    start = info.header_offset
    name_len = int.from_bytes(data[start + 26:start + 28], "little")
    extra_len = int.from_bytes(data[start + 28:start + 30], "little")
    data[start + 30 + name_len + extra_len + info.compress_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _other_architecture_weights(path):
    shapes = {"1.weight": (9, 12), "1.bias": (9,), "3.weight": (3, 9), "3.bias": (3,)}  # Dense 12->9->3
    rewrite(path, {"weights.npz": cio._npz_bytes({k: np.zeros(s, np.float32) for k, s in shapes.items()})})


def _missing_key(path):
    with zipfile.ZipFile(path) as zf:
        with np.load(zf.open("weights.npz")) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "3.bias"}
    rewrite(path, {"weights.npz": cio._npz_bytes(arrays)})


BAD_FILES = {
    "truncated": (_truncate, "truncated"),
    "flipped byte in the weights": (_flip_weight_byte, "corrupt: weights.npz"),
    "not a zip": (lambda p: p.write_text("model = 'mlp'\n"), "not a clnet model file"),
    "zip without model.json": (lambda p: rewrite(p, drop=["model.json"]), "no model.json"),
    "zip without weights": (lambda p: rewrite(p, drop=["weights.npz"]), "no weights.npz"),
    "model.json not JSON": (lambda p: rewrite(p, {"model.json": b"{\"format\": "}), "not valid JSON"),
    "newer format version": (lambda p: edit_json(p, lambda m: m.update(format_version=99)),
                             "format version 99"),
    "unknown layer class": (lambda p: edit_json(p, lambda m: m["layers"][1].update({"class": "os.system"})),
                            "layer 1 has the unknown class 'os.system'"),
    "bad layer arguments": (lambda p: edit_json(p, lambda m: m["layers"][1]["config"].update(bias="x", size=3)),
                            "layer 1 (Dense) has invalid arguments"),
    "layers unfit for the input shape": (lambda p: edit_json(p, lambda m: m.update(input_shape=[1, 5, 5])),
                                         "do not fit the input shape"),
    "weights of another architecture": (_other_architecture_weights, "weights do not fit the architecture"),
    "a weight missing": (_missing_key, "missing keys ['3.bias']"),
}


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_fails_clearly_naming_the_file(device, tmp_path, case, kind):
    spoil, message = BAD_FILES[case]
    path = tmp_path / f"{kind}.clnet"
    model = small_net(device)
    model.compile("cross_entropy", "adam")
    model.predict(np.zeros((1, 3, 2, 2), np.float32))  # input shape (3, 2, 2) goes into the file
    if kind == "model":
        model.save(path)
        read = clnet.load
    else:
        cio.save_checkpoint(path, model, {"epoch_order": np.arange(4)}, epoch=1)
        read = clnet.load_checkpoint
    spoil(path)
    with pytest.raises(ModelFileError) as failure:
        read(path, device=device)
    assert str(path) in str(failure.value) and message in str(failure.value), str(failure.value)
    assert failure.value.path == str(path)


def test_missing_files_and_model_files_read_as_checkpoints_fail_clearly(device, tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        clnet.load(tmp_path / "absent.clnet", device=device)
    with pytest.raises(ModelFileError, match="is a folder"):
        clnet.load(tmp_path, device=device)
    path = tmp_path / "model.clnet"
    small_net(device).save(path)
    with pytest.raises(ModelFileError, match="not a checkpoint"):
        clnet.load_checkpoint(path, device=device)


def test_what_a_file_cannot_hold_is_refused_before_anything_is_written(device, tmp_path):
    class Custom(L.ReLU):
        pass

    path = tmp_path / "model.clnet"
    with pytest.raises(ModelFileError, match="cannot save layer 2"):
        clnet.Sequential([L.Flatten(), L.Dense(4, 4), Custom()], device=device).save(path)
    model = small_net(device)
    model.compile("cross_entropy")
    with pytest.raises(InputError, match=r"state\['when'\] is a object"):
        cio.save_checkpoint(path, model, {"when": object()})
    with pytest.raises(ModelFileError, match="cannot be written"):
        model.save(tmp_path / "no such folder" / "model.clnet")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- atomic writes
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(device, tmp_path, monkeypatch):
    path = tmp_path / "model.clnet"
    old = small_net(device, seed=1)
    old.save(path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError(28, "No space left on device")

    new = small_net(device, seed=2)
    monkeypatch.setattr(os, "replace", crash)  # fails between writing the temporary file and renaming it
    with pytest.raises(ModelFileError, match="No space left on device") as failure:
        new.save(path)
    assert str(path) in str(failure.value)
    monkeypatch.undo()
    for interruption in (KeyboardInterrupt, SystemExit):
        def interrupted(*args, interruption=interruption):
            raise interruption()

        monkeypatch.setattr(os, "fsync", interrupted)  # interrupted while flushing to the disk
        with pytest.raises(interruption):
            new.save(path)
        monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.clnet"]
    assert_same_weights(clnet.load(path, device=device).state_dict(), old.state_dict())
    new.save(path)
    assert_same_weights(clnet.load(path, device=device).state_dict(), new.state_dict())


CRASH = """
import os, sys
from clnet import io
os.replace = lambda *a: os._exit(9)   # the process dies after writing, before renaming
io.write_atomic(sys.argv[1], [("model.json", b"new"), ("weights.npz", b"new" * 1000)])
"""


def test_a_process_killed_mid_save_leaves_the_previous_file(tmp_path):
    path = tmp_path / "model.clnet"
    cio.write_atomic(path, [("model.json", b"old"), ("weights.npz", b"old")])
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", CRASH, str(path)], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 9
    assert path.read_bytes() == before  # the orphaned temporary file sits beside it, hidden
    leftovers = [name for name in os.listdir(tmp_path) if name != "model.clnet"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.clnet.") and leftovers[0].endswith(".tmp")


# ---------------------------------------------------------------------- checkpoints
OPTIMIZERS = {
    "adam": lambda: clnet.optim.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-3),
    "adamw": lambda: clnet.optim.AdamW(lr=0.01),
    "sgd-nesterov": lambda: clnet.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "sgd": lambda: clnet.optim.SGD(lr=0.05),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checkpoint_continues_training_bit_for_bit(device, tmp_path, name):
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(8, 3, 9, 8)).astype(np.float32)
    y = rng.integers(0, 4, 8)
    model = norm_net(device)
    model.compile("cross_entropy", OPTIMIZERS[name]())
    for _ in range(3):
        model.train_on_batch(x, y)
    shuffle = np.random.Generator(np.random.Philox(7))
    order = shuffle.permutation(8)
    state = {"rng": shuffle.bit_generator.state, "order": order,
             "schedule": {"best": float("inf"), "bad_epochs": 0, "milestones": (3, 6)}, "seed": np.uint64(2**63 + 1)}
    path = tmp_path / "run.ckpt"
    weights = model.state_dict()
    cio.save_checkpoint(path, model, state, epoch=2, step=5, classes=["a", "b", "c", "d"])

    restored = clnet.load_checkpoint(path, device=device)
    loaded = restored.model
    assert (restored.epoch, restored.step) == (2, 5) and loaded.classes == ["a", "b", "c", "d"]
    assert repr(loaded.optimizer) == repr(model.optimizer) and loaded.optimizer_state_dict()["steps"] == 3
    saved, back = model.optimizer_state_dict(), loaded.optimizer_state_dict()
    assert back["config"] == saved["config"] and len(back["state"]) == len(saved["state"])
    for a, b in zip(saved["state"], back["state"]):
        np.testing.assert_array_equal(a, b)
    # the training loop's state: the generator continues where it was, arrays and numbers as given
    resumed = np.random.Generator(np.random.Philox())
    resumed.bit_generator.state = restored.state["rng"]
    np.testing.assert_array_equal(resumed.permutation(100), shuffle.permutation(100))
    np.testing.assert_array_equal(restored.state["order"], state["order"])
    assert restored.state["order"].dtype == state["order"].dtype
    assert restored.state["schedule"] == {"best": float("inf"), "bad_epochs": 0, "milestones": [3, 6]}
    assert restored.state["seed"] == 2**63 + 1

    for _ in range(2):  # dropout masks, bias corrections and running statistics all continue
        assert loaded.train_on_batch(x, y) == model.train_on_batch(x, y)
    assert_same_weights(loaded.state_dict(), model.state_dict())
    # a checkpoint is also a model file
    as_model = clnet.load(path, device=device)
    assert_same_weights(as_model.state_dict(), weights)
    assert as_model.classes == ["a", "b", "c", "d"] and isinstance(as_model.optimizer, clnet.optim.SGD)

    other = other_device(device)
    if other is not None:
        moved = clnet.load_checkpoint(path, device=other).model
        assert moved.optimizer_state_dict()["steps"] == 3
        for a, b in zip(saved["state"], moved.optimizer_state_dict()["state"]):
            np.testing.assert_array_equal(a, b)


def test_checkpoint_of_an_uncompiled_model_and_bad_checkpoints(device, tmp_path):
    path = tmp_path / "plain.ckpt"
    cio.save_checkpoint(path, small_net(device))
    restored = clnet.load_checkpoint(path, device=device)
    assert restored.model.optimizer is None and restored.state == {} and (restored.epoch, restored.step) == (0, 0)

    model = small_net(device)
    model.compile("cross_entropy", "adam")
    model.train_on_batch(np.ones((2, 12), np.float32), [0, 2])
    cio.save_checkpoint(path, model, {"order": np.arange(3)})
    spoilers = {
        "format version 7": lambda: edit_json(path, lambda c: c.update(format_version=7), "checkpoint.json"),
        "unknown optimizer class 'Lion'": lambda: edit_json(
            path, lambda c: c["optimizer"].update({"class": "Lion"}), "checkpoint.json"),
        "invalid hyper-parameters": lambda: edit_json(
            path, lambda c: c["optimizer"]["config"].update(betas=[2, 0]), "checkpoint.json"),
        "does not fit the model's": lambda: rewrite(
            path, {"optimizer.npz": cio._npz_bytes({"0": np.zeros(5, np.float32), "1": np.zeros(5, np.float32)})}),
        "state.npz has no array": lambda: rewrite(path, {"state.npz": cio._npz_bytes({})}),
        "'epoch' must be an integer": lambda: edit_json(path, lambda c: c.update(epoch="two"), "checkpoint.json"),
    }
    for message, spoil in spoilers.items():
        cio.save_checkpoint(path, model, {"order": np.arange(3)})
        spoil()
        with pytest.raises(ModelFileError, match=message) as failure:
            clnet.load_checkpoint(path, device=device)
        assert str(path) in str(failure.value)
        clnet.load(path, device=device)  # the model part is still readable
