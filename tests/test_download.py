"""clnet.datasets.registry: finding, downloading (from a local HTTP server only) and loading datasets.

Every download here goes to an http.server on 127.0.0.1 started by the test; a guard makes any
request to another address fail the test. The datasets are tiny fakes written by the tests, with
the registry's expected sizes and SHA-256 patched to theirs.
"""

import dataclasses
import gzip
import hashlib
import http.server
import io
import logging
import os
import pickle
import socket
import sys
import tarfile
import threading
import time
import types
import urllib.parse
import urllib.request

import numpy as np
import pytest

from clnet.datasets import download, registry
from clnet.datasets.dataset import Dataset
from clnet.errors import DatasetError

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------ fake files


def idx_bytes(array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def fake_idx(n_train=6, n_test=4, seed=0, h=4, w=5):
    """{file name: gzipped bytes} for the four IDX files of a tiny dataset."""
    rng = np.random.default_rng(seed)
    raw = {"train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_train, h, w))),
           "train-labels-idx1-ubyte": idx_bytes(np.arange(n_train) % 10),
           "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, h, w))),
           "t10k-labels-idx1-ubyte": idx_bytes(np.arange(n_test) % 10)}
    return {name + ".gz": gzip.compress(data, mtime=0) for name, data in raw.items()}


def write_files(folder, files, gunzip=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gunzip and name.endswith(".gz"):
            (folder / name[:-3]).write_bytes(gzip.decompress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def cifar10_archive(n_per_batch=3):
    """A tiny python-version CIFAR-10 archive, laid out as the real one."""
    rng = np.random.default_rng(1)
    members = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        members[name] = {"data": rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, n_per_batch)]}
    members["batches.meta"] = {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                               "dog", "frog", "horse", "ship", "truck"]}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, content in members.items():
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def remote(files, base):
    return tuple(registry.RemoteFile(name, f"{base}/{name}", len(data), hashlib.sha256(data).hexdigest())
                 for name, data in files.items())


# ------------------------------------------------------------------ the local server


