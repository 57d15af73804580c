"""Streamed image folders: transforms against references (numpy, torchvision's where installed), order
and augmentation independent of the workers, shards, training equal to the folder in memory, exact
resume mid-epoch, bounded memory, bad files under both policies, a killed worker, and the CLI."""

import os
import signal
import time
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet.datasets import ImageFolder, ImageStream, load
from clnet.datasets import stream as stream_module
from clnet.datasets import workers as workers_module
from clnet.datasets.transforms import (Transform, centre_crop_geometry, decode_into, random_resized_crop_box,
                                       sample_rng, transform_image)
from clnet.errors import DatasetError, InputError
from clnet.replicas import rank_part

Image = pytest.importorskip("PIL.Image")


def write_folder(root, per_class=6, classes=("a", "b", "c"), size=(20, 60), seed=0):
    """JPEG and PNG images of random sizes in class folders; returns the files in listing order."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(*size, 2)
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            image.save(root / c / f"{i:02d}.png") if i % 2 else image.save(root / c / f"{i:02d}.jpg", quality=90)
    return sorted(p for p in root.rglob("*.*"))


def take(stream, order, batch_size, **kwargs):
    """Every batch of a stream's run, copied: [(images, samples used)]."""
    return [(images.copy(), used.copy()) for images, used in stream.batches(order, batch_size, **kwargs)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream") / "images"
    write_folder(root)
    return root


# ---------------------------------------------------------------- transforms


def test_random_resized_crop_boxes_follow_torchvisions_rule():
    for sample in range(200):
        rng = sample_rng(3, 1, sample)
        top, left, h, w = random_resized_crop_box(rng, 375, 500)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.08 * 0.9 <= h * w / (375 * 500) <= 1.0 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # no try fits a 10 x 1000 strip: the centre crop clamped to the widest ratio
    assert random_resized_crop_box(sample_rng(0, 1, 0), 10, 1000) == (0, (1000 - 13) // 2, 10, 13)
    assert random_resized_crop_box(sample_rng(0, 1, 0), 1000, 10) == ((1000 - 13) // 2, 0, 13, 10)
    assert sample_rng(5, 2, 9).random() == sample_rng(5, 2, 9).random() != sample_rng(5, 2, 10).random()


def test_centre_crop_geometry():
    assert centre_crop_geometry(375, 500, (224, 224)) == ((256, 341), (16, 58))
    assert centre_crop_geometry(500, 375, (224, 224)) == ((341, 256), (58, 16))
    assert centre_crop_geometry(64, 64, (32, 32), 1.0) == ((32, 32), (0, 0))


def test_training_transform_equals_torchvisions_for_the_same_box():
    F = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (75, 100, 3), dtype=np.uint8))
    for sample in range(5):
        ours = transform_image(Image, image, Transform((24, 32), resized_crop=True), False, sample_rng(0, 1, sample))
        top, left, h, w = random_resized_crop_box(sample_rng(0, 1, sample), 75, 100)
        theirs = np.asarray(F.resized_crop(image, top, left, h, w, [24, 32], F.InterpolationMode.BILINEAR))
        np.testing.assert_array_equal(ours, theirs)


def test_flip_mirrors_with_probability_one_half():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    flipped = 0
    for sample in range(64):
        ours = transform_image(Image, image, Transform((16, 16), flip=True, crop_fraction=None), False,
                               sample_rng(0, 1, sample))
        mirrored = np.array_equal(ours, np.asarray(image)[:, ::-1])
        assert mirrored or np.array_equal(ours, np.asarray(image))
        flipped += mirrored
    assert 16 < flipped < 48


def test_evaluation_transform_against_torchvision():
    T = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(3)
    for h, w in ((75, 100), (100, 75), (40, 40)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1))
        ours = transform_image(Image, image, Transform((28, 28)), False).astype(int)
        theirs = np.asarray(T.CenterCrop(28)(T.Resize(32)(image))).astype(int)
        assert ours.shape == theirs.shape == (28, 28, 3)
        assert np.abs(ours - theirs).max() <= 2  # one resize of the crop's region instead of two steps


