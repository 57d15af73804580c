"""The tuning cache: kernel parameters that `clnet-tune` measured best on this machine's devices.

One JSON file, CLNET_TUNING_FILE or else `$XDG_CACHE_HOME/clnet/tuning.json` (`~/.cache/...`),
holds an entry per device, keyed by platform, device name and driver version. Each entry records
the hash of the kernel sources it was tuned with: after an upgrade of clnet changes the kernels,
the entry is stale and ignored until `clnet-tune` runs again. Within an entry, every tuned GEMM
case (kernel, operand layout, M x N x K) maps to its winning parameters. The GEMM launcher takes
the case of the same kernel and layout nearest in size (within a factor of two in every
dimension), else its built-in defaults. CLNET_TUNING=0 ignores the cache.
"""

import contextlib
import functools
import hashlib
import json
import math
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .files import replace_atomically
from .kernels import kernel_dir, program_source

log = logging.getLogger(__name__)

FORMAT = "clnet-tuning"
VERSION = 1
SOURCES = ("gemm_tiled.cl", "gemm_packed.cl", "sum_slices.cl")  # the files of the tuned kernels
NEAR = 2.0                    # how far, per dimension, a tuned case still speaks for a GEMM

_loaded = {}      # path -> ((mtime_ns, size), parsed file)
_recorders = []   # lists that `recording()` is filling


@dataclass(frozen=True)
class Case:
    """One GEMM to tune: its kernel, layout ("NN", "NT", "TN", "TT", with "+conv" or "+conv-dx" for
    the implicit convolutions) and size."""
    kernel: str
    layout: str
    m: int
    n: int
    k: int

    @property
    def key(self):
        return f"{self.kernel} {self.layout} {self.m}x{self.n}x{self.k}"

    @classmethod
    def from_key(cls, key):
        kernel, layout, size = key.split(" ")
        m, n, k = (int(v) for v in size.split("x"))
        return cls(kernel, layout, m, n, k)


def cache_path():
    explicit = os.environ.get("CLNET_TUNING_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clnet" / "tuning.json"


def device_key(device):
    info = device.info
    return f"{info.platform} | {info.name} | {info.driver}"


@functools.cache  # every GEMM a plan records looks it up; the installed sources do not change
def source_hash():
    """A short hash of the tuned kernels' whole sources (the headers they include with them):
    parameters tuned for other sources are stale."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(program_source(kernel_dir(), name).encode())
    return digest.hexdigest()[:16]


def load(path=None):
    """The parsed cache file ({} if there is none); a corrupt file is reported once and ignored
    (the next `clnet-tune` replaces it)."""
    path = Path(path or cache_path())
    try:
        stat = path.stat()
    except OSError:
        return {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    if path in _loaded and _loaded[path][0] == stamp:
        return _loaded[path][1]
    try:
        parsed = json.loads(path.read_text())
        if not (isinstance(parsed, dict) and parsed.get("format") == FORMAT and isinstance(parsed.get("devices"), dict)):
            raise ValueError("not a clnet tuning file")
    except (OSError, ValueError) as exc:
        log.warning("ignoring the tuning cache %s (%s); `clnet-tune` writes a new one", path, exc)
        parsed = {}
    _loaded[path] = (stamp, parsed)
    return parsed


def _entry(device, path=None):
    """This device's tuned cases, if tuned for the current kernel sources."""
    if os.environ.get("CLNET_TUNING", "1") == "0":
        return {}
    entry = load(path).get("devices", {}).get(device_key(device))
    if not isinstance(entry, dict) or entry.get("source") != source_hash():
        return {}
    cases = entry.get("cases")
    return cases if isinstance(cases, dict) else {}


def _distance(a, b):
    """log2 distance in every dimension, or None when the cases are not comparable."""
    if (a.kernel, a.layout) != (b.kernel, b.layout):
        return None
    ratios = [abs(math.log2(x / y)) for x, y in ((a.m, b.m), (a.n, b.n), (a.k, b.k))]
    return None if max(ratios) > math.log2(NEAR) else sum(ratios)


def lookup(device, case, path=None):
    """The tuned parameters (a dict) of the nearest comparable case, or None."""
    best, best_key, best_distance = None, None, None
    for key, result in _entry(device, path).items():
        try:
            distance = _distance(case, Case.from_key(key))
        except (ValueError, ZeroDivisionError):
            continue
        if distance is not None and (best_distance is None or distance < best_distance):
            best, best_key, best_distance = result, key, distance
    if not (isinstance(best, dict) and isinstance(best.get("params"), dict)):
        return None
    log.debug("Tuned parameters for %s from the tuning cache's %s", case.key, best_key)
    return dict(best["params"])


def store(device, results, path=None):
    """Merge `results` ({Case: {"params": ..., and what was measured}}) into the device's entry,
    written atomically; entries of other devices are kept, a stale entry of this one is replaced."""
    path = Path(path or cache_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load(path) or {"format": FORMAT, "version": VERSION, "devices": {}}
    entry = data["devices"].get(device_key(device))
    if not isinstance(entry, dict) or entry.get("source") != source_hash():
        entry = {"platform": device.info.platform, "device": device.info.name, "driver": device.info.driver,
                 "source": source_hash(), "cases": {}}
    entry["cases"].update({case.key: result for case, result in results.items()})
    data["devices"][device_key(device)] = entry
    text = json.dumps(data, indent=1, sort_keys=True).encode()
    replace_atomically(path, lambda f: f.write(text))
    _loaded.pop(path, None)
    return path


@contextlib.contextmanager
def recording():
    """Collects what the GEMM launcher is asked to launch while the block runs: a list of
    (Case, call) pairs, the call being what the tuner needs to launch the same GEMM again."""
    calls = []
    _recorders.append(calls)
    try:
        yield calls
    finally:
        _recorders.remove(calls)


def record(case, call):
    for calls in _recorders:
        calls.append((case, call))
