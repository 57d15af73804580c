"""Dataset file formats: IDX, CIFAR (python and binary versions), image folders, numpy arrays.

Every fixture is written here into tmp_path, read back exactly (JPEG approximately), and each
kind of damage must give a DatasetError that names the file.
"""

import gzip
import os
import re
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clnet.datasets.arrays import load_arrays
from clnet.datasets.cifar import load_cifar
from clnet.datasets.dataset import Dataset
from clnet.datasets.folder import ImageFolder
from clnet.datasets.idx import load_idx_pair, read_idx
from clnet.errors import DatasetError

rng = np.random.default_rng(1234)


def raises_naming(path, match=None):
    """pytest.raises(DatasetError) whose message names `path` (and matches `match`)."""
    pattern = re.escape(str(path)) + (f"(.|\n)*{match}" if match else "")
    return pytest.raises(DatasetError, match=pattern)


# --- IDX ------------------------------------------------------------------------------------------

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array, code=None):
    array = np.asarray(array)
    code = IDX_CODES[array.dtype.type] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz=False, **kw):
    data = idx_bytes(array, **kw)
    Path(path).write_bytes(gzip.compress(data) if gz else data)
    return path


def sample(dtype, shape):
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dtype)  # fractions and signs: byte order shows
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", list(IDX_CODES), ids=lambda t: t.__name__)
def test_idx_reads_every_type_raw_and_gzip(tmp_path, dtype, gz):
    for shape in [(7,), (4, 3, 5), (2, 1, 3, 2)]:
        expected = sample(dtype, shape)
        # the name says nothing: gzip is told by the content
        got = read_idx(write_idx(tmp_path / f"file{len(shape)}.idx", expected, gz=gz))
        assert got.dtype == np.dtype(dtype) and got.dtype.isnative and got.shape == shape
        np.testing.assert_array_equal(got, expected)
        got[...] = 0  # writable, not a view of the file's bytes


def test_idx_gzip_told_by_content_not_name(tmp_path):
    expected = sample(np.int16, (3, 4))
    raw_named_gz = write_idx(tmp_path / "raw.gz", expected)
    gz_named_raw = write_idx(tmp_path / "packed-ubyte", expected, gz=True)
    np.testing.assert_array_equal(read_idx(raw_named_gz), expected)
    np.testing.assert_array_equal(read_idx(gz_named_raw), expected)


def test_idx_corruptions_name_the_file(tmp_path):
    good = idx_bytes(sample(np.uint8, (3, 4, 4)))
    cases = {
        "magic": (b"\x01\x00" + good[2:], "not an IDX file"),
        "typecode": (good[:2] + b"\x0a" + good[3:], "unknown IDX type code 0x0A"),
        "truncated": (good[:-5], "truncated"),
        "header": (good[:9], "truncated"),
        "tiny": (good[:2], "too short"),
        "trailing": (good + b"\x00\x01", "2 unexpected bytes"),
        "zero-dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    }
    for label, (data, match) in cases.items():
        for gz in (False, True):  # the same checks after decompression
            path = tmp_path / f"{label}{'-gz' if gz else ''}"
            path.write_bytes(gzip.compress(data) if gz else data)
            with raises_naming(path, match):
                read_idx(path)
    with raises_naming(tmp_path / "absent.idx", "no such file"):
        read_idx(tmp_path / "absent.idx")


def test_idx_corrupt_gzip_stream(tmp_path):
    packed = gzip.compress(idx_bytes(sample(np.uint8, (20, 8, 8))))
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    flipped = tmp_path / "flipped.gz"
    middle = len(packed) // 2
    flipped.write_bytes(packed[:middle] + bytes([packed[middle] ^ 0xFF]) + packed[middle + 1:])
    bad_crc = tmp_path / "crc.gz"
    bad_crc.write_bytes(packed[:-8] + bytes([packed[-8] ^ 1]) + packed[-7:])
    for path in (truncated, flipped, bad_crc):
        with raises_naming(path, "corrupt gzip"):
            read_idx(path)


def test_idx_pair_makes_a_dataset(tmp_path):
    images = sample(np.uint8, (5, 6, 4))
    labels = np.array([3, 0, 9, 9, 1], np.uint8)
    ds = load_idx_pair(write_idx(tmp_path / "img", images, gz=True), write_idx(tmp_path / "lab", labels), "tiny")
    assert isinstance(ds, Dataset) and ds.name == "tiny" and ds.classes is None
    x, y = ds
    assert x.shape == (5, 1, 6, 4) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels)