def test_large_jpegs_decode_at_a_reduced_scale_close_to_a_full_decode(tmp_path):
    """A 1200 x 900 photo-like JPEG to 28 x 28: the draft decode (1/8 or 1/4 of the DCT) gives
    within a few levels what the full decode and resize give, by evaluation's and training's
    transforms, with the same draws."""
    y, x = np.mgrid[0:900, 0:1200] / 60.0
    smooth = np.stack([np.sin(x) * 100 + 128, np.cos(y) * 100 + 128, np.sin(x + y) * 100 + 128], -1)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "big.jpg", quality=90)
    for transform in (Transform((28, 28)), Transform((28, 28), resized_crop=True, flip=True)):
        for sample in range(3):
            drafted = np.empty((3, 28, 28), np.uint8)
            decode_into(Image, tmp_path / "big.jpg", drafted, transform, sample_rng(0, 1, sample))
            with Image.open(tmp_path / "big.jpg") as image:
                image.load()
                full = transform_image(Image, image, transform, False, sample_rng(0, 1, sample)).transpose(2, 0, 1)
            assert np.abs(drafted.astype(int) - full).mean() < 3, transform


def test_every_mode_becomes_the_models_channels(tmp_path):
    """A uniform colour in grey, RGB, RGBA, palette and CMYK (JPEG, PNG) decodes to its RGB or its luma."""
    colour = (200, 100, 50)
    luma = (200 * 19595 + 100 * 38470 + 50 * 7471 + 0x8000) >> 16
    rgb = Image.new("RGB", (30, 20), colour)
    files = {"rgb.png": rgb, "rgba.png": rgb.convert("RGBA"), "p.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE),
             "cmyk.jpg": rgb.convert("CMYK"), "rgb.jpg": rgb, "grey.png": rgb.convert("L")}
    for name, image in files.items():
        image.save(tmp_path / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    for name in files:
        for channels in (1, 3):
            out = np.empty((channels, 8, 8), np.uint8)
            decode_into(Image, tmp_path / name, out, Transform((8, 8)))
            if name == "grey.png":
                expected = [luma] * channels
            else:
                expected = [luma] if channels == 1 else list(colour)
            assert np.abs(out.reshape(channels, -1).astype(int) - np.array(expected)[:, None]).max() <= 3, name


# ---------------------------------------------------------------- determinism


def test_order_and_augmentation_do_not_depend_on_the_workers(folder):
    order = np.random.default_rng(0).permutation(18)
    runs = []
    for workers in (0, 1, 2, 4):
        stream = ImageFolder(folder, image_size=12, stream=True, augment="random-resized-crop,flip", workers=workers)
        runs.append(take(stream, order, 4, seed=7, epoch=2, train=True))
        stream.close()
    for run in runs[1:]:
        for (images, used), (first_images, first_used) in zip(run, runs[0]):
            np.testing.assert_array_equal(used, first_used)
            np.testing.assert_array_equal(images, first_images)
    np.testing.assert_array_equal(np.concatenate([used for _, used in runs[0]]), order)
    other_epoch = take(stream, order, 4, seed=7, epoch=3, train=True)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(other_epoch, runs[0]))
    stream.close()


def test_spawned_workers_decode_into_named_shared_memory_alike(folder):
    """Workers started by spawn (not fork) attach the ring by name and decode the same batches."""
    from clnet.datasets.workers import DecodePool
    stream = ImageFolder(folder, image_size=12, stream=True, augment="random-resized-crop,flip", workers=0)
    order = np.random.default_rng(2).permutation(18)
    expected = take(stream, order, 8, seed=1, epoch=1, train=True)
    pool = DecodePool(stream_module._Job(stream.files, "skip"), stream.image_shape, 8, 1, start_method="spawn")
    cut = [order[i:i + 8] for i in range(0, 18, 8)]
    got = [(images.copy(), used) for images, used, _ in pool.run(cut, 1, 1, stream.transform(True))]
    pool.close()
    for (images, used), (want, want_used) in zip(got, expected):
        np.testing.assert_array_equal(used, want_used)
        np.testing.assert_array_equal(images, want)


