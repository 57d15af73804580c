"""Special paths (issue 17, items 1, 3, 5 and 13): clnet writes and reads only regular files, refuses
zip members that are compressed or larger than the file, and checks clnet-train's output paths before
training. Every special file is made here, in tmp_path; a FIFO is never opened, so no test can block."""

import gzip
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import datasets, export, memory, npyfiles
from clnet import io as cio
from clnet import layers as L
from clnet.callbacks import MetricsLog
from clnet.cli import evaluate, train
from clnet.datasets import folder
from clnet.errors import ClnetError, DatasetError, ModelFileError, OutOfDeviceMemoryError
from clnet.network import Network
from clnet.plan import Plan, Value
from clnet.files import replace_atomically


def special_files(tmp_path):
    """(path, what clnet calls it) for a FIFO, a folder and, as root, a character device like /dev/zero."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    made = [(tmp_path / "fifo", "a FIFO"), (tmp_path / "folder", "a folder")]
    if os.geteuid() == 0:
        os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        made.append((tmp_path / "zero", "a character device"))
    return made


def unchanged(path):
    """Still the special file it was made as: not replaced by a regular file."""
    return not stat.S_ISREG(os.stat(path).st_mode)


def small_net(device):
    return clnet.Sequential([L.Flatten(), L.Dense(12, 8), L.ReLU(), L.Dense(8, 3)], device=device, seed=0)


# ---------------------------------------------------------------------- writing
def test_replace_atomically_refuses_special_files_and_leaves_them(tmp_path):
    for path, kind in special_files(tmp_path):
        with pytest.raises(ClnetError, match=f"{path} is {kind}, not a regular file: clnet writes only regular"):
            replace_atomically(path, lambda f: f.write(b"x"))
        assert unchanged(path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the umask is read from /proc")
def test_a_new_file_gets_the_umask_without_the_umask_being_changed(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask changes it for every thread"))
        replace_atomically(tmp_path / "new", lambda f: f.write(b"x"))
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o640


def test_replace_atomically_writes_through_a_symlink_and_keeps_it(tmp_path):
    target, link = tmp_path / "target.bin", tmp_path / "link.bin"
    target.write_bytes(b"old")
    link.symlink_to(target)
    replace_atomically(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and target.read_bytes() == b"new"
    dangling = tmp_path / "dangling.bin"
    dangling.symlink_to(tmp_path / "absent.bin")
    replace_atomically(dangling, lambda f: f.write(b"made"))
    assert dangling.is_symlink() and (tmp_path / "absent.bin").read_bytes() == b"made"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    with pytest.raises(ClnetError, match="is a FIFO"):
        replace_atomically(tmp_path / "to-fifo", lambda f: f.write(b"x"))
    assert unchanged(tmp_path / "fifo")


def test_model_save_and_checkpoints_refuse_special_files(device, tmp_path):
    model = small_net(device)
    model.compile(loss="cross_entropy", optimizer=clnet.optim.SGD(0.1))
    for path, kind in special_files(tmp_path):
        with pytest.raises(ClnetError, match=f"is {kind}, not a regular file"):
            model.save(path)
        with pytest.raises(ClnetError, match=f"is {kind}, not a regular file"):
            cio.save_checkpoint(path, model)
        assert unchanged(path)


@pytest.mark.parametrize("name", ["metrics.csv", "metrics.json"])
def test_metrics_log_refuses_to_append_to_special_files(tmp_path, name):
    os.mkfifo(tmp_path / name)
    with pytest.raises(ClnetError, match="is a FIFO, not a regular file"):
        MetricsLog(tmp_path / name).append({"epoch": 1, "loss": 0.5})
    with pytest.raises(ClnetError, match="is a FIFO, not a regular file"):  # a checkpoint's count of its rows
        MetricsLog(tmp_path / name).state()
    assert unchanged(tmp_path / name)


def test_plot_curves_writes_through_a_symlink_atomically(device, tmp_path):
    pytest.importorskip("matplotlib")
    from clnet.callbacks import PlotCurves
    (tmp_path / "plots").mkdir()
    os.symlink(tmp_path / "plots" / "curves.png", tmp_path / "link.png")
    model = small_net(device)
    model.compile(loss="cross_entropy", optimizer=clnet.optim.SGD(0.1))
    model.fit(np.zeros((8, 12), np.float32), np.zeros(8, np.int64), epochs=1, verbose=0,
              callbacks=[PlotCurves(tmp_path / "link.png")])
    assert os.path.islink(tmp_path / "link.png")
    assert (tmp_path / "plots" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()) == ["curves.png", "link.png"]


def test_fit_checks_its_log_before_the_first_epoch(device, tmp_path):
    os.mkfifo(tmp_path / "metrics.csv")
    model = small_net(device)
    model.compile(loss="cross_entropy", optimizer=clnet.optim.SGD(0.1))
    with pytest.raises(ClnetError, match="metrics.csv is a FIFO, not a regular file"):
        model.fit(np.zeros((8, 12), np.float32), np.zeros(8, np.int64), epochs=1, log=tmp_path / "metrics.csv",
                  verbose=0)
    assert model.param_store.steps == 0


# ---------------------------------------------------------------------- reading
def test_load_refuses_special_files_without_opening_them(tmp_path):
    for path, kind in special_files(tmp_path):
        for read in (clnet.load, clnet.load_checkpoint, cio.info):
            with pytest.raises(ModelFileError, match=f"is {kind}, not a clnet model file"):
                read(path)


def saved(device, tmp_path):
    path = tmp_path / "m.clnet"
    small_net(device).save(path)
    with zipfile.ZipFile(path) as zf:
        return path, {name: zf.read(name) for name in zf.namelist()}


def test_compressed_members_are_refused(device, tmp_path):
    path, members = saved(device, tmp_path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ModelFileError, match="member model.json is compressed"):
        clnet.load(path)
    with np.load(io.BytesIO(members["weights.npz"])) as npz:
        weights = {key: npz[key] for key in npz.files}
    inner = io.BytesIO()
    np.savez_compressed(inner, **weights)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in {**members, "weights.npz": inner.getvalue()}.items():
            zf.writestr(name, data)
    with pytest.raises(ModelFileError, match="member weights.npz/.* is compressed"):
        clnet.load(path)


def test_a_member_larger_than_the_file_is_refused_before_reading(device, tmp_path):
    path, _ = saved(device, tmp_path)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the central directory's last entry (weights.npz holds one of its own)
    data[entry + 24:entry + 28] = struct.pack("<I", 2**31)  # its uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=f"declares {2**31} bytes, more than the {len(data)} there are"):
        clnet.load(path)


# ---------------------------------------------------------------------- clnet-train's outputs
@pytest.mark.parametrize("option", ["--save", "--log", "--plot"])
def test_train_checks_its_output_paths_before_training(tmp_path, option):
    missing = tmp_path / "no-such-folder" / "out.file"
    result = CliRunner().invoke(train, ["--device", "0", "--model", "mlp", "--epochs", "1", option, str(missing)])
    assert result.exit_code == 1
    assert f"cannot write {missing}: the folder {missing.parent} does not exist; create it first" in result.output
    assert "Device:" not in result.output and "Traceback" not in result.output
    os.mkfifo(tmp_path / "fifo")
    result = CliRunner().invoke(train, ["--device", "0", "--model", "mlp", "--epochs", "1", option,
                                        str(tmp_path / "fifo")])
    assert result.exit_code == 1 and "is a FIFO, not a regular file" in result.output
    assert "Device:" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_train_refuses_an_unwritable_folder_before_training(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    result = CliRunner().invoke(train, ["--device", "0", "--model", "mlp", "--save", str(folder / "m.clnet")])
    assert result.exit_code == 1 and "is not writable" in result.output and "Device:" not in result.output


# ---------------------------------------------------------------------- issue 17, items 3-9: files read
# Every reader stats before it opens; should one ever open a FIFO, the alarm fails the test, not CI.
@pytest.fixture
def no_hang():
    def expired(signum, frame):
        raise AssertionError("a reader blocked: it opened a FIFO")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def input_specials(tmp_path, name):
    """A FIFO and, as root, a character device like /dev/zero, both called `name`, in folders of tmp_path."""
    made = []
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / name)
    made.append((tmp_path / "fifo" / name, "a FIFO"))
    if os.geteuid() == 0:
        (tmp_path / "zero").mkdir()
        os.mknod(tmp_path / "zero" / name, stat.S_IFCHR | 0o600, os.makedev(1, 5))
        made.append((tmp_path / "zero" / name, "a character device"))
    return made


@pytest.mark.parametrize("name, read", [
    ("train-images-idx3-ubyte", datasets.read_idx),
    ("data.npz", lambda path: datasets.load_arrays(path)),
    ("x.npy", lambda path: npyfiles.read_npy(path, DatasetError)),
    ("digits.npz", lambda path: datasets.read_inputs(str(path), (1, 28, 28))),
    ("digit.png", lambda path: datasets.read_inputs(str(path), (1, 28, 28))),
])
def test_dataset_readers_refuse_special_files(tmp_path, no_hang, name, read):
    for path, kind in input_specials(tmp_path, name):
        with pytest.raises(ClnetError, match=f"{path} is {kind}, not a regular file"):
            read(path)


def test_cifar_and_pack_files_that_are_special_are_refused(tmp_path, no_hang):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "batches.meta"):
        (folder / name).write_bytes(b"")
    os.mkfifo(folder / "test_batch")
    with pytest.raises(DatasetError, match="test_batch"):  # not a file it reads: missing
        datasets.load_cifar(tmp_path, "cifar10", "test")
    pack = tmp_path / "pack"
    pack.mkdir()
    os.mkfifo(pack / "index.clnetpack")
    with pytest.raises(DatasetError, match="index.clnetpack is a FIFO, not a regular file"):
        datasets.open_pack(pack)


def test_a_cifar_archive_member_beyond_any_cifar_file_is_refused_before_reading(tmp_path, monkeypatch):
    import tarfile
    from clnet.datasets import cifar
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("data_batch_1", "test_batch", "batches.meta"):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = 1000
            tar.addfile(info, io.BytesIO(bytes(1000)))
    monkeypatch.setattr(cifar, "MAX_MEMBER", 999)  # stands for the 256 MiB no CIFAR file reaches
    with pytest.raises(DatasetError, match="declares 1,000 bytes, more than any CIFAR file holds \\(999\\)"):
        datasets.load_cifar(archive, "cifar10", "test")


def test_an_image_folder_with_a_fifo_is_refused_naming_it(tmp_path, no_hang):
    from PIL import Image
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "cat" / "a.png")
    os.mkfifo(tmp_path / "cat" / "b.png")
    with pytest.raises(DatasetError, match="b.png is a FIFO, not an image file: remove it"):
        datasets.ImageFolder(tmp_path)


def tiny_onnx(device, tmp_path):
    model = small_net(device)
    model.compile(loss="cross_entropy", optimizer="sgd")
    path = tmp_path / "m.onnx"
    export.to_onnx(model, path, input_shape=(3, 2, 2))
    return model, path


def test_from_onnx_refuses_special_files_and_external_data_in_them(device, tmp_path, no_hang):
    onnx = pytest.importorskip("onnx")
    model, path = tiny_onnx(device, tmp_path)
    for special, kind in input_specials(tmp_path, "x.onnx"):
        with pytest.raises(ModelFileError, match=f"it is {kind}, not a regular file"):
            clnet.from_onnx(special, device)
    proto = onnx.load(path)
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    x = np.random.default_rng(0).random((2, 3, 2, 2), dtype=np.float32)
    np.testing.assert_allclose(clnet.from_onnx(path, device).predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    (tmp_path / "w.bin").unlink()
    os.mkfifo(tmp_path / "w.bin")
    with pytest.raises(ModelFileError, match="w.bin is a FIFO, not a regular file: give the data of the tensor"):
        clnet.from_onnx(path, device)


# ---------------------------------------------------------------------- sizes checked before allocating
def limited(code, limit=2 << 30):
    """(exit status, stderr) of Python `code` run with an address space of `limit` bytes: a reader
    that allocates what a header claims dies with a MemoryError there instead of taking the host's memory."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    return result.returncode, result.stderr