def test_idx_pair_errors(tmp_path):
    images = write_idx(tmp_path / "images", sample(np.uint8, (4, 5, 5)))
    labels = write_idx(tmp_path / "labels", np.arange(4, dtype=np.uint8))
    short = write_idx(tmp_path / "short-labels", np.arange(3, dtype=np.uint8))
    flat = write_idx(tmp_path / "flat-images", sample(np.uint8, (4, 25)))
    labels2d = write_idx(tmp_path / "labels-2d", np.zeros((4, 1), np.uint8))
    float_labels = write_idx(tmp_path / "float-labels", np.zeros(4, np.float32))
    with raises_naming(images, "holds 4 images but .*short-labels holds 3 labels"):
        load_idx_pair(images, short, "x")
    with raises_naming(flat, "3-D"):
        load_idx_pair(flat, labels, "x")
    with raises_naming(labels2d, "1-D"):
        load_idx_pair(images, labels2d, "x")
    with raises_naming(labels, "swapped"):
        load_idx_pair(labels, images, "x")
    with raises_naming(float_labels, "integers"):
        load_idx_pair(images, float_labels, "x")


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    for prefix, count in [("train", 60000), ("t10k", 10000)]:
        ds = load_idx_pair(FASHION / f"{prefix}-images-idx3-ubyte.gz", FASHION / f"{prefix}-labels-idx1-ubyte.gz",
                           f"fashion-{prefix}")
        assert ds.x.shape == (count, 1, 28, 28) and ds.x.dtype == np.uint8
        assert np.bincount(ds.y).tolist() == [count // 10] * 10  # balanced, labels 0..9
        assert ds.x.max() == 255 and ds.x.min() == 0 and 50 < ds.x.mean() < 100


# --- CIFAR ----------------------------------------------------------------------------------------

def py2_pickle(obj):
    """A protocol-2 pickle as Python 2's cPickle wrote the official CIFAR batches: byte strings as
    BINSTRING, numpy arrays through numpy.core.multiarray._reconstruct with their bytes as a string."""
    out = bytearray(b"\x80\x02")

    def put(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                put(key)
                put(value)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for value in o:
                put(value)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for value in o:
                put(value)
            out.extend(b"t")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, (str, bytes)):
            data = o.encode() if isinstance(o, str) else o
            out.extend(b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data)))
            out.extend(data)
        elif isinstance(o, np.dtype):
            out.extend(b"cnumpy\ndtype\n")
            put((o.str[1:], False, True))
            out.extend(b"R")
            put((3, "|", None, None, None, -1, -1, 0))
            out.extend(b"b")
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put((0,))
            put("b")
            out.extend(b"\x87R")
            put((1, o.shape, o.dtype, False, o.tobytes()))
            out.extend(b"b")
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def dump(obj, flavour):
    import pickle
    return py2_pickle(obj) if flavour == "py2" else pickle.dumps(obj, protocol=flavour)


def class_names(n, prefix):
    return [f"{prefix}{i}" for i in range(n)]


CIFAR = {
    "cifar10": {"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin",
                "archive": {"python": "cifar-10-python.tar.gz", "binary": "cifar-10-binary.tar.gz"}},
    "cifar100": {"python": "cifar-100-python", "binary": "cifar-100-binary",
                 "archive": {"python": "cifar-100-python.tar.gz", "binary": "cifar-100-binary.tar.gz"}},
}


