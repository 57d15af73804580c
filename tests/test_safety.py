"""Special paths (issue 17, items 1, 3, 5 and 13): clnet writes and reads only regular files, refuses
zip members that are compressed or larger than the file, and checks clnet-train's output paths before
training. Every special file is made here, in tmp_path; a FIFO is never opened, so no test can block."""

import io
import os
import stat
import struct
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import io as cio
from clnet import layers as L
from clnet.callbacks import MetricsLog
from clnet.cli import train
from clnet.errors import ClnetError, ModelFileError
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
    assert unchanged(tmp_path / name)


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