class Server:
    """http.server on 127.0.0.1 in a daemon thread, serving `files` (URL path -> bytes).

    Range requests ("bytes=N-") get the rest of the file as 206 Partial Content, or 416 beyond its
    end (or the whole file as 200 when `ranges` is False). Paths in `truncate` announce the length
    of what they send but send half and close; paths in `no_length` are sent without a
    Content-Length (until the connection closes); `fail[path]` answers that many next requests
    with 503; `stall[path]` leaves that many next requests unanswered for a second; `cut[path]` cuts
    that many next responses after `cut_at` bytes. Every request's path
    is recorded in `requests`, its Range header (or None) in `ranges_asked`."""

    def __init__(self):
        self.files, self.truncate, self.no_length, self.requests = {}, set(), set(), []
        self.fail, self.cut, self.cut_at, self.ranges, self.ranges_asked = {}, {}, 100, True, []
        self.stall = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 5  # a stuck connection ends by itself

            def do_GET(self):
                owner.requests.append(self.path)
                asked = self.headers.get("Range")
                owner.ranges_asked.append(asked)
                data = owner.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if owner.fail.get(self.path):
                    owner.fail[self.path] -= 1
                    self.send_error(503)
                    return
                if owner.stall.get(self.path):
                    owner.stall[self.path] -= 1
                    time.sleep(1.0)  # longer than the test's timeout: the client has given up
                    self.close_connection = True
                    return
                start = int(asked[len("bytes="):-1]) if asked and owner.ranges else 0
                if start >= len(data) > 0:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                data = data[start:]
                if self.path not in owner.no_length:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                sent = data
                if self.path in owner.truncate:
                    sent = data[:len(data) // 2]
                elif owner.cut.get(self.path):
                    owner.cut[self.path] -= 1
                    sent = data[:owner.cut_at]
                self.wfile.write(sent)
                if sent is not data:
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def serve(self, prefix, files):
        for name, data in files.items():
            self.files[f"{prefix}/{name}"] = data

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.stop()


@pytest.fixture
def refused_url():
    """A URL on 127.0.0.1 where nothing listens (the port stays bound, so nothing else takes it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Any request to an address other than 127.0.0.1 fails the test; a private cache; no mirror."""
    real = urllib.request.urlopen

    def guarded(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        host = urllib.parse.urlsplit(url).hostname
        assert host == "127.0.0.1", f"the test tried to reach {url}"
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    monkeypatch.delenv(registry.MIRROR_ENV, raising=False)
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """data, cache ($CLNET_DATA_DIR) and system folders under tmp_path."""
    d = types.SimpleNamespace(data=tmp_path / "data", cache=tmp_path / "cache", system=tmp_path / "system")
    monkeypatch.setenv(registry.CACHE_ENV, str(d.cache))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", [d.system])
    return d


@pytest.fixture
def fake_mnist(monkeypatch, server):
    """The registry's "mnist" made tiny: its files are served by the local server, sizes and SHA-256 theirs."""
    files = fake_idx()
    server.serve("/mnist", files)
    monkeypatch.setitem(registry.DATASETS, "mnist",
                        dataclasses.replace(registry.DATASETS["mnist"], files=remote(files, server.url + "/mnist")))
    return files


def cache_contents(dirs):
    return sorted(p.name for p in dirs.cache.rglob("*")) if dirs.cache.exists() else []


def finished(dirs):
    """The cache's contents but the bytes kept for a download to resume."""
    return [name for name in cache_contents(dirs) if not name.endswith(".partial")]


# ------------------------------------------------------------------ downloads


def test_download_is_verified_then_cached(dirs, server, fake_mnist):
    train, test = registry.load("mnist")
    assert sorted(server.requests) == sorted(f"/mnist/{n}" for n in IDX_NAMES)
    assert cache_contents(dirs) == sorted(["mnist", *IDX_NAMES])  # no temporary file left
    for name, data in fake_mnist.items():
        assert (dirs.cache / "mnist" / name).read_bytes() == data
    assert (len(train), len(test)) == (6, 4) and train.x.shape == (6, 1, 4, 5)
    assert train.classes == list("0123456789")

    again, _ = registry.load("mnist")  # from the cache: no request
    assert len(server.requests) == 4
    np.testing.assert_array_equal(again.x, train.x)


def test_only_missing_files_are_downloaded(dirs, server, fake_mnist, caplog):
    write_files(dirs.cache / "mnist", {n: fake_mnist[n] for n in IDX_NAMES[:2]})
    with caplog.at_level(logging.INFO, logger="clnet"):
        assert registry.fetch("mnist") == dirs.cache / "mnist"
    assert sorted(server.requests) == sorted(f"/mnist/{n}" for n in IDX_NAMES[2:])
    said = [r.getMessage() for r in caplog.records if r.name == "clnet.datasets.download"]  # a diagnostic each
    assert [m.split()[0] for m in said] == ["Downloading"] * 2 and IDX_NAMES[2] in said[0]


@pytest.mark.parametrize("damage", ["flipped byte", "longer", "shorter"])
def test_wrong_bytes_are_rejected_and_nothing_is_kept(dirs, server, fake_mnist, damage):
    path = f"/mnist/{IDX_NAMES[0]}"
    data = server.files[path]
    server.files[path] = {"flipped byte": data[:-1] + bytes([data[-1] ^ 1]),
                          "longer": data + b"x", "shorter": data[:-3]}[damage]
    with pytest.raises(DatasetError) as info:
        registry.fetch("mnist")
    message = str(info.value)
    expected = {"flipped byte": "SHA-256", "longer": "offers", "shorter": "offers"}[damage]
    assert expected in message and server.url + path in message and "nothing of it was kept" in message
    assert IDX_NAMES[0] not in cache_contents(dirs)
    assert not any(name.endswith(".part") for name in cache_contents(dirs))


@pytest.mark.parametrize("damage", ["flipped byte", "longer", "shorter"])
def test_wrong_bytes_without_content_length_are_rejected(dirs, server, fake_mnist, damage):
    path = f"/mnist/{IDX_NAMES[0]}"
    data = server.files[path]
    server.files[path] = {"flipped byte": data[:-1] + bytes([data[-1] ^ 1]),
                          "longer": data + b"x" * 100_000, "shorter": data[:-3]}[damage]
    server.no_length.add(path)
    expected = {"flipped byte": "SHA-256", "longer": "more than the expected", "shorter": "cut short"}[damage]
    with pytest.raises(DatasetError, match=expected):
        registry.fetch("mnist")
    # too short is indistinguishable from a cut connection: those bytes are kept to resume
    assert (finished(dirs) if damage == "shorter" else cache_contents(dirs)) in ([], ["mnist"])


def test_transient_failures_are_retried_after_growing_waits(dirs, server, fake_mnist, monkeypatch):
    waits = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    monkeypatch.setattr(download, "BACKOFF_S", 0.5)
    path = f"/mnist/{IDX_NAMES[0]}"
    server.fail[path] = 3
    registry.fetch("mnist")
    assert server.requests.count(path) == 4 and waits == [0.5, 1.0, 2.0]
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]]