def npy_claiming(shape, dtype, data):
    """A .npy file whose header declares `shape` but that holds only `data`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
    return header.getvalue() + data


def test_an_npz_header_claiming_10_to_the_12_images_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", npy_claiming((10**12, 1, 28, 28), np.uint8, bytes(784)))
        zf.writestr("y.npy", npy_claiming((10**12,), np.int64, bytes(8)))
    status, stderr = limited(f"""
        from clnet.datasets import load_arrays
        load_arrays({str(path)!r})""")
    assert status == 1 and "MemoryError" not in stderr
    assert f"DatasetError: {path}/x.npy: the header declares 1000000000000 x 1 x 28 x 28 uint8 values " in stderr


def test_weights_npz_headers_are_checked_against_their_member(device, tmp_path):
    path, members = saved(device, tmp_path)
    with np.load(io.BytesIO(members["weights.npz"])) as npz:
        weights = {key: npz[key] for key in npz.files}
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        for key, value in weights.items():
            zf.writestr(f"{key}.npy", npy_claiming((16000, 16000), np.float32, value.tobytes())
                        if key == "1.weight" else _npy(value))
    rewrite(path, {"weights.npz": inner.getvalue()})
    with pytest.raises(ModelFileError, match=r"weights.npz/1.weight.npy: the header declares 16000 x 16000 float32 "
                                             r"values \(1,024,000,000 bytes\) but 384 bytes follow it"):
        clnet.load(path, device=device)
    extra = io.BytesIO()
    with zipfile.ZipFile(extra, "w") as zf:
        for key, value in weights.items():
            zf.writestr(f"{key}.npy", _npy(value))
        zf.writestr("notes.txt", b"not an array")
    rewrite(path, {"weights.npz": extra.getvalue()})
    with pytest.raises(ModelFileError, match="weights.npz: holds 'notes.txt', which is not a .npy array"):
        clnet.load(path, device=device)


def _npy(array):
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def rewrite(path, replaced):
    """Rewrite the model file at `path` with some members replaced (bytes, or a dict as JSON)."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    for name, value in replaced.items():
        members[name] = value if isinstance(value, bytes) else json.dumps(value).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def model_json(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("model.json"))