def make_cifar(folder, variant, kind, flavour="py2", per_file=3):
    """Writes a small copy of an official CIFAR folder; returns {split: (x, fine, coarse)} and the class names."""
    folder.mkdir(parents=True, exist_ok=True)
    n_fine = 10 if variant == "cifar10" else 100
    fine_names, coarse_names = class_names(n_fine, "fine"), class_names(20, "coarse")
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]} if variant == "cifar10" \
        else {"train": ["train"], "test": ["test"]}
    expected = {}
    for split, names in files.items():
        xs, fines, coarses = [], [], []
        for i, name in enumerate(names):
            n = per_file + i  # batches of different lengths
            x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
            fine = rng.integers(0, n_fine, size=n)
            fine[0] = n_fine - 1  # the extremes of the range occur
            coarse = rng.integers(0, 20, size=n)
            xs.append(x), fines.append(fine), coarses.append(coarse)
            flat = x.reshape(n, -1)
            if kind == "binary":
                labels = fine[:, None] if variant == "cifar10" else np.stack([coarse, fine], axis=1)
                (folder / f"{name}.bin").write_bytes(np.concatenate([labels.astype(np.uint8), flat], 1).tobytes())
            elif variant == "cifar10":
                batch = {"batch_label": f"batch {i}", "labels": fine.tolist(), "data": flat,
                         "filenames": [f"img{j}.png" for j in range(n)]}
                (folder / name).write_bytes(dump(batch, flavour))
            else:
                batch = {"filenames": [f"img{j}.png" for j in range(n)], "batch_label": split,
                         "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist(), "data": flat}
                (folder / name).write_bytes(dump(batch, flavour))
        expected[split] = tuple(np.concatenate(a) for a in (xs, fines, coarses))
    if kind == "binary" and variant == "cifar10":
        (folder / "batches.meta.txt").write_text("\n".join(fine_names) + "\n\n")  # the official trailing blank
    elif kind == "binary":
        (folder / "fine_label_names.txt").write_text("\n".join(fine_names) + "\n")
        (folder / "coarse_label_names.txt").write_text("\n".join(coarse_names) + "\n")
    elif variant == "cifar10":
        (folder / "batches.meta").write_bytes(dump(
            {"num_cases_per_batch": 10000, "label_names": fine_names, "num_vis": 3072}, flavour))
    else:
        (folder / "meta").write_bytes(dump({"fine_label_names": fine_names, "coarse_label_names": coarse_names},
                                           flavour))
    return expected, fine_names, coarse_names


def make_archive(tmp_path, variant, kind, **kw):
    top = CIFAR[variant][kind]
    expected, fine, coarse = make_cifar(tmp_path / "src" / top, variant, kind, **kw)
    archive = tmp_path / CIFAR[variant]["archive"][kind]
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / top, arcname=top)
    return archive, expected, fine, coarse


def check_cifar(ds, expected, split, classes, labels=1):
    x, y = ds
    assert x.shape == expected[split][0].shape and x.dtype == np.uint8 and x.flags.writeable
    np.testing.assert_array_equal(x, expected[split][0])
    np.testing.assert_array_equal(y, expected[split][labels])
    assert y.dtype == np.int64 and ds.classes == classes


@pytest.mark.parametrize("form", ["archive", "folder", "parent", "files"])
@pytest.mark.parametrize("kind", ["python", "binary"])
@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_every_distribution_and_form(tmp_path, variant, kind, form):
    if form == "archive":
        path, expected, fine, _ = make_archive(tmp_path, variant, kind)
    elif form == "files":  # the files directly in the given folder
        path = tmp_path / "mine"
        expected, fine, _ = make_cifar(path, variant, kind)
    else:  # the official top-level folder, given itself or its parent
        expected, fine, _ = make_cifar(tmp_path / CIFAR[variant][kind], variant, kind)
        path = tmp_path / CIFAR[variant][kind] if form == "folder" else tmp_path
    for split in ("train", "test"):
        ds = load_cifar(path, variant, split)
        check_cifar(ds, expected, split, fine)
        assert ds.name == f"{variant}-{split}"
    assert load_cifar(path, variant, "test", name="mine").name == "mine"


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_cifar100_coarse_labels(tmp_path, kind):
    archive, expected, _, coarse = make_archive(tmp_path, "cifar100", kind)
    for split in ("train", "test"):
        check_cifar(load_cifar(archive, "cifar100", split, label_mode="coarse"), expected, split, coarse, labels=2)
    with pytest.raises(ValueError, match="label_mode"):
        load_cifar(archive, "cifar10", "train", label_mode="coarse")


@pytest.mark.parametrize("flavour", [2, 4, 5], ids=lambda p: f"protocol{p}")
def test_cifar_pickles_rewritten_by_python3(tmp_path, flavour):
    """Python 3 pickles spell bytes and arrays differently (_codecs.encode, _frombuffer): still plain data."""
    for variant in ("cifar10", "cifar100"):
        expected, fine, _ = make_cifar(tmp_path / variant, variant, "python", flavour=flavour)
        check_cifar(load_cifar(tmp_path / variant, variant, "train"), expected, "train", fine)