def test_a_server_that_does_not_answer_in_time_is_asked_again(dirs, server, fake_mnist, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    path = f"/mnist/{IDX_NAMES[0]}"
    server.stall[path] = 1
    registry.fetch("mnist")
    assert server.requests.count(path) == 2
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]]


def test_a_cut_transfer_resumes_where_it_stopped(dirs, server, fake_mnist):
    path = f"/mnist/{IDX_NAMES[0]}"
    server.cut[path], server.cut_at = 2, 40
    registry.fetch("mnist")
    asked = [r for p, r in zip(server.requests, server.ranges_asked) if p == path]
    assert asked == [None, "bytes=40-", "bytes=80-"]
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]]
    assert finished(dirs) == cache_contents(dirs)


def test_a_server_without_ranges_sends_the_file_again(dirs, server, fake_mnist):
    path = f"/mnist/{IDX_NAMES[0]}"
    server.cut[path], server.ranges = 1, False
    registry.fetch("mnist")
    assert [r for p, r in zip(server.requests, server.ranges_asked) if p == path] == [None, f"bytes={server.cut_at}-"]
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]]


def test_attempts_are_bounded_and_their_bytes_kept_for_the_next_fetch(dirs, server, fake_mnist):
    path = f"/mnist/{IDX_NAMES[0]}"
    server.truncate.add(path)
    with pytest.raises(DatasetError, match=r"after 5 attempts.*cut short.*bytes received are kept in .*\.partial"):
        registry.fetch("mnist")
    assert server.requests.count(path) == 1 + download.RETRIES
    partial = dirs.cache / "mnist" / f".{IDX_NAMES[0]}.partial"
    kept = partial.read_bytes()
    assert fake_mnist[IDX_NAMES[0]].startswith(kept) and finished(dirs) in ([], ["mnist"])
    server.truncate.clear()
    registry.fetch("mnist")
    asked = [r for p, r in zip(server.requests, server.ranges_asked) if p == path]
    assert asked[-1] == f"bytes={len(kept)}-" and len(asked) == 2 + download.RETRIES and not partial.exists()
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]]


def test_kept_bytes_of_another_file_are_replaced_by_a_fresh_download(dirs, server, fake_mnist):
    partial = touch(dirs.cache / "mnist" / f".{IDX_NAMES[0]}.partial", b"not the start of the file")
    registry.fetch("mnist")
    path = f"/mnist/{IDX_NAMES[0]}"
    assert [r for p, r in zip(server.requests, server.ranges_asked) if p == path] == ["bytes=25-", None]
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]] and not partial.exists()