def test_a_dense_16000_by_16000_without_weights_is_refused_before_allocating(device, tmp_path):
    path, _ = saved(device, tmp_path)
    meta = model_json(path)
    meta["layers"][1]["config"].update(in_features=16000, out_features=16000)
    meta["input_shape"] = None
    rewrite(path, {"model.json": meta})
    status, stderr = limited(f"""
        from clnet import io
        io.read_model({str(path)!r})""")  # no device: a GPU driver reserves more address space than the limit
    assert status == 1 and "MemoryError" not in stderr, stderr[-2000:]
    assert "weights.npz holds '1.weight' of shape (8, 12), the layers declare (16000, 16000)" in stderr
    with pytest.raises(ModelFileError, match="the layers declare \\(16000, 16000\\)"):
        clnet.load(path, device=device)  # refused as it is read: nothing is allocated


def test_parameters_beyond_the_device_are_refused_before_allocating(device):
    with pytest.raises(OutOfDeviceMemoryError, match=r"the parameters \(1,000,001,000,000 values\) are more than "
                                                     r"the 2,147,483,647 that clnet's kernels index"):
        clnet.Sequential([L.Dense(10**6, 10**6)], device=device)


def test_an_input_shape_beyond_the_device_fails_before_any_data_is_read(device, tmp_path):
    model = clnet.Sequential([L.GlobalAvgPool2D(), L.Flatten(), L.Dense(1, 2)], device=device)
    model.input_shape = (1, 4096, 4096)
    room, values = min(device.info.global_mem, device.info.max_alloc), 4096 * 4096
    too_many = room // ((2 + 4) * values) + 1  # uint8 images in two staging slots, and the float32 input
    if too_many * values >= 2**31:
        pytest.skip("this device holds every batch whose indices fit the kernels' int32")
    with pytest.raises(OutOfDeviceMemoryError, match=f"batch size {too_many} of inputs \\(1, 4096, 4096\\) needs"):
        model.check_fits(batch_size=too_many)
    model.check_fits(batch_size=1)