def test_cifar_dataset_downloaded_but_not_unpacked(tmp_path):
    archive, expected, fine, _ = make_archive(tmp_path, "cifar10", "binary")
    check_cifar(load_cifar(tmp_path, "cifar10", "test"), expected, "test", fine)  # folder holding the .tar.gz


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_cifar_refuses_code_in_pickles(tmp_path):
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder, "cifar10", "python")
    marker = tmp_path / "pwned"
    for protocol in (0, 2, 5):
        batch = {"data": np.zeros((1, 3072), np.uint8), "labels": [Exploit(marker)]}
        (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
        with raises_naming(folder / "test_batch", "refused to unpickle (posix|nt|os).mkdir"):
            load_cifar(tmp_path, "cifar10", "test")
        assert not marker.exists()
    # an array of Python objects is refused too, whatever it holds
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.array([Exploit(marker)]), "labels": [0]}))
    with raises_naming(folder / "test_batch", "refused"):
        load_cifar(tmp_path, "cifar10", "test")
    assert not marker.exists()


def test_cifar_missing_members(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder, "cifar10", "python")
    (folder / "data_batch_3").unlink()
    load_cifar(tmp_path, "cifar10", "test")  # the test split needs no training batch
    with raises_naming(tmp_path, "missing data_batch_3"):
        load_cifar(tmp_path, "cifar10", "train")
    (folder / "batches.meta").unlink()
    with raises_naming(tmp_path, "missing batches.meta"):
        load_cifar(tmp_path, "cifar10", "test")
    # in an archive
    src = tmp_path / "b" / "cifar-100-binary"
    make_cifar(src, "cifar100", "binary")
    (src / "coarse_label_names.txt").unlink()
    archive = tmp_path / "cifar-100-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    with raises_naming(archive, "missing coarse_label_names.txt"):
        load_cifar(archive, "cifar100", "train")
    with raises_naming(tmp_path / "nowhere", "no such file"):
        load_cifar(tmp_path / "nowhere", "cifar10", "train")
    (tmp_path / "empty").mkdir()
    with raises_naming(tmp_path / "empty", "no CIFAR-10 files"):
        load_cifar(tmp_path / "empty", "cifar10", "train")


def test_cifar_wrong_variant_says_which(tmp_path):
    archive, *_ = make_archive(tmp_path, "cifar100", "python")
    with raises_naming(archive, "holds CIFAR-100, not CIFAR-10: load it as cifar100"):
        load_cifar(archive, "cifar10", "train")
    make_cifar(tmp_path / "x" / "cifar-10-batches-bin", "cifar10", "binary")
    with raises_naming(tmp_path / "x", "holds CIFAR-10, not CIFAR-100"):
        load_cifar(tmp_path / "x", "cifar100", "test")


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_truncated_record_file(tmp_path, variant):
    make_cifar(tmp_path, variant, "binary")
    name = "test_batch.bin" if variant == "cifar10" else "test.bin"
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[:-100])
    record = 3073 if variant == "cifar10" else 3074
    with raises_naming(tmp_path / name, f"truncated .* {record}-byte records"):
        load_cifar(tmp_path, variant, "test")
    (tmp_path / name).write_bytes(b"")
    with raises_naming(tmp_path / name, "truncated"):
        load_cifar(tmp_path, variant, "test")
    bad = bytearray(data)
    bad[record] = 200  # the second record's first label byte out of range
    (tmp_path / name).write_bytes(bytes(bad))
    with raises_naming(tmp_path / name, "out of range"):
        load_cifar(tmp_path, variant, "test")


