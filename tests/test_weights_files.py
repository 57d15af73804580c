"""Weights in the formats people exchange (clnet/weights_files.py, Model.save_weights / load_weights)
and load_state_dict(strict=False), checked against PyTorch: files written by torch's side load into
clnet and predict what torch predicts, and clnet's load into torch strictly."""

import importlib
import sys

import numpy as np
import pytest

import clnet
from clnet import layers as L
from clnet import weights_files
from clnet.errors import InputError, ModelFileError, ShapeError
from clnet.torch_twin import torch_twin

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def small_model(device):
    """Conv, BatchNorm (with its int64 counter), ReLU, pooling and Dense on 3x8x8 images."""
    return clnet.Sequential([L.Conv2D(3, 8, 3, padding=1), L.BatchNorm2D(8), L.ReLU(), L.MaxPool2D(2),
                             L.Flatten(), L.Dense(8 * 4 * 4, 10)], device=device, seed=0)


def trained_twin(model, seed=1):
    """The model's PyTorch twin with random weights and running statistics, in evaluation mode."""
    torch.manual_seed(seed)
    twin = torch_twin(model.network)
    with torch.no_grad():
        for name, tensor in twin.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            else:
                tensor.uniform_(-0.5, 0.5)
    return twin.eval()


def images(n=5, seed=2):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_state_dict_counters_are_int64_as_torchs(device):
    model = small_model(device)
    twin = trained_twin(model)
    state = model.state_dict()
    assert state["1.num_batches_tracked"].dtype == np.int64 and state["1.weight"].dtype == np.float32
    assert {k: v.dtype for k, v in twin.state_dict().items()} == \
        {k: torch.from_numpy(v).dtype for k, v in state.items()}
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.load_state_dict(twin.state_dict())
    assert model.state_dict()["1.num_batches_tracked"] == 0