def test_host_memory_is_bounded_by_an_address_space_limit_where_there_is_one(monkeypatch):
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory.host_memory() <= physical
    monkeypatch.setattr(memory, "resource", None)  # as on Windows, which has no resource module
    assert memory.host_memory() == physical


def test_clnet_eval_does_not_resize_to_a_crafted_input_shape(tmp_path, monkeypatch):
    from PIL import Image
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "data" / name / "0.png")
    model = clnet.Sequential([L.GlobalAvgPool2D(), L.Flatten(), L.Dense(1, 2)], device=clnet.device(device=0))
    model.compile("cross_entropy", "sgd")
    model.save(tmp_path / "m.clnet")
    meta = model_json(tmp_path / "m.clnet")
    meta["input_shape"] = [1, 30000, 30000]
    rewrite(tmp_path / "m.clnet", {"model.json": meta})
    monkeypatch.setattr(memory, "host_memory", lambda: 1 << 30)  # a 1 GiB host
    monkeypatch.setattr(folder, "_decode", lambda *args: pytest.fail("an image was decoded"))
    result = CliRunner().invoke(evaluate, [str(tmp_path / "m.clnet"), "--device", "0", "--dataset",
                                           str(tmp_path / "data"), "--no-stream"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 images of 30000x30000 need 1.7 GiB, more than the host's 1.0 GiB" in result.output or \
        "of inputs (1, 30000, 30000) needs" in result.output, result.output


def test_clnet_train_checks_the_image_size_before_decoding(tmp_path, monkeypatch):
    from PIL import Image
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name / "0.png")
    monkeypatch.setattr(folder, "_decode", lambda *args: pytest.fail("an image was decoded"))
    result = CliRunner().invoke(train, ["--device", "0", "--dataset", str(tmp_path), "--image-size", "20000x20000"])
    assert result.exit_code == 1
    assert "--image-size 20000x20000 at --batch-size 64 needs at least 143.1 GiB of device memory for the input " \
           "batches alone" in result.output


def test_predict_plans_for_the_inputs_given(device):
    model = small_net(device)
    model.predict(np.zeros((1, 3, 2, 2), np.float32))
    assert [target.batch_size for target in model._runners] == [1]


def test_a_gzip_idx_that_inflates_beyond_its_header_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    zeros = gzip.compress(bytes(1 << 24))  # a gzip file may hold several members, read one after the other
    path.write_bytes(gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 10) + bytes(range(10))) + zeros * 64)
    status, stderr = limited(f"""
        from clnet.datasets import read_idx
        read_idx({str(path)!r})""", limit=1 << 30)
    assert status == 1 and "MemoryError" not in stderr
    assert f"{path}: the gzip stream inflates beyond the 18 bytes its IDX header declares" in stderr
    with open(path, "wb") as f:  # a raw file shorter than its header says: refused before reading the values
        f.write(b"\0\0\x08\x03" + struct.pack(">III", 10**6, 28, 28) + bytes(100))
    with pytest.raises(DatasetError, match="is truncated: its header declares 784,000,016 bytes but the file has 116"):
        datasets.read_idx(path)