def test_cifar_wrong_array_sizes(tmp_path):
    folder = tmp_path / "cifar-100-python"
    make_cifar(folder, "cifar100", "python")
    good = {"fine_labels": [1, 2], "coarse_labels": [0, 0], "data": np.zeros((2, 3072), np.uint8)}
    cases = [
        ({**good, "data": np.zeros((2, 3000), np.uint8)}, r"shape \(2, 3000\), expected \(images, 3072\)"),
        ({**good, "fine_labels": [1, 2, 3]}, "2 images but 3 fine_labels"),
        ({**good, "fine_labels": [1, 100]}, r"range 1..100, expected 0..99"),
        ({**good, "data": np.zeros((2, 3072), np.float32)}, "uint8"),
        ({"coarse_labels": [0, 0], "data": good["data"]}, "no 'fine_labels' entry"),
        ([1, 2, 3], "expected a pickled dict"),
    ]
    for batch, match in cases:
        (folder / "test").write_bytes(py2_pickle(batch))
        with raises_naming(folder / "test", match):
            load_cifar(tmp_path, "cifar100", "test")
    (folder / "test").write_bytes(py2_pickle(good))
    load_cifar(tmp_path, "cifar100", "test")
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": ["a"] * 99, "coarse_label_names": ["b"] * 20}))
    with raises_naming(folder / "meta", "should list 100 class names, got 99"):
        load_cifar(tmp_path, "cifar100", "test")