@pytest.mark.parametrize("kept", ["part", "whole"])
def test_a_resumed_download_checks_the_kept_bytes(dirs, server, fake_mnist, kept, caplog):
    """Kept bytes of the right length with one byte wrong (the file's start, or all of it) fail the
    resumed download's checksum, hashed as the bytes are kept and then received; it starts afresh."""
    data = fake_mnist[IDX_NAMES[0]]
    damaged = bytearray(data[:40] if kept == "part" else data)
    damaged[3] ^= 0xFF
    partial = touch(dirs.cache / "mnist" / f".{IDX_NAMES[0]}.partial", bytes(damaged))
    with caplog.at_level("WARNING", logger="clnet"):
        registry.fetch("mnist")
    assert "its SHA-256 is" in caplog.text and "the file is corrupt or not the one expected" in caplog.text
    path = f"/mnist/{IDX_NAMES[0]}"
    asked = [r for p, r in zip(server.requests, server.ranges_asked) if p == path]
    assert asked == (["bytes=40-", None] if kept == "part" else [None])  # the whole file kept: nothing to ask
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == data and not partial.exists()


def test_kept_bytes_that_are_not_a_regular_file_are_left_alone(dirs, server, fake_mnist, tmp_path):
    (dirs.cache / "mnist").mkdir(parents=True, exist_ok=True)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"someone else's file")
    partial = dirs.cache / "mnist" / f".{IDX_NAMES[0]}.partial"
    os.symlink(target, partial)  # a download resumed into it would write through the link
    os.mkfifo(dirs.cache / "mnist" / f".{IDX_NAMES[1]}.partial")  # would block the download opening it
    registry.fetch("mnist")
    assert [r for p, r in zip(server.requests, server.ranges_asked) if p == f"/mnist/{IDX_NAMES[0]}"] == [None]
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]]
    assert target.read_bytes() == b"someone else's file" and partial.is_symlink()


def test_permanent_failures_are_not_retried(dirs, server, fake_mnist):
    path = f"/mnist/{IDX_NAMES[0]}"
    data = server.files[path]
    server.files[path] = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(DatasetError, match="SHA-256.*nothing of it was kept"):
        registry.fetch("mnist")
    assert server.requests.count(path) == 1


def test_http_404_is_a_clear_error(dirs, server, fake_mnist):
    del server.files[f"/mnist/{IDX_NAMES[0]}"]
    with pytest.raises(DatasetError, match="HTTP 404") as info:
        registry.load("mnist")
    assert "mnist is not on this machine" in str(info.value)
    assert server.requests.count(f"/mnist/{IDX_NAMES[0]}") == 1  # not retried
    assert cache_contents(dirs) in ([], ["mnist"])


def test_connection_refused_is_a_clear_error(dirs, server, fake_mnist, refused_url, monkeypatch):
    monkeypatch.setenv(registry.MIRROR_ENV, refused_url + "/{name}")
    with pytest.raises(DatasetError, match="cannot connect") as info:
        registry.load("mnist")
    message = str(info.value)
    assert f"{refused_url}/mnist/{IDX_NAMES[0]}" in message  # the URL tried, with the mirror
    assert str(dirs.cache / "mnist") in message
    assert server.requests == [] and cache_contents(dirs) in ([], ["mnist"])


def test_an_interrupted_download_keeps_its_bytes_to_resume(dirs, server, fake_mnist, monkeypatch):
    def interrupt(self, done, text=None):
        raise KeyboardInterrupt
    update = download.ProgressBar.update
    monkeypatch.setattr(download.ProgressBar, "update", interrupt)
    monkeypatch.setattr(download, "CHUNK", 50)  # interrupted after the first 50 bytes
    with pytest.raises(KeyboardInterrupt):
        registry.fetch("mnist")
    assert finished(dirs) in ([], ["mnist"])
    kept = (dirs.cache / "mnist" / f".{IDX_NAMES[0]}.partial").read_bytes()
    assert kept and fake_mnist[IDX_NAMES[0]].startswith(kept)
    monkeypatch.setattr(download.ProgressBar, "update", update)
    registry.fetch("mnist")
    assert f"bytes={len(kept)}-" in server.ranges_asked
    assert (dirs.cache / "mnist" / IDX_NAMES[0]).read_bytes() == fake_mnist[IDX_NAMES[0]]