@pytest.mark.parametrize("label", [5_000_000, 10**12])
def test_a_label_far_beyond_the_data_is_an_input_error_naming_it(tmp_path, label):
    x, y = np.zeros((200, 1, 28, 28), np.uint8), np.arange(200) % 10
    y[7] = label
    np.savez(tmp_path / "stray.npz", x=x, y=y)
    with pytest.raises(DatasetError, match=f"stray.npz\\['y'\\] \\(with x\\): label {label} \\(sample 7\\) is far "
                                           "beyond the data: 200 samples have labels below 3,200"):
        datasets.load_arrays(tmp_path / "stray.npz")
    result = CliRunner().invoke(train, ["--device", "0", "--dataset", str(tmp_path / "stray.npz"), "--epochs", "1"])
    assert result.exit_code == 1 and f"label {label} (sample 7)" in result.output and "Model:" not in result.output
    y[7] = 1023  # the rule: below max(1024, 16 x samples)
    datasets.Dataset(x, y)
    with pytest.raises(DatasetError, match="label 3200 .* below 3,200"):
        datasets.Dataset(x, np.where(np.arange(200) == 0, 3200, y))


def test_empty_arrays_are_refused_naming_the_file(tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 28, 28), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(DatasetError, match=r"empty.npz\['x'\]: holds no images"):
        datasets.load_arrays(tmp_path / "empty.npz")