def test_cifar_corrupt_files_and_archives(tmp_path):
    archive, *_ = make_archive(tmp_path, "cifar10", "python")
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    flipped = tmp_path / "flipped.tar.gz"
    flipped.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x55]) + data[len(data) // 2 + 1:])
    for path in (truncated, garbage, flipped):
        with raises_naming(path, "corrupt|truncated|not a tar"):
            load_cifar(path, "cifar10", "train")
    # a truncated pickle inside an unpacked folder
    folder = tmp_path / "u" / "cifar-10-batches-py"
    make_cifar(folder, "cifar10", "python")
    batch = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(batch[: len(batch) // 2])
    with raises_naming(folder / "data_batch_2", "corrupt pickle"):
        load_cifar(tmp_path / "u", "cifar10", "train")


# --- image folders --------------------------------------------------------------------------------

@pytest.fixture
def Image():
    return pytest.importorskip("PIL.Image")


def save(Image, path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return array


def smooth(h, w, channels=None):
    """A gradient image: JPEG keeps it close."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 20 + yy * 120 // max(h - 1, 1) + xx * 100 // max(w - 1, 1)
    if channels is None:
        return base.astype(np.uint8)
    return np.stack([base, 250 - base, base // 2 + 40], axis=-1).astype(np.uint8)


def test_image_folder_mixed_formats_and_modes(tmp_path, Image):
    h, w = 9, 7  # not square: height and width must not swap
    noise = lambda *s: rng.integers(0, 256, size=s, dtype=np.uint8)
    a = save(Image, tmp_path / "cat" / "a.png", noise(h, w, 3))
    b = save(Image, tmp_path / "cat" / "b.BMP", noise(h, w, 3))  # upper-case extension
    c = save(Image, tmp_path / "cat" / "sub" / "c.png", noise(h, w))  # nested, grayscale
    d = save(Image, tmp_path / "dog" / "d.jpg", smooth(h, w, 3), quality=95, subsampling=0)
    e = save(Image, tmp_path / "dog" / "e.jpeg", smooth(h, w), quality=95)  # grayscale JPEG
    f = save(Image, tmp_path / "dog" / "f.bmp", noise(h, w))  # grayscale BMP
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    (tmp_path / "dog" / "._d.jpg").write_bytes(b"macOS metadata, not an image")
    save(Image, tmp_path / ".thumbs" / "x.png", noise(h, w, 3))  # a hidden folder is no class
    save(Image, tmp_path / "cat" / ".cache" / "y.png", noise(h, w, 3))  # nor part of one
    save(Image, tmp_path / "dog" / "g.ppm", noise(h, w))  # not one of the formats read (counted in a warning)

    ds = ImageFolder(tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.name == tmp_path.name
    assert [p.name for p in ds.files] == ["a.png", "b.BMP", "c.png", "d.jpg", "e.jpeg", "f.bmp"]
    x, y = ds
    assert x.shape == (6, 3, h, w) and x.dtype == np.uint8 and y.dtype == np.int64
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    gray3 = lambda g: np.repeat(g[None], 3, axis=0)
    np.testing.assert_array_equal(x[0], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(x[1], b.transpose(2, 0, 1))
    np.testing.assert_array_equal(x[2], gray3(c))  # grey among colour: copied to the 3 channels
    np.testing.assert_array_equal(x[5], gray3(f))
    assert np.abs(x[3].astype(int) - d.transpose(2, 0, 1)).mean() < 3  # JPEG: approximately
    assert np.abs(x[4].astype(int) - gray3(e)).mean() < 3

    gray = ImageFolder(tmp_path, grayscale=True, name="g")
    assert gray.x.shape == (6, 1, h, w) and gray.name == "g"
    with Image.open(tmp_path / "cat" / "a.png") as im:
        np.testing.assert_array_equal(gray.x[0, 0], np.asarray(im.convert("L")))  # Pillow's luma
    np.testing.assert_array_equal(gray.x[2, 0], c)


def test_image_folder_grayscale_choice(tmp_path, Image):
    one = save(Image, tmp_path / "0" / "one.png", rng.integers(0, 256, (4, 5), dtype=np.uint8))
    two = save(Image, tmp_path / "1" / "two.bmp", rng.integers(0, 256, (4, 5), dtype=np.uint8))
    palette = Image.fromarray(rng.integers(0, 256, (4, 5), dtype=np.uint8)).convert("P")  # greys in a palette
    palette.save(tmp_path / "1" / "three.png")
    ds = ImageFolder(tmp_path)
    assert ds.x.shape == (3, 1, 4, 5)  # all grey: one channel
    np.testing.assert_array_equal(ds.x[0, 0], one)
    np.testing.assert_array_equal(ds.x[2, 0], two)
    np.testing.assert_array_equal(ds.x[1, 0], np.asarray(palette.convert("L")))
    rgb = ImageFolder(tmp_path, grayscale=False)
    assert rgb.x.shape == (3, 3, 4, 5)
    np.testing.assert_array_equal(rgb.x[0], np.repeat(one[None], 3, 0))


def test_image_folder_resize(tmp_path, Image):
    big = save(Image, tmp_path / "a" / "big.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    small = save(Image, tmp_path / "b" / "small.png", rng.integers(0, 256, (5, 4), dtype=np.uint8))
    ds = ImageFolder(tmp_path, image_size=(8, 12))
    assert ds.x.shape == (2, 3, 8, 12)
    resample = Image.Resampling.BILINEAR
    np.testing.assert_array_equal(ds.x[0], np.asarray(Image.fromarray(big).resize((12, 8), resample))
                                  .transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.x[1, 1], np.asarray(Image.fromarray(small).resize((12, 8), resample)))
    assert ImageFolder(tmp_path, image_size=6).x.shape == (2, 3, 6, 6)


def test_image_folder_sizes_must_agree(tmp_path, Image):
    save(Image, tmp_path / "a" / "one.png", np.zeros((8, 8), np.uint8))
    save(Image, tmp_path / "b" / "two.png", np.zeros((8, 9), np.uint8))
    with raises_naming(tmp_path, r"one.png is 8x8 .*two.png is 8x9: pass --image-size"):
        ImageFolder(tmp_path)


def test_image_folder_errors(tmp_path, Image):
    with raises_naming(tmp_path / "absent", "no such folder"):
        ImageFolder(tmp_path / "absent")
    root = tmp_path / "root"
    save(Image, root / "loose.png", np.zeros((4, 4), np.uint8))
    with raises_naming(root, "no class folders .*1 images directly"):
        ImageFolder(root)
    save(Image, root / "full" / "x.png", np.zeros((4, 4), np.uint8))
    (root / "hollow").mkdir()
    (root / "hollow" / "readme.txt").write_text("no images here")
    with raises_naming(root / "hollow", "class folder 'hollow' holds no images"):
        ImageFolder(root)
    (root / "hollow" / "readme.txt").unlink()
    (root / "hollow").rmdir()
    png = (root / "full" / "x.png").read_bytes()
    for bad_name, content in [("cut.png", png[: len(png) // 2]), ("junk.jpg", b"\xff\xd8 not a jpeg"),
                              ("text.bmp", b"hello")]:
        (root / "full" / bad_name).write_bytes(content)
        with raises_naming(root / "full" / bad_name, "unreadable or corrupt image"):
            ImageFolder(root)
        (root / "full" / bad_name).unlink()
    assert len(ImageFolder(root)) == 1


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    with raises_naming(tmp_path, r'pip install pillow .*pip install "\.\[images\]"'):
        ImageFolder(tmp_path)


# --- numpy arrays ---------------------------------------------------------------------------------

def test_arrays_npz_pairs_and_folder(tmp_path):
    x = rng.integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0, 4], np.int32)
    np.savez(tmp_path / "one.npz", x=x, y=y)
    train, test = load_arrays(tmp_path / "one.npz")
    assert test is None and train.name == "one"
    np.testing.assert_array_equal(train.x, x)
    np.testing.assert_array_equal(train.y, y)
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64

    xt = rng.standard_normal((3, 5, 4)).astype(np.float32)  # (N, H, W) float
    np.savez_compressed(tmp_path / "two.npz", x_train=x[:, 0], y_train=y, x_test=xt, y_test=np.array([[1], [0], [3]]))
    train, test = load_arrays(tmp_path / "two.npz", name="mine")
    assert train.x.shape == (6, 1, 5, 4) and test.x.shape == (3, 1, 5, 4) and test.x.dtype == np.float32
    np.testing.assert_array_equal(train.x[:, 0], x[:, 0])
    np.testing.assert_array_equal(test.x[:, 0], xt)
    assert test.y.tolist() == [1, 0, 3] and (train.name, test.name) == ("mine-train", "mine-test")

    folder = tmp_path / "pair"
    folder.mkdir()
    np.save(folder / "x.npy", x.astype(np.float64) / 255)
    np.save(folder / "y.npy", y.astype(np.uint8))
    train, test = load_arrays(folder)
    assert test is None and train.x.dtype == np.float32
    np.testing.assert_allclose(train.x, x / 255, rtol=1e-6)
    np.testing.assert_array_equal(train.y, y)

    np.savez(tmp_path / "ints.npz", x=x.astype(np.int64), y=y)  # np.array(list) pixels: int64 0..255
    assert load_arrays(tmp_path / "ints.npz")[0].x.dtype == np.uint8


def test_arrays_errors(tmp_path):
    x, y = np.zeros((4, 1, 3, 3), np.uint8), np.arange(4)
    np.savez(tmp_path / "keys.npz", images=x, labels=y)
    with raises_naming(tmp_path / "keys.npz", "has keys images, labels: expected x and y, or x_train"):
        load_arrays(tmp_path / "keys.npz")
    np.savez(tmp_path / "halftest.npz", x_train=x, y_train=y, x_test=x)
    with raises_naming(tmp_path / "halftest.npz", "x_test without y_test"):
        load_arrays(tmp_path / "halftest.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:3])
    with raises_naming(tmp_path / "short.npz", "4 images but 3 labels"):
        load_arrays(tmp_path / "short.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([x, "a"], dtype=object), y=y)
    with raises_naming(tmp_path / "objects.npz", "pickled Python objects"):
        load_arrays(tmp_path / "objects.npz")
    np.save(tmp_path / "dict.npy", {"x": x, "y": y})  # a pickled dict
    with raises_naming(tmp_path / "dict.npy", "pickled Python objects"):
        load_arrays(tmp_path / "dict.npy")
    np.save(tmp_path / "lone.npy", x)
    with raises_naming(tmp_path / "lone.npy", "without labels"):
        load_arrays(tmp_path / "lone.npy")
    np.savez(tmp_path / "good.npz", x=x, y=y)
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with raises_naming(tmp_path / "cut.npz", "corrupt"):
        load_arrays(tmp_path / "cut.npz")
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with raises_naming(tmp_path / "text.npz", "not an .npz"):
        load_arrays(tmp_path / "text.npz")
    with raises_naming(tmp_path / "absent.npz", "no such file"):
        load_arrays(tmp_path / "absent.npz")
    np.savez(tmp_path / "nhwc.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=y)
    with raises_naming(tmp_path / "nhwc.npz", "channels-last"):
        load_arrays(tmp_path / "nhwc.npz")
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 9), np.uint8), y=y)
    with raises_naming(tmp_path / "flat.npz", r"got shape \(4, 9\)"):
        load_arrays(tmp_path / "flat.npz")
    np.savez(tmp_path / "neg.npz", x=x, y=-y)
    with raises_naming(tmp_path / "neg.npz", "negative label"):
        load_arrays(tmp_path / "neg.npz")
    folder = tmp_path / "folder"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    with raises_naming(folder, "holds .npy files x.npy: expected x and y"):
        load_arrays(folder)
    np.save(folder / "y.npy", np.array([{"a": 1}] * 4, dtype=object))
    with raises_naming(folder / "y.npy", "pickled Python objects"):
        load_arrays(folder)
