"""Packed datasets: the round trip against ImageFolder, splits, deterministic bytes, interrupted and
resumed packs, damaged packs, bad images, and training from a pack without reading it whole."""

import dataclasses
import mmap

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet.cli import pack as pack_command, train as train_command
from clnet.datasets import ImageFolder, load, open_pack, pack
from clnet.datasets import feed as feed_module, packed as pack_module
from clnet.errors import DatasetError
from clnet.runner import Runner
from clnet.trainer import Trainer

rng = np.random.default_rng(7)


@pytest.fixture
def Image():
    return pytest.importorskip("PIL.Image")


def write_images(Image, folder, classes=("cat", "dog"), per_class=4):
    """PNG and JPEG files of mixed sizes and modes (grey, RGB, RGBA, palette) in class folders."""
    modes = ["RGB", "L", "RGBA", "P"]
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(6, 20, size=2)
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(modes[i % 4])
            if i % 3 == 2 and image.mode in ("RGB", "L"):
                image.save(folder / c / f"{i}.jpg", quality=90)
            else:
                image.save(folder / c / f"{i}.png")


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message


def memory_mapped(x):
    """Whether x's memory is a file mapping rather than an array of its own."""
    while x is not None:
        if isinstance(x, (mmap.mmap, np.memmap)):
            return True
        x = getattr(x, "base", None)
    return False


def test_round_trip_matches_image_folder(tmp_path, Image):
    write_images(Image, tmp_path / "src")
    report = pack(tmp_path / "src", tmp_path / "packed", image_size=(12, 10), workers=1)
    assert report.counts == {"train": 8} and report.skipped == {"train": 0}
    train, test = load(tmp_path / "packed", verify=True)
    folder = ImageFolder(tmp_path / "src", image_size=(12, 10))
    assert test is None and train.classes == folder.classes == ["cat", "dog"]
    assert train.x.shape == folder.x.shape == (8, 3, 12, 10)
    np.testing.assert_array_equal(train.x, folder.x)
    np.testing.assert_array_equal(train.y, folder.y)
    assert train.files == [str(f.relative_to(tmp_path / "src")) for f in folder.files]
    assert memory_mapped(train.x)

    grey = pack(tmp_path / "src", tmp_path / "grey", image_size=9, grayscale=True, workers=1)
    assert grey.counts == {"train": 8}
    np.testing.assert_array_equal(open_pack(tmp_path / "grey")[0].x,
                                  ImageFolder(tmp_path / "src", image_size=9, grayscale=True).x)


def test_grey_images_pack_to_one_channel(tmp_path, Image):
    for i, c in enumerate(("a", "b")):
        (tmp_path / "src" / c).mkdir(parents=True)
        grey = Image.fromarray(rng.integers(0, 256, (7, 5), dtype=np.uint8))
        grey.save(tmp_path / "src" / c / "grey.png")
        grey.convert("P").save(tmp_path / "src" / c / "palette.png")  # greys in a palette are grey
    pack(tmp_path / "src", tmp_path / "packed", image_size=6, workers=2)
    train, _ = load(tmp_path / "packed")
    assert train.x.shape == (4, 1, 6, 6)
    np.testing.assert_array_equal(train.x, ImageFolder(tmp_path / "src", image_size=6).x)


def test_train_and_test_splits_kept(tmp_path, Image):
    write_images(Image, tmp_path / "src" / "train", classes=("ant", "bee", "cow"), per_class=2)
    write_images(Image, tmp_path / "src" / "val", classes=("bee", "cow"), per_class=3)  # no ants held out
    report = pack(tmp_path / "src", tmp_path / "packed", image_size=8, workers=1)
    assert report.counts == {"train": 6, "test": 6}
    train, test = load(tmp_path / "packed")
    want_train, want_test = load(tmp_path / "src", image_size=8)
    for got, want in ((train, want_train), (test, want_test)):
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)
        assert got.classes == want.classes == ["ant", "bee", "cow"]
    assert test.y.tolist() == [1, 1, 1, 2, 2, 2] and test.name == "packed/test"