class Crafted:
    """A pickle that rebuilds an object through the given callable and arguments (and state)."""

    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


@pytest.mark.parametrize("data, refused", [
    (Crafted(np.ndarray, ((10**6, 3072), "u1", bytes(3072), 0, (0, 1))), r"numpy.ndarray\(...\) called"),
    (Crafted(np.ndarray, ((2, 3072), "u1")), r"numpy.ndarray\(...\) called"),
    (Crafted(np.zeros(0).__reduce__()[0], (np.ndarray, (0,), b"b"), (1, (10**6, 3072), np.dtype("u1"), False,
                                                                        bytes(3072))),
     r"an array of shape \(1000000, 3072\) uint8 with 3072 bytes"),
    (Crafted(np.zeros(0).__reduce__()[0], (np.ndarray, (0,), b"b")), "an array without its data"),
    (np.zeros((1, 3072), object), "the dtype 'O8'"),
])
def test_the_cifar_unpickler_allows_only_arrays_whose_bytes_match_their_shape(tmp_path, data, refused):
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (folder / name).write_bytes(b"")
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    for protocol in (2, 4, 5):
        (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": [0]}, protocol=protocol))
        with pytest.raises(DatasetError, match=f"test_batch: refused to unpickle .*{refused}"):
            datasets.load_cifar(tmp_path, "cifar10", "test")


# ---------------------------------------------------------------------- model.json: one-line errors
def broken_model(device, tmp_path, change):
    path, _ = saved(device, tmp_path)
    with zipfile.ZipFile(path) as zf:
        text = zf.read("model.json").decode()
    rewrite(path, {"model.json": change(text).encode()})
    return path


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('"in_features": 12', '"in_features": Infinity'), "Infinity is not a number a model file"),
    (lambda t: t.replace('"in_features": 12', f'"in_features": {10**400}'), "beyond the 2147483647 that clnet"),
    (lambda t: t.replace('"seed": 0', '"seed": -1'), r"'seed' must be an integer in \[0, 2\*\*63\)"),
    (lambda t: t.replace('"classes": null', '"classes": ["\\udc80"]'), "is not valid Unicode text"),
    (lambda t: t.replace('"input_shape": null', '"input_shape": [3, 100000, 100000]'),
     "holds more than the 2147483647 values per sample"),
    (lambda t: t.replace('"seed": 0', '"seed": ' + "[" * 100_000 + "]" * 100_000), "nests its JSON too deeply"),
    (lambda t: t.replace('"loss": null', '"loss": []'), r"unknown loss \[\]"),
])
def test_model_json_values_that_would_raise_generic_errors_name_the_file(device, tmp_path, change, message):
    path = broken_model(device, tmp_path, change)
    for read in (clnet.load, cio.info):
        with pytest.raises(ModelFileError, match=message) as failure:
            read(path)
        assert str(failure.value).startswith(str(path))