def test_a_rank_streams_its_rows_of_each_global_batch(folder):
    """Three ranks' parts of every batch (3, 2, 3 of 8 rows, and 1, 0, 1 of the last batch's 2) are
    the rows of the whole batches, split as the runner splits them."""
    stream = ImageFolder(folder, image_size=12, stream=True, augment="random-resized-crop", workers=2)
    order = np.random.default_rng(1).permutation(18)
    whole = take(stream, order, 8, seed=1, epoch=1, train=True)
    parts = [take(stream, order, 8, seed=1, epoch=1, train=True, start=1,
                  part=partial(rank_part, world=SimpleNamespace(rank=rank, size=3))) for rank in range(3)]
    assert [[len(used) for _, used in batches] for batches in parts] == [[3, 1], [2, 0], [3, 1]]
    for k, (all_images, all_used) in enumerate(whole[1:]):
        np.testing.assert_array_equal(np.concatenate([batches[k][1] for batches in parts]), all_used)
        np.testing.assert_array_equal(np.concatenate([batches[k][0] for batches in parts]), all_images)
    with pytest.raises(InputError, match="part must give rows"):
        take(stream, order, 8, part=lambda n: (n - n, n + 1))
    stream.close()


def small_model(seed=0, replicas=1):
    device = clnet.device(platform="pocl")
    model = clnet.Sequential([L.Flatten(), L.Dense(3 * 12 * 12, 3)], device=[device] * replicas if replicas > 1
                             else device, seed=seed)
    return model.compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))


@pytest.mark.parametrize("replicas", [1, 2])
def test_training_on_a_stream_equals_training_on_the_folder_in_memory(folder, replicas):
    """Without augmentation and with crop_fraction=None, streamed batches are the in-memory images
    (also split among replicas)."""
    in_memory = ImageFolder(folder, image_size=12, stream=False)
    stream = ImageFolder(folder, image_size=12, stream=True, workers=2, crop_fraction=None)
    assert isinstance(in_memory, clnet.datasets.Dataset) and isinstance(stream, ImageStream)
    a, b = small_model(replicas=replicas), small_model(replicas=replicas)
    history_a = a.fit(in_memory, epochs=2, batch_size=4, validation_split=0.2, verbose=0, resident=False)
    history_b = b.fit(stream, epochs=2, batch_size=4, validation_split=0.2, verbose=0)
    assert history_a.history == history_b.history
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    np.testing.assert_array_equal(a.predict(in_memory), b.predict(stream))