def test_same_bytes_with_one_or_two_workers(tmp_path, Image):
    write_images(Image, tmp_path / "src" / "train")
    write_images(Image, tmp_path / "src" / "test", per_class=2)
    pack(tmp_path / "src", tmp_path / "one", image_size=8, workers=1)
    pack(tmp_path / "src", tmp_path / "two", image_size=8, workers=2)
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")
    assert set(files_of(tmp_path / "one")) == {"index.clnetpack", "train.u8", "test.u8"}


def test_interrupted_pack_is_refused_then_resumed(tmp_path, Image, monkeypatch):
    write_images(Image, tmp_path / "src", per_class=5)
    pack(tmp_path / "src", tmp_path / "whole", image_size=8, workers=1)
    decode, calls = pack_module._decode_file, []

    def stop_after_three(task):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task[0])
        return decode(task)

    monkeypatch.setattr(pack_module, "_decode_file", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        pack(tmp_path / "src", tmp_path / "packed", image_size=8, workers=1)
    partial = tmp_path / "packed.partial"
    assert not (tmp_path / "packed").exists() and partial.is_dir()
    for path in (tmp_path / "packed", partial):
        with pytest.raises(DatasetError) as excinfo:
            load(path)
        one_line_error(excinfo, "unfinished", "re-run clnet-pack", str(tmp_path / "packed"))

    with open(partial / "train.u8", "ab") as f:  # bytes written after the last progress record
        f.write(b"\xff" * 100)
    calls.clear()
    monkeypatch.setattr(pack_module, "_decode_file", lambda task: calls.append(task[0]) or decode(task))
    report = pack(tmp_path / "src", tmp_path / "packed", image_size=8, workers=1)
    assert report.counts == {"train": 10} and len(calls) == 7  # only the images not written before
    assert not partial.exists()
    assert files_of(tmp_path / "packed") == files_of(tmp_path / "whole")


def test_bad_images_skipped_and_counted_or_raised(tmp_path, Image):
    write_images(Image, tmp_path / "src", per_class=3)
    (tmp_path / "src" / "cat" / "1b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "src" / "dog" / "empty.jpg").write_bytes(b"")
    report = pack(tmp_path / "src", tmp_path / "packed", image_size=8, workers=2)
    assert report.counts == {"train": 6} and report.skipped == {"train": 2}
    assert [path.rsplit("/", 1)[-1] for path, _ in report.first_skipped] == ["1b.png", "empty.jpg"]
    train, _ = load(tmp_path / "packed")
    assert len(train) == 6 and "cat/1b.png" not in train.files and train.y.tolist() == [0, 0, 0, 1, 1, 1]

    with pytest.raises(DatasetError) as excinfo:
        pack(tmp_path / "src", tmp_path / "strict", image_size=8, workers=1, on_error="raise")
    one_line_error(excinfo, "1b.png", "unreadable", "on_error='skip'")


def test_damaged_packs_give_one_line_errors(tmp_path, Image):
    write_images(Image, tmp_path / "src")
    pack(tmp_path / "src", tmp_path / "packed", image_size=8, workers=1)
    index, data = tmp_path / "packed" / "index.clnetpack", tmp_path / "packed" / "train.u8"
    good_index, good_data = index.read_bytes(), data.read_bytes()

    index.write_bytes(good_index.replace(b'"cat"', b'"cut"'))
    with pytest.raises(DatasetError) as excinfo:
        load(tmp_path / "packed")
    one_line_error(excinfo, "index.clnetpack", "corrupt", "clnet-pack")
    index.write_bytes(b"PK\x03\x04" + good_index[4:])
    with pytest.raises(DatasetError) as excinfo:
        load(tmp_path / "packed")
    one_line_error(excinfo, "not a clnet pack")
    index.write_bytes(good_index.replace(b"CLNETPACK 1 ", b"CLNETPACK 9 "))
    with pytest.raises(DatasetError) as excinfo:
        load(tmp_path / "packed")
    one_line_error(excinfo, "version 9")
    index.write_bytes(good_index)

    data.write_bytes(good_data[:-5])
    with pytest.raises(DatasetError) as excinfo:
        load(tmp_path / "packed")
    one_line_error(excinfo, "train.u8", "damaged", "clnet-pack")

    data.write_bytes(good_data[:100] + bytes([good_data[100] ^ 1]) + good_data[101:])
    assert len(load(tmp_path / "packed")[0]) == 8  # the size is right: only verify reads the bytes
    with pytest.raises(DatasetError) as excinfo:
        load(tmp_path / "packed", verify=True)
    one_line_error(excinfo, "train.u8", "checksum")


def test_destination_and_options_checked(tmp_path, Image):
    write_images(Image, tmp_path / "src", per_class=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="exists already"):
        pack(tmp_path / "src", tmp_path / "full", image_size=8)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="on_error"):
        pack(tmp_path / "src", tmp_path / "p", image_size=8, on_error="ignore")
    with pytest.raises(ValueError, match="image_size"):
        pack(tmp_path / "src", tmp_path / "p", image_size=None)
    (tmp_path / "empty").mkdir()  # an empty folder may be the destination
    assert pack(tmp_path / "src", tmp_path / "empty", image_size=8, workers=1).counts == {"train": 2}


def test_clnet_pack_then_clnet_train(tmp_path, Image):
    write_images(Image, tmp_path / "src" / "train", per_class=6)
    write_images(Image, tmp_path / "src" / "test", per_class=2)
    (tmp_path / "src" / "train" / "cat" / "broken.png").write_bytes(b"no image")
    result = CliRunner().invoke(
        pack_command, [str(tmp_path / "src"), str(tmp_path / "packed"), "--image-size", "8", "--workers", "2"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "Packed 12 train, 4 test images of 8x8" in result.output
    assert "Skipped 1 unreadable images" in result.stderr and "broken.png" in result.stderr
    result = CliRunner().invoke(train_command, ["--device", "0", "--dataset", str(tmp_path / "packed"),
                                                "--model", "mlp", "--epochs", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "12 training images of (3, 8, 8)" in result.output and "Test accuracy" in result.output


def test_fit_on_a_pack_takes_batches_from_the_memmap(tmp_path, Image, device, monkeypatch):
    write_images(Image, tmp_path / "src", per_class=10)
    pack(tmp_path / "src", tmp_path / "packed", image_size=8, workers=1)
    train, _ = load(tmp_path / "packed")
    seen, staged, uploaded = [], [], []
    fit, feed_init, train_batch = Trainer.fit, feed_module.DeviceDataset.__init__, Runner.train
    monkeypatch.setattr(Trainer, "fit", lambda self, x, *a, **k: seen.append(x) or fit(self, x, *a, **k))
    monkeypatch.setattr(feed_module.DeviceDataset, "__init__",
                        lambda self, dev, x, t: uploaded.append(len(x)) or feed_init(self, dev, x, t))
    monkeypatch.setattr(Runner, "train", lambda self, x, t: staged.append(len(x)) or train_batch(self, x, t))

    def model():
        m = clnet.Sequential([L.Flatten(), L.Dense(192, 2)], device=device, seed=3)
        m.compile(loss="cross_entropy", optimizer=clnet.optim.SGD(0.01))
        return m

    def run(m, data, resident):
        return m.fit(data, epochs=2, batch_size=4, validation_split=0.25, resident=resident, verbose=0).history

    history = run(model(), train, False)
    assert uploaded == [] and staged == [4] * 8 and memory_mapped(seen[-1])
    in_memory = clnet.datasets.Dataset(np.array(train.x), train.y, train.classes)  # the same set, copied
    assert run(model(), in_memory, False) == history  # held-out rows by index: the same fit
    assert run(model(), in_memory, True) == history and uploaded == [20]  # on the device: rows by index too

    m, uploaded[:] = model(), []
    run(m, train, False)  # compiles the step; then a device with room for it but not for the dataset:
    step = next(runner for target, runner in m._runners.items() if target.training)
    in_use = step.plan.arena_bytes + 4 * m.param_store.params.nbytes
    small = dataclasses.replace(device.info, global_mem=int((in_use + train.x.nbytes // 2) / 0.8))
    monkeypatch.setattr(device, "info", small)
    staged[:] = []
    run(m, train, "auto")
    assert uploaded == [] and staged == [4] * 8 and memory_mapped(seen[-1])