# ---------------------------------------------------------------------- deep networks, linear plans
def test_a_deep_network_builds_and_plans_in_linear_time(device):
    layers = [L.Flatten(), L.Dense(4, 4)] + [L.ReLU() if i % 2 else L.Dense(4, 4) for i in range(20_000)]
    network = Network.chain(layers)
    assert network.following(network.nodes[0]) is layers[1] and network.following(network.nodes[-1]) is None
    plan = Plan.__new__(Plan)  # places values only: no device, no kernels
    plan.values = []
    rng = np.random.default_rng(0)
    for i in range(20_000):  # a chain's short-lived values, and a few long-lived ones across it
        value = Value(plan, (int(rng.integers(1, 300)),), f"v{i}")
        value.first = i
        value.last = i + 1 if i % 500 else min(i + 5000, 20_000)
        plan.values.append(value)
    start = time.perf_counter()
    end = plan.place()
    assert time.perf_counter() - start < 30  # a scan of every placed value took minutes
    for a, b in zip(plan.values, plan.values[1:]):  # neighbours overlap in time: never in memory
        assert a.base + a.size <= b.base or b.base + b.size <= a.base
    live = sorted(plan.values, key=lambda v: v.base)
    assert end == max(v.base + v.size for v in live)
    model = clnet.Sequential(layers[:4001], device=device)  # ParamStore and stages: no scan per node
    assert len(model.state_dict()) == 2 * 2001


def first_fit_reference(values):
    """The arena offsets of `values` as the plain first fit gives them: largest first, each at the
    lowest offset clear of every value placed whose live range meets its own (every pair compared)."""
    placed, bases = [], {}
    for v in sorted(values, key=lambda v: (-v.size, v.first)):
        offset = 0
        for p in sorted((p for p in placed if p.first <= v.last and v.first <= p.last), key=lambda p: bases[p]):
            if offset + v.size <= bases[p]:
                break
            offset = max(offset, -(-(bases[p] + p.size) // 64) * 64)
        bases[v] = offset
        placed.append(v)
    return bases


def test_placement_is_the_plain_first_fit(device):
    plan = Plan.__new__(Plan)
    plan.values = []
    rng = np.random.default_rng(1)
    for i in range(1500):  # short-lived values, and long-lived ones as a training plan's activations
        value = Value(plan, (int(rng.integers(1, 500)),), f"v{i}")
        value.first = int(rng.integers(0, 3000))
        value.last = value.first + int(rng.choice([0, 1, 2, 70, 200, 2000]))
        plan.values.append(value)
    end = plan.place()
    expected = first_fit_reference(plan.values)
    assert [v.base for v in plan.values] == [expected[v] for v in plan.values]
    assert end == max(v.base + v.size for v in plan.values)


def test_class_names_that_are_not_unicode_are_refused(device, tmp_path):
    from PIL import Image
    folder_name = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: a lone surrogate in Python's name
    try:
        (tmp_path / "data" / folder_name).mkdir(parents=True)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only Unicode names")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "data" / folder_name / "a.png")
    with pytest.raises(DatasetError, match="the class folder's name is not valid Unicode text"):
        datasets.ImageFolder(tmp_path / "data")
    with pytest.raises(ModelFileError, match="cannot save the class name 'caf\\\\udce9'"):
        small_net(device).save(tmp_path / "m.clnet", classes=["a", folder_name, "c"])
    assert not (tmp_path / "m.clnet").exists()