def test_torch_written_safetensors_load_and_predict_as_torch(device, tmp_path):
    model = small_model(device)
    twin = trained_twin(model)
    path = tmp_path / "twin.safetensors"
    safetensors_torch.save_file(twin.state_dict(), str(path))
    assert model.load_weights(path) == ([], [])
    x = images()
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-5)
    assert model.state_dict()["1.num_batches_tracked"] == 7


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".npz"])
def test_clnet_written_weights_load_into_torch_strictly_and_back(device, tmp_path, suffix):
    model = small_model(device)
    model.load_state_dict(trained_twin(model).state_dict())
    path = tmp_path / f"w{suffix}"
    model.save_weights(path)
    if suffix == ".npz":
        state = {k: torch.from_numpy(v) for k, v in np.load(path).items()}
    elif suffix == ".safetensors":
        state = safetensors_torch.load_file(str(path))
    else:
        state = torch.load(path, weights_only=True)
    twin = torch_twin(model.network).eval()
    twin.load_state_dict(state, strict=True)
    assert state["1.num_batches_tracked"].dtype == torch.int64 and int(state["1.num_batches_tracked"]) == 7
    x = images()
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), twin(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    other = small_model(device)
    other.load_weights(path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)


def test_a_model_files_weights_load(device, tmp_path):
    model = small_model(device)
    model.load_state_dict(trained_twin(model).state_dict())
    model.save(tmp_path / "m.clnet")
    other = small_model(device)
    other.load_weights(tmp_path / "m.clnet")
    np.testing.assert_array_equal(other.state_dict()["5.weight"], model.state_dict()["5.weight"])


def test_strict_false_loads_what_fits_and_names_the_rest(device, tmp_path):
    model = small_model(device)
    state = {k: v.detach().numpy() for k, v in trained_twin(model).state_dict().items()}
    del state["5.bias"]
    state["head.weight"] = np.zeros(3, np.float32)
    before = model.state_dict()
    with pytest.raises(InputError, match=r"missing keys \['5.bias'\], unexpected keys \['head.weight'\]"):
        model.load_state_dict(state)
    np.testing.assert_array_equal(model.state_dict()["0.weight"], before["0.weight"])  # nothing loaded
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["5.bias"] and result.unexpected_keys == ["head.weight"]
    np.testing.assert_array_equal(model.state_dict()["0.weight"], state["0.weight"])
    np.testing.assert_array_equal(model.state_dict()["5.bias"], before["5.bias"])
    safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    assert model.load_weights(tmp_path / "w.safetensors", strict=False) == (["5.bias"], ["head.weight"])


def test_a_wrong_shape_names_the_key(device, tmp_path):
    model = small_model(device)
    state = dict(trained_twin(model).state_dict())
    state["5.weight"] = torch.zeros(10, 64)
    safetensors_torch.save_file(state, str(tmp_path / "w.safetensors"))
    for strict in (True, False):
        with pytest.raises(ShapeError, match=r"'5.weight'.*\(10, 64\).*\(10, 128\)"):
            model.load_weights(tmp_path / "w.safetensors", strict=strict)


class Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_code_and_modules_are_refused_unrun(device, tmp_path):
    model = small_model(device)
    marker = tmp_path / "ran"
    torch.save({"0.weight": Payload(marker)}, tmp_path / "evil.pt")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), tmp_path / "module.pth")  # a whole module
    for name in ("evil.pt", "module.pth"):
        with pytest.raises(ModelFileError, match=f"{name}: pickles objects other than tensors.*state_dict"):
            model.load_weights(tmp_path / name)
    assert not marker.exists()
    torch.save({"epoch": 3, "model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ModelFileError, match="holds 'epoch': int"):
        model.load_weights(tmp_path / "checkpoint.pt")


def test_bad_weights_files_are_one_line_errors(device, tmp_path, monkeypatch):
    model = small_model(device)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    (tmp_path / "w.h5").write_bytes(b"")
    cases = {"junk.safetensors": "not a valid safetensors file", "junk.npz": "not a valid numpy .npz",
             "w.h5": "suffix '.h5'.*.safetensors, .pt, .pth, .npz", "absent.pt": "no such file"}
    for name, problem in cases.items():
        with pytest.raises(ModelFileError, match=f"{name}: .*{problem}"):
            model.load_weights(tmp_path / name)
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(ModelFileError, match="folder.npz: is a folder"):
        model.load_weights(tmp_path / "folder.npz")
    np.savez(tmp_path / "locked.npz", w=np.zeros(2, np.float32))
    def denied(*args, **kwargs):  # what a file without read permission gives (root reads any file)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(weights_files, "open", denied, raising=False)
    with pytest.raises(ModelFileError, match="locked.npz: cannot be read: Permission denied"):
        model.load_weights(tmp_path / "locked.npz")
    monkeypatch.delattr(weights_files, "open")
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # as if the extra were not installed
    for action in (lambda: model.save_weights(tmp_path / "w.safetensors"),
                   lambda: model.load_weights(tmp_path / "junk.safetensors")):
        with pytest.raises(ModelFileError, match=r'needs the safetensors package.*pip install "\.\[safetensors\]"'):
            action()
    assert not (tmp_path / "w.safetensors").exists()
    with pytest.raises(ModelFileError, match="w.npz: cannot be written"):
        model.save_weights(tmp_path / "no-such-folder" / "w.npz")


def test_bfloat16_safetensors_are_widened(device, tmp_path):
    model = small_model(device)
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
             for k, v in trained_twin(model).state_dict().items()}
    safetensors_torch.save_file(state, str(tmp_path / "bf16.safetensors"))
    model.load_weights(tmp_path / "bf16.safetensors")
    np.testing.assert_array_equal(model.state_dict()["0.weight"], state["0.weight"].float().numpy())


def test_a_bfloat16_file_torch_cannot_read_either_is_a_one_line_error(device, tmp_path, monkeypatch):
    model = small_model(device)
    state = {k: v.to(torch.bfloat16) for k, v in trained_twin(model).state_dict().items() if v.is_floating_point()}
    safetensors_torch.save_file(state, str(tmp_path / "bf16.safetensors"))
    def no_bfloat16(path, *args, **kwargs):  # numpy without a bfloat16 type (ml_dtypes, once imported, adds one)
        raise TypeError("data type 'bfloat16' not understood")

    def unreadable(path, *args, **kwargs):
        raise RuntimeError("Error while deserializing header")
    monkeypatch.setattr(importlib.import_module("safetensors.numpy"), "load_file", no_bfloat16)
    monkeypatch.setattr(safetensors_torch, "load_file", unreadable)
    with pytest.raises(ModelFileError, match="bf16.safetensors: is not a valid safetensors file .*deserializing"):
        model.load_weights(tmp_path / "bf16.safetensors")