def test_stale_temporary_files_of_killed_downloads_are_swept(dirs, server, fake_mnist):
    stale = touch(dirs.cache / "mnist" / f".{IDX_NAMES[0]}.dead.part", b"half")
    fresh = touch(dirs.cache / "mnist" / f".{IDX_NAMES[0]}.running.part", b"half")
    os.utime(stale, (1e9, 1e9))  # untouched for years
    registry.fetch("mnist")
    assert not stale.exists() and fresh.exists()


def test_mirror_replaces_the_urls_folder(dirs, server, monkeypatch):
    files = fake_idx(seed=3)
    server.serve("/elsewhere/mnist", files)
    monkeypatch.setitem(registry.DATASETS, "mnist", dataclasses.replace(
        registry.DATASETS["mnist"], files=remote(files, "http://127.0.0.1:9/not-used")))
    monkeypatch.setenv(registry.MIRROR_ENV, server.url + "/elsewhere/{name}/")
    registry.fetch("mnist")
    assert sorted(server.requests) == sorted(f"/elsewhere/mnist/{n}" for n in IDX_NAMES)
    # the argument beats the environment
    assert registry._url(registry.DATASETS["mnist"], registry.DATASETS["mnist"].files[0], "http://127.0.0.1:1") \
        == f"http://127.0.0.1:1/{IDX_NAMES[0]}"


def test_offline_message_names_files_urls_and_folders(dirs, server, fake_mnist):
    with pytest.raises(DatasetError) as info:
        registry.load("mnist", data_dir=dirs.data, download=False)
    message = str(info.value)
    for f in registry.DATASETS["mnist"].files:
        assert f.name in message and f.url in message
    for folder in (dirs.data / "mnist", dirs.cache / "mnist", dirs.system / "mnist"):
        assert str(folder) in message
    assert "download is off" in message and server.requests == []