class _StopAt(clnet.callbacks.Callback):
    """Ctrl-C after a given step of a given epoch."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_step_end(self, epoch, step):
        if (epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_streamed_run_resumes_mid_epoch_exactly(folder, tmp_path):
    def run(checkpoint=None, resume=False, callbacks=()):
        stream = ImageFolder(folder, image_size=12, stream=True, augment="random-resized-crop,flip", workers=2)
        model = small_model()
        history = model.fit(stream, epochs=2, batch_size=4, verbose=0, checkpoint=checkpoint, resume=resume,
                            callbacks=callbacks)
        return model, history

    straight, straight_history = run()
    checkpoint = tmp_path / "run.clnet"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, callbacks=[_StopAt(2, 1)])
    saved = clnet.load_checkpoint(checkpoint, clnet.device(platform="pocl"))
    assert (saved.epoch, saved.step) == (1, 2)
    resumed, history = run(checkpoint, resume=True)
    assert history.history == straight_history.history
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(value, resumed.state_dict()[key])


# ---------------------------------------------------------------- memory


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc")
def test_memory_stays_bounded_whatever_the_folders_size(tmp_path, monkeypatch):
    root = tmp_path / "big"
    rng = np.random.default_rng(4)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(60):
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(root / c / f"{i}.png",
                                                                                    compress_level=0)
    decoded = 120 * 3 * 96 * 96  # 3.3 MB
    monkeypatch.setenv("CLNET_MEMORY_LIMIT", str(decoded // 4))
    assert stream_module.memory_budget() == decoded // 4
    stream = ImageFolder(root, image_size=96, workers=2)  # "auto": more than the limit, so streamed
    assert isinstance(stream, ImageStream) and stream.crop_fraction is None  # resized as in memory
    monkeypatch.setenv("CLNET_MEMORY_LIMIT", "1G")
    assert isinstance(ImageFolder(root, image_size=8), clnet.datasets.Dataset)
    order = np.arange(120)
    for _ in stream.batches(order, 4):  # a first pass: workers started, pages touched
        pass
    before = rss_bytes()
    for epoch in range(3):
        for images, used in stream.batches(order, 4, epoch=epoch, train=True):
            assert images.shape == (4, 3, 96, 96)
    assert stream.ring_bytes <= decoded // 4
    assert rss_bytes() - before < decoded // 2
    stream.close()
    with pytest.raises(InputError, match="CLNET_MEMORY_LIMIT"):
        monkeypatch.setenv("CLNET_MEMORY_LIMIT", "lots")
        stream_module.memory_budget()


# ---------------------------------------------------------------- bad files


@pytest.fixture
def damaged(tmp_path):
    """A folder with a corrupt JPEG, a truncated PNG and a zero-byte file among good images."""
    root = tmp_path / "damaged"
    files = write_folder(root, per_class=4, classes=("a", "b"))
    jpeg = bytearray(files[0].read_bytes())
    jpeg[200:] = os.urandom(len(jpeg) - 200)
    files[0].write_bytes(bytes(jpeg))
    files[3].write_bytes(files[3].read_bytes()[:60])  # 03.png
    files[4].write_bytes(b"")
    return root, [str(files[i]) for i in (0, 3, 4)]


def test_bad_files_are_skipped_replaced_and_reported(damaged):
    root, bad = damaged
    stream = ImageFolder(root, image_size=12, stream=True, workers=2)
    order = np.arange(8)
    batches = take(stream, order, 4)
    used = np.concatenate([u for _, u in batches])
    assert sorted({path for path, _ in stream.skipped}) == sorted(bad)
    assert all(0 < len(reason) for _, reason in stream.skipped)
    # 0 (corrupt) -> 1; 3 (truncated) and 4 (empty) -> 5
    np.testing.assert_array_equal(used, [1, 1, 2, 5, 5, 5, 6, 7])
    np.testing.assert_array_equal(batches[0][0][0], batches[0][0][1])
    message = stream_module.skipped_report(stream.skipped)
    assert message.startswith("3 unreadable images skipped") and "\n" not in message
    stream.close()


def test_bad_files_are_reported_in_the_order_of_the_rows(damaged, monkeypatch):
    """The skipped files come in the order of the batch's rows, whichever worker answers first:
    here the (forked) worker of the first rows is the slower."""
    root, bad = damaged
    decode = workers_module.decode_into

    def first_file_slow(Image, path, *args):
        if path == bad[0]:
            time.sleep(0.5)
        return decode(Image, path, *args)
    monkeypatch.setattr(workers_module, "decode_into", first_file_slow)
    stream = ImageFolder(root, image_size=12, stream=True, workers=2)
    take(stream, np.arange(8), 4)
    assert [path for path, _ in stream.skipped] == bad
    stream.close()


def test_bad_files_reported_at_the_end_of_an_epoch(damaged, caplog):
    stream = ImageFolder(damaged[0], image_size=12, stream=True, workers=2)
    model = small_model()
    with caplog.at_level("WARNING", logger="clnet"):
        model.fit(stream, epochs=1, batch_size=4, shuffle=False, verbose=0)
        assert "Epoch 1: 3 unreadable images skipped" in caplog.text and damaged[1][0] in caplog.text
        model.evaluate(stream)
    assert f"{stream.name}: 3 unreadable images skipped" in caplog.text


def test_bad_files_stop_the_run_naming_the_file_under_raise(damaged):
    stream = ImageFolder(damaged[0], image_size=12, stream=True, workers=2, on_error="raise")
    with pytest.raises(DatasetError, match="unreadable or corrupt image") as excinfo:
        take(stream, np.arange(8), 4)
    assert str(excinfo.value).startswith(damaged[1][0]) and "\n" not in str(excinfo.value)
    stream.close()


def test_a_killed_worker_ends_the_run_with_a_clear_error(folder):
    stream = ImageFolder(folder, image_size=12, stream=True, workers=2)
    batches = stream.batches(np.arange(18), 2)
    next(batches)
    victim = stream._pools[2]._processes[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=5)  # dead before the batches left are asked for
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="worker .* died .*SIGKILL"):
        for _ in batches:
            pass
    assert time.perf_counter() - start < 10
    stream.close()


# ---------------------------------------------------------------- loading and the command line


def test_load_streams_train_and_val_folders(tmp_path):
    write_folder(tmp_path / "set" / "train", per_class=3)
    write_folder(tmp_path / "set" / "val", per_class=2, classes=("a", "c"), seed=1)
    train, val = load(tmp_path / "set", image_size=10, stream=True, workers=1, augment="flip")
    assert isinstance(train, ImageStream) and isinstance(val, ImageStream)
    assert (train.augment, val.augment) == ("flip", None)
    assert val.classes == train.classes and list(val.y) == [0, 0, 2, 2]
    assert train.image_shape == val.image_shape == (3, 10, 10)
    assert train.crop_fraction == val.crop_fraction == 0.875
    model = clnet.Sequential([L.Flatten(), L.Dense(300, 3)], device=clnet.device(platform="pocl"))
    model.compile("cross_entropy", "sgd")
    history = model.fit(train, validation_data=val, epochs=1, batch_size=4, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert model.predict(val).shape == (4, 3)


def test_random_resized_crop_needs_a_stream(folder):
    with pytest.raises(InputError, match="needs a streamed image folder"):
        small_model().fit(ImageFolder(folder, image_size=12, stream=False), augment="random-resized-crop",
                          verbose=0)


def test_input_wait_is_shown_when_it_matters():
    from clnet.callbacks.progress import input_wait
    assert input_wait(0.35, 1.0) == ["input wait 35%"]
    assert input_wait(0.35, 100.0) == []


def test_clnet_train_and_eval_stream(folder, tmp_path):
    from clnet.cli import evaluate, train
    model_file = str(tmp_path / "m.clnet")
    result = CliRunner().invoke(train, ["--platform", "pocl", "--dataset", str(folder), "--stream", "--workers", "2",
                                        "--image-size", "12x12", "--model", "mlp", "--epochs", "1", "--batch-size",
                                        "4", "--augment", "random-resized-crop,flip", "--normalize",
                                        "--save", model_file])
    assert result.exit_code == 0, result.output
    assert "Validation accuracy" in result.output and "18 training images of (3, 12, 12)" in result.output
    result = CliRunner().invoke(evaluate, [model_file, "--platform", "pocl", "--dataset", str(folder), "--stream",
                                           "--split", "train", "--json"])
    assert result.exit_code == 0, result.output
    assert '"samples": 18' in result.output
    run = tmp_path / "run"
    result = CliRunner().invoke(train, ["--platform", "pocl", "--dataset", str(folder), "--stream", "--workers", "1",
                                        "--image-size", "12x12", "--model", "mlp", "--epochs", "1",
                                        "--checkpoint-dir", str(run), "-q"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(train, ["--resume", str(run), "--workers", "2", "-q"])  # workers may change
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(train, ["--platform", "pocl", "--dataset", str(folder), "--no-stream",
                                        "--image-size", "12x12", "--model", "mlp", "--augment", "random-resized-crop"])
    assert result.exit_code == 1 and "needs a streamed image folder" in result.output