def test_offline_message_for_the_real_registry(dirs):
    with pytest.raises(DatasetError) as info:
        registry.load("cifar10", download=False)
    message = str(info.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "cifar-10-batches-py" in message and "--data-dir" in message


def test_unwritable_cache_is_a_clear_error(tmp_path, server, fake_mnist, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(registry.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", [])
    with pytest.raises(DatasetError, match=registry.CACHE_ENV):
        registry.fetch("mnist")


# ------------------------------------------------------------------ lookup order


def test_lookup_order_data_dir_then_cache_then_system(dirs, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("no download expected")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    write_files(dirs.system / "mnist", fake_idx(n_train=7, seed=1))
    write_files(dirs.cache / "mnist", fake_idx(n_train=8, seed=2), gunzip=True)  # un-gzipped names count
    write_files(dirs.data / "mnist", fake_idx(n_train=9, seed=3))

    assert registry.locate("mnist", data_dir=dirs.data) == dirs.data / "mnist"
    assert len(registry.load("mnist", data_dir=dirs.data)[0]) == 9
    assert len(registry.load("mnist")[0]) == 8  # no data_dir: the cache
    (dirs.data / "mnist" / IDX_NAMES[3]).unlink()  # 3 of 4 files do not count
    assert len(registry.load("mnist", data_dir=dirs.data)[0]) == 8
    for f in (dirs.cache / "mnist").iterdir():
        f.unlink()
    assert registry.locate("mnist", data_dir=dirs.data) == dirs.system / "mnist"
    assert len(registry.load("mnist", data_dir=dirs.data)[0]) == 7
    assert registry.search_dirs("MNIST", dirs.data) == [dirs.data / "mnist", dirs.cache / "mnist",
                                                        dirs.system / "mnist"]


def test_data_dir_may_be_the_datasets_own_folder(dirs):
    folder = write_files(dirs.data / "fashion_mnist", fake_idx(n_train=5))
    assert registry.locate("fashion-mnist", data_dir=folder) == folder
    train, _ = registry.load("Fashion-MNIST", data_dir=folder, download=False)
    assert len(train) == 5 and train.classes[0] == "T-shirt/top"


def test_files_on_disk_are_used_as_they_are(dirs, monkeypatch):
    """Re-gzipped copies (other bytes than the download, as Debian ships) load without any network."""
    def no_network(*args, **kwargs):
        raise AssertionError("no download expected")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    regzipped = {n: gzip.compress(gzip.decompress(d), compresslevel=1, mtime=1) for n, d in fake_idx().items()}
    write_files(dirs.system / "fashion-mnist", regzipped)
    train, test = registry.load("fashion-mnist")
    assert (len(train), len(test)) == (6, 4) and test.name == "fashion-mnist/test"


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_found_in_its_system_location(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("no download expected")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", [registry.Path("/usr/share/datasets")])
    train, test = registry.load("fashion-mnist", download=False)
    assert train.x.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert np.bincount(test.y).tolist() == [1000] * 10 and train.classes[9] == "Ankle boot"


def test_labels_beyond_the_known_classes_are_refused(dirs):
    files = fake_idx()
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.array([0, 1, 2, 12])))
    write_files(dirs.system / "kmnist", files)
    with pytest.raises(DatasetError, match="not kmnist's files"):
        registry.load("kmnist")


# ------------------------------------------------------------------ load: names and paths


def test_mnist_5k_is_bundled():
    train, test = registry.load("mnist-5k", download=False)
    assert train.x.shape == (4000, 1, 28, 28) and train.x.dtype == np.uint8 and train.x.max() == 255
    assert len(test) == 1000 and train.classes == list("0123456789")
    assert registry.known("MNIST_5k") is registry.DATASETS["mnist-5k"]


def test_argument_errors():
    with pytest.raises(DatasetError, match="applies to cifar100 only"):
        registry.load("mnist-5k", label_mode="coarse")
    with pytest.raises(DatasetError, match="'fine' or 'coarse'"):
        registry.load("mnist-5k", label_mode="medium")
    with pytest.raises(DatasetError, match="28x28, not 32x32"):
        registry.load("mnist-5k", image_size=32)
    registry.load("mnist-5k", image_size=(28, 28))
    with pytest.raises(DatasetError, match="did you mean 'mnist'"):
        registry.load("mnsit")
    with pytest.raises(DatasetError, match="unknown dataset"):
        registry.fetch("imagenet")


class StandIns:
    """Stand-in reader modules that record how they were called."""

    def __init__(self, monkeypatch):
        self.calls = []
        tiny = lambda name: Dataset(np.zeros((2, 1, 3, 3), np.uint8), np.array([0, 1]), ["a", "b"], name or "x")

        def load_idx_pair(images, labels, name=None):
            self.calls.append(("idx", images.name, labels.name))
            return tiny(name)

        def load_cifar(path, variant, split, name=None, label_mode="fine"):
            self.calls.append(("cifar", path.name, variant, split, label_mode))
            return tiny(name)

        def load_arrays(path, name=None):
            self.calls.append(("arrays", path.name))
            return tiny(name), None

        def image_folder(root, image_size=None, grayscale=None, name=None, **streaming):
            self.calls.append(("folder", root.name, image_size))
            return tiny(name)

        for module, attrs in {"idx": {"load_idx_pair": load_idx_pair}, "cifar": {"load_cifar": load_cifar},
                              "arrays": {"load_arrays": load_arrays}, "folder": {"ImageFolder": image_folder}}.items():
            monkeypatch.setitem(sys.modules, f"clnet.datasets.{module}",
                                types.SimpleNamespace(__name__=f"clnet.datasets.{module}", **attrs))


def touch(path, data=b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make(tmp_path, layout):
    """Build one on-disk layout under tmp_path; return the path to load."""
    root = tmp_path / "in"
    if layout == "npz":
        return touch(root / "data.npz")
    if layout == "npy":
        return touch(root / "x.NPY")
    if layout == "npy folder":
        touch(root / "x.npy"), touch(root / "y.npy")
        return root
    if layout in ("cifar10 archive", "cifar100 archive"):
        return touch(root / ("cifar-10-python.tar.gz" if layout == "cifar10 archive" else "cifar-100-python.tar.gz"))
    if layout == "renamed cifar10 archive":
        return touch(root / "mine.tar.gz", cifar10_archive())
    if layout == "unpacked cifar10":
        for name in ("data_batch_1", "test_batch", "batches.meta"):
            touch(root / "cifar-10-batches-py" / name)
        return root / "cifar-10-batches-py"
    if layout == "folder holding cifar100":
        (root / "cifar-100-python").mkdir(parents=True)
        return root
    if layout in ("idx", "idx unpacked", "idx train only"):
        files = fake_idx()
        if layout == "idx train only":
            files = {n: d for n, d in files.items() if n.startswith("train")}
        return write_files(root, files, gunzip=layout == "idx unpacked")
    if layout == "image folder":
        touch(root / "cat" / "1.png"), touch(root / "dog" / "1.png")
        return root
    if layout == "train and test folders":
        touch(root / "train" / "cat" / "1.png"), touch(root / "test" / "cat" / "1.png")
        return root
    if layout == "train folder alone":  # as the CIFAR-10 JPEG folders: cifar10-jpg/train/<class>/
        touch(root / "train" / "cat" / "1.png")
        return root
    if layout == "a class named train":
        touch(root / "train" / "1.png"), touch(root / "bus" / "1.png")
        return root
    raise AssertionError(layout)


DISPATCH = {
    "npz": [("arrays", "data.npz")],
    "npy": [("arrays", "x.NPY")],
    "npy folder": [("arrays", "in")],
    "cifar10 archive": [("cifar", "cifar-10-python.tar.gz", "cifar10", s, "fine") for s in ("train", "test")],
    "cifar100 archive": [("cifar", "cifar-100-python.tar.gz", "cifar100", s, "fine") for s in ("train", "test")],
    "renamed cifar10 archive": [("cifar", "mine.tar.gz", "cifar10", s, "fine") for s in ("train", "test")],
    "unpacked cifar10": [("cifar", "cifar-10-batches-py", "cifar10", s, "fine") for s in ("train", "test")],
    "folder holding cifar100": [("cifar", "cifar-100-python", "cifar100", s, "fine") for s in ("train", "test")],
    "idx": [("idx", IDX_NAMES[0], IDX_NAMES[1]), ("idx", IDX_NAMES[2], IDX_NAMES[3])],
    "idx unpacked": [("idx", IDX_NAMES[0][:-3], IDX_NAMES[1][:-3]), ("idx", IDX_NAMES[2][:-3], IDX_NAMES[3][:-3])],
    "idx train only": [("idx", IDX_NAMES[0], IDX_NAMES[1])],
    "image folder": [("folder", "in", None)],
    "train and test folders": [("folder", "train", None), ("folder", "test", None)],
    "train folder alone": [("folder", "train", None)],
    "a class named train": [("folder", "in", None)],
}


@pytest.mark.parametrize("layout", list(DISPATCH))
def test_paths_are_dispatched_to_the_right_reader(tmp_path, monkeypatch, layout):
    readers = StandIns(monkeypatch)
    path = make(tmp_path, layout)
    train, test = registry.load(path)
    assert readers.calls == DISPATCH[layout]
    assert (test is None) == (len(DISPATCH[layout]) == 1)
    readers.calls.clear()
    registry.load(str(path))  # a string with a separator is a path too
    assert readers.calls == DISPATCH[layout]


def test_known_names_are_dispatched_to_the_right_reader(dirs, monkeypatch):
    readers = StandIns(monkeypatch)
    touch(dirs.system / "cifar100" / "cifar-100-python.tar.gz")
    registry.load("cifar100", label_mode="coarse")
    assert readers.calls == [("cifar", "cifar-100-python.tar.gz", "cifar100", s, "coarse") for s in ("train", "test")]
    readers.calls.clear()
    (dirs.cache / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)  # unpacked counts as found
    registry.load("CIFAR-10", download=False)
    assert [c[1:3] for c in readers.calls] == [("cifar-10-batches-py", "cifar10")] * 2


def test_unknown_paths_say_what_is_understood(tmp_path, monkeypatch):
    StandIns(monkeypatch)
    (tmp_path / "empty").mkdir()
    for path in (touch(tmp_path / "notes.txt"), tmp_path / "empty", touch(tmp_path / "other.tar.gz", b"junk")):
        with pytest.raises(DatasetError, match="Understood: a known name") as info:
            registry.load(path)
        assert str(path) in str(info.value) and "x.npy" in str(info.value)
    with pytest.raises(DatasetError, match="no such file or folder"):
        registry.load(tmp_path / "absent")
    with pytest.raises(DatasetError, match="applies to CIFAR-100 only"):
        registry.load(make(tmp_path, "image folder"), label_mode="coarse")


# ------------------------------------------------------------------ with the real readers


def test_real_idx_reader_on_a_folder(tmp_path):
    pytest.importorskip("clnet.datasets.idx")
    folder = write_files(tmp_path / "kmnist", fake_idx(n_train=6, n_test=4))
    train, test = registry.load(folder)
    assert train.x.shape == (6, 1, 4, 5) and len(test) == 4
    assert train.classes[:2] == ["o", "ki"]  # a folder named after a known dataset gets its class names
    (folder / IDX_NAMES[2]).write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DatasetError):
        registry.load(folder)


def test_real_cifar_reader_on_an_archive(tmp_path):
    pytest.importorskip("clnet.datasets.cifar")
    archive = touch(tmp_path / "mine.tar.gz", cifar10_archive())
    train, test = registry.load(archive)
    assert train.x.shape == (15, 3, 32, 32) and len(test) == 3 and train.classes[0] == "airplane"
    with pytest.raises(DatasetError, match="applies to CIFAR-100 only"):
        registry.load(archive, label_mode="coarse")


def test_real_image_folder_train_test_with_a_missing_test_class(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pytest.importorskip("clnet.datasets.folder")
    for split, classes in (("train", ("ant", "bee", "cat")), ("test", ("bee", "cat"))):
        for i, cls in enumerate(classes):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((6, 7, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / "a.png")
    train, test = registry.load(tmp_path)
    assert train.classes == ["ant", "bee", "cat"] and test.classes == train.classes
    assert test.y.tolist() == [1, 2]  # renumbered to the training classes
    train, test = registry.load(tmp_path, image_size=(4, 4))
    assert train.x.shape[2:] == (4, 4) and test.x.shape[2:] == (4, 4)


def test_real_arrays_reader(tmp_path):
    pytest.importorskip("clnet.datasets.arrays")
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 2, 2), np.uint8), y=np.array([0, 1, 0]))
    train, _ = registry.load(tmp_path / "d.npz")
    assert len(train) == 3


# ------------------------------------------------------------------ the progress bar


def test_progress_bar_redraws_on_a_terminal_and_writes_a_line_to_a_pipe():
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    tty, pipe = Stream(True), Stream(False)
    for stream in (tty, pipe):
        bar = download.ProgressBar(2_000_000, "f.gz", stream, scaled=True)
        bar.update(1_000_000, download._rate(1_000_000, bar))
        bar.update(2_000_000, download._rate(2_000_000, bar))
        bar.close(keep=True)
    assert "\rf.gz 100%" in tty.getvalue() and "2.00M/2.00M" in tty.getvalue() and tty.getvalue().endswith("\n")
    assert pipe.getvalue().startswith("f.gz 100% 2.00M/2.00M [") and "MB/s]" in pipe.getvalue()
    assert "\r" not in pipe.getvalue() and pipe.getvalue().count("\n") == 1
