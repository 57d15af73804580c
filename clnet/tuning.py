"""Tuned kernel parameters: the per-machine cache that `clnet-tune` writes, and the tables that ship
with clnet for classes of devices.

The cache is one JSON file, CLNET_TUNING_FILE or else `tuning.json` in platformdirs' user cache
folder for clnet (`~/.cache/clnet` on Linux), with an entry per device keyed by platform, device
name and driver version. Each entry records the hash of the sources of the device's kernel family
(`SOURCES`) it was tuned with: after an upgrade of clnet changes those kernels, the entry is stale
and ignored until `clnet-tune` runs again; an edit to the other family's kernels leaves it current.
Within an entry, every tuned GEMM case (kernel, operand layout, M x N x K) maps to its winning
parameters. Writers merge their cases into the file under a file lock, so that two tuners
running at once lose nothing.

The shipped tables (`clnet/tuned/<class>.json`, one per device class: `device_class`) hold cases
in the same form, tuned by `clnet-tune --export-table` on one device of the class, with the hash of
the kernel sources they were tuned for: the table's, or a case's own where a table merges cases of
several (its "source"). A case made for other kernel sources is still used, after the current ones
and with a logged note: its parameters are only speed hints (every set is checked valid for the
kernel, and a test builds and checks each on the current kernels), and refusing them would make
every kernel edit cost the users their tuned defaults until someone re-tunes on each class of
hardware.

The GEMM launcher takes the case of the same kernel and layout nearest in size (within a factor
of two in every dimension) among the cache's and the device class's table's cases for the current
kernel sources (the cache's where as near), else the table's others, else its built-in defaults.
CLNET_TUNING=0 ignores both; CLNET_TUNING=cache ignores the shipped tables.

A table records the compute units of the device it was tuned on (`tuned_on`'s `compute_units`),
which other devices of its class need not share: `lookup` says where parameters came from and that
count, and the launcher rescales the parameters by which the defaults divide a product's work
among the compute units (`ops.gemm.GemmSpec.rebalance`). The cache's are this device's own, used
as they are.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .errors import ClnetError
from .files import readable_size, refuse_special, replace_atomically
from .kernels import kernel_dir, program_source

log = logging.getLogger(__name__)

FORMAT = "clnet-tuning"
TABLE_FORMAT = "clnet-tuned-table"
VERSION = 1
TABLES = Path(__file__).resolve().parent / "tuned"  # the shipped tables, <class>.json
LOCK_TIMEOUT = 60  # seconds to wait for another tuner's write to the cache
# The files of each kernel family's tuned kernels: an edit to one family's kernels leaves the
# other's tuned parameters current
SOURCES = {"tiled": ("gemm_tiled.cl", "sum_slices.cl"), "cpu": ("gemm_packed.cl", "sum_slices.cl")}
NEAR = 2.0                    # how far, per dimension, a tuned case still speaks for a GEMM

_loaded = {}      # path -> ((inode, mtime_ns, size), parsed file)
_recorders = []   # lists that `recording()` is filling


@dataclass(frozen=True)
class Tuned:
    """Tuned parameters as `lookup` finds them: `origin` says where (for the log), and `units` is the
    compute units of the device that a shipped table's were tuned on; None where they are taken as
    they are (the cache's, tuned on this very device, or a table that does not say)."""
    params: dict
    origin: str
    units: int | None = None


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
    """CLNET_TUNING_FILE, else tuning.json in platformdirs' user cache folder for clnet."""
    explicit = os.environ.get("CLNET_TUNING_FILE")
    if explicit:
        return Path(explicit)
    return Path(platformdirs.user_cache_dir("clnet")) / "tuning.json"


def device_key(device):
    return _info_key(device.info)


def _info_key(info):
    return f"{info.platform} | {info.name} | {info.driver}"


# NVIDIA GPUs by architecture, from their names (the first match counts)
NVIDIA_ARCHITECTURES = (
    ("nvidia-blackwell", r"\bG?B[12]\d\d\b|RTX (PRO )?50\d\d|RTX PRO \d+ Blackwell"),
    ("nvidia-hopper", r"\bG?H(100|200|800|20)\b"),
    ("nvidia-ada", r"RTX 40\d\d|\bL40|\bL4\b|RTX \d+ Ada"),
    ("nvidia-ampere", r"\bA(100|800|40|30|16|10|2)\b|RTX A\d+|RTX 30\d\d"))
# LLVM's names of x86 CPUs, which PoCL puts in its CPU device's name ("cpu-znver3-AMD EPYC 7B13",
# "pthread-skylake-avx512-..."), by the widest vector instructions they have
AVX512_CPUS = r"avx512|cascadelake|cooperlake|cannonlake|icelake|tigerlake|rocketlake|sapphirerapids|" \
              r"emeraldrapids|graniterapids|diamondrapids|znver[45]|\bknl\b|\bknm\b|x86-64-v4"
AVX2_CPUS = r"haswell|broadwell|skylake|kabylake|coffeelake|cometlake|alderlake|raptorlake|meteorlake|" \
            r"arrowlake|lunarlake|gracemont|sierraforest|grandridge|znver[123]|bdver4|x86-64-v3"
# CPU vendors by the brand string that PoCL (and other CPU runtimes) put in the device's name, and
# by /proc/cpuinfo's vendor_id where the name has none
CPU_VENDORS = (("intel", r"\bintel\b|\bxeon\b|\bcore\(tm\)"),
               ("amd", r"\bamd\b|\bepyc\b|\bryzen\b|\bthreadripper\b|\bopteron\b"))
HOST_CPU_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


@functools.cache
def device_class(info):
    """The class of a device whose shipped table of tuned parameters applies (`clnet/tuned/`), from
    its `DeviceInfo`:

    - a GPU under its vendor's own platform: "nvidia-hopper", "-ampere", "-ada", "-blackwell" by the
      name (else "nvidia-gpu"), "amd-gpu", "intel-gpu"; None under other platforms (PoCL's GPU
      drivers, Rusticl), whose compilers differ;
    - a CPU: "cpu-avx512" or "cpu-avx2" by the LLVM CPU in PoCL's device name, or where the name
      has none (another CPU runtime), by the host's /proc/cpuinfo flags (the device is the host's
      CPU); else "cpu"; then "-intel" or "-amd" by the brand in the name, else the host's vendor.
      The same instructions run at other rates on Intel's and AMD's cores (Zen 4 takes 512-bit
      operations in two halves), behind other caches: tuned on a 16-core Xeon and on a 2-core EPYC,
      both "skylake-avx512" to PoCL, the row blocks or K splits of 50 of the 57 cases differed.

    Example:
        >>> tuning.device_class(clnet.device("pocl").info)
        'cpu-avx2-intel'
    """
    vendor, name = f"{info.platform} {info.platform_vendor}".lower(), info.name
    if info.type == "CPU":
        isa = _cpu_isa(name.lower()) or _cpu_isa(_host_cpu("flags"))
        brand = _cpu_vendor(name) or HOST_CPU_VENDORS.get(_host_cpu("vendor_id").strip())
        return "-".join(part for part in ("cpu", isa, brand) if part)
    if info.type != "GPU":
        return None
    if "nvidia" in vendor:
        return next((cls for cls, pattern in NVIDIA_ARCHITECTURES if re.search(pattern, name)), "nvidia-gpu")
    if "advanced micro devices" in vendor or vendor.startswith("amd"):
        return "amd-gpu"
    if "intel" in vendor:
        return "intel-gpu"
    return None


def _cpu_isa(text):
    if re.search(AVX512_CPUS, text) or "avx512f" in text.split():
        return "avx512"
    if re.search(AVX2_CPUS, text) or "avx2" in text.split():
        return "avx2"
    return None


def _cpu_vendor(name):
    return next((vendor for vendor, pattern in CPU_VENDORS if re.search(pattern, name, re.IGNORECASE)), None)


def _host_cpu(field):
    """The value of the first `field` line of /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1] for line in f if line.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""


@functools.cache  # every GEMM a plan records looks it up; the installed sources do not change
def source_hash(family):
    """A short hash of the whole sources of a kernel family's tuned kernels (the headers they include
    with them): parameters tuned for other sources are stale."""
    digest = hashlib.sha256()
    for name in SOURCES[family]:
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
    stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # every atomic write is a new inode
    if path in _loaded and _loaded[path][0] == stamp:
        return _loaded[path][1]
    try:
        readable_size(path)  # a FIFO would block every plan's lookup, /dev/zero never end
        parsed = json.loads(path.read_text())
        if not (isinstance(parsed, dict) and parsed.get("format") == FORMAT and isinstance(parsed.get("devices"), dict)):
            raise ValueError("not a clnet tuning file")
    except (ClnetError, OSError, ValueError) as exc:
        log.warning("ignoring the tuning cache %s (%s); `clnet-tune` writes a new one", path, exc)
        parsed = {}
    _loaded[path] = (stamp, parsed)
    return parsed


# CLNET_TUNING's values, as `describe` says them
MODES = {"1": "the cache, then the table", "cache": "the cache only", "0": "built-in defaults"}


def _mode():
    """CLNET_TUNING: "1" (the cache, then the shipped table), "cache" (the cache only) or "0" (neither)."""
    return os.environ.get("CLNET_TUNING", "1")


def _entry(device, path=None):
    """This device's tuned cases in the cache, if tuned for the current kernel sources."""
    return _cached_cases(device.info, device.family, path)


def _cached_cases(info, family, path=None):
    entry = load(path).get("devices", {}).get(_info_key(info))
    if not isinstance(entry, dict) or entry.get("source") != source_hash(family):
        return {}
    cases = entry.get("cases")
    return cases if isinstance(cases, dict) else {}


def tuned_cases(device, path=None):
    """The keys of the cases the cache holds for this device and the current kernel sources."""
    return set(_entry(device, path))


def describe(info, family, path=None):
    """What tuned parameters the plans of a device (its `DeviceInfo` and kernel family) take, as
    JSON-able values (clnet-bench records them, clnet-devices shows them); the device need not be
    open.

    Example:
        >>> dev = clnet.device("pocl")
        >>> tuning.describe(dev.info, dev.family)["table_cases"]
    """
    mode, cls = _mode(), device_class(info)
    table, current = table_cases(cls, family) if mode == "1" else ({}, {})
    return {"mode": MODES.get(mode, MODES["1"]),
            "cache": str(Path(path or cache_path())),
            "cache_cases": 0 if mode == "0" else len(_cached_cases(info, family, path)),
            "class": cls, "table_cases": len(table.get("cases", {})),
            "table_stale_cases": len(table.get("cases", {})) - len(current)}


def describe_text(description):
    """`describe`'s values as one line of text."""
    t = description
    stale = f", {t['table_stale_cases']} of them made for other kernel sources" if t["table_stale_cases"] else ""
    table = (f"the {t['class']} table ({t['table_cases']} cases{stale})" if t["table_cases"] else
             "not used" if t["mode"] != MODES["1"] else
             f"none for class {t['class']}" if t["class"] else "none (the device has no class)")
    return f"{t['mode']}; cache {t['cache']}: {t['cache_cases']} cases for this device; shipped table: {table}"


def table_path(cls):
    return TABLES / f"{cls}.json"


@functools.cache  # the shipped files do not change while clnet runs
def shipped_table(cls):
    """The parsed table of a device class ({} where none ships)."""
    path = table_path(cls) if cls else None
    if path is None or not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
        if not (isinstance(table, dict) and table.get("format") == TABLE_FORMAT
                and isinstance(table.get("cases"), dict)):
            raise ValueError("not a clnet tuned table")
    except (OSError, ValueError) as exc:
        log.warning("ignoring the shipped tuned table %s (%s): reinstall clnet", path, exc)
        return {}
    return table


@functools.cache  # every GEMM a plan records looks them up
def table_cases(cls, family):
    """(the shipped table of a device class, its cases tuned for the current sources of the kernel
    family): a case's own "source", else the table's. Cases made for other kernel sources are still
    used, after these, with a note in the log (see the module's docstring)."""
    table = shipped_table(cls)
    source = table.get("source")
    current = {key: result for key, result in table.get("cases", {}).items()
               if (result.get("source", source) if isinstance(result, dict) else source) == source_hash(family)}
    stale = len(table.get("cases", {})) - len(current)
    if stale:
        log.info("%d of the %d cases of the shipped tuned table %s were made for other kernel sources (now %s): "
                 "using them after the others; `clnet-tune` tunes for these", stale, len(table["cases"]),
                 table_path(cls), source_hash(family))
    return table, current


def _distance(a, b):
    """log2 distance in every dimension, or None when the cases are not comparable."""
    if (a.kernel, a.layout) != (b.kernel, b.layout):
        return None
    ratios = [abs(math.log2(x / y)) for x, y in ((a.m, b.m), (a.n, b.n), (a.k, b.k))]
    return None if max(ratios) > math.log2(NEAR) else sum(ratios)


def _nearest(cases, case):
    """(the parameters (a dict), the distance, the key) of the comparable case nearest to `case`
    among `cases`, or None."""
    best, best_key, best_distance = None, None, None
    for key, result in cases.items():
        try:
            distance = _distance(case, Case.from_key(key))
        except (ValueError, ZeroDivisionError):
            continue
        if distance is not None and (best_distance is None or distance < best_distance):
            best, best_key, best_distance = result, key, distance
    if not (isinstance(best, dict) and isinstance(best.get("params"), dict)):
        return None
    return dict(best["params"]), best_distance, best_key


def _chosen(case, nearest, origin, units=None):
    """The case `_nearest` found, as a `Tuned`, with a note in the debug log."""
    params, _, key = nearest
    log.debug("Tuned parameters for %s from %s's %s", case.key, origin, key)
    return Tuned(params, origin, units)


def lookup(device, case, path=None):
    """The tuned parameters of the nearest comparable case among the cache's and the device class's
    shipped table's cases for the current kernel sources, the cache's where as near (this machine's
    own timings); else of the table's nearest case made for other sources; as a `Tuned`, or None.
    (A cache tuned at batch 512 holds cases within reach of batch 128's shapes, where the table may
    hold the exact case: the nearer wins.)"""
    mode = _mode()
    if mode == "0":
        return None
    cached = _nearest(_entry(device, path), case)
    shipped, table = None, {}
    if mode != "cache":
        cls = device_class(device.info)
        table, current = table_cases(cls, device.family)
        shipped = _nearest(current, case)
    if cached is not None and (shipped is None or cached[1] <= shipped[1]):
        return _chosen(case, cached, "the tuning cache")
    shipped = shipped or _nearest(table.get("cases", {}), case)
    return shipped and _chosen(case, shipped, f"the shipped {cls} table", _table_units(table))


def _table_units(table):
    """The compute units of the device a table was tuned on, None where it does not say (older tables)."""
    tuned_on = table.get("tuned_on")
    units = tuned_on.get("compute_units") if isinstance(tuned_on, dict) else None
    return units if isinstance(units, int) and not isinstance(units, bool) and units > 0 else None


def store(device, results, path=None):
    """Merge `results` ({Case: {"params": ..., and what was measured}}) into the device's entry: read,
    merged and written atomically under a file lock (`<path>.lock`), so that tuners writing at once
    lose nothing; entries of other devices are kept, a stale entry of this one is replaced."""
    path = Path(path or cache_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # here, not at import: only a tuner writes the cache
    with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT):
        data = load(path) or {"format": FORMAT, "version": VERSION, "devices": {}}
        entry = data["devices"].get(device_key(device))
        if not isinstance(entry, dict) or entry.get("source") != source_hash(device.family):
            entry = {"platform": device.info.platform, "device": device.info.name, "driver": device.info.driver,
                     "source": source_hash(device.family), "cases": {}}
        entry["cases"].update({case.key: result for case, result in results.items()})
        data["devices"][device_key(device)] = entry
        text = json.dumps(data, indent=1, sort_keys=True).encode()
        replace_atomically(path, lambda f: f.write(text))
        _loaded.pop(path, None)
    return path


def export_table(device, results, path, cls=None, note=None):
    """Write (or extend) the shipped table of the device's class at `path` with `results` ({Case:
    {"params": ...}}), as `clnet-tune --export-table` does, case by case. A table at `path` of the
    same class, made on a device of as many compute units, keeps its other cases and its note (each
    run's note added once), so that several bounded runs build one table; its cases tuned for other
    kernel sources name those as their own "source". Another table there is replaced, with a warning.

    Args:
        device: the tuned device; its `DeviceInfo` names the table's origin and its compute units
            (which the parameters of another device of the class are rescaled by).
        results: the tuned cases.
        path: the table's file (ship it as clnet/tuned/<class>.json).
        cls: the class, by default `device_class(device.info)`.
        note: how the table was made, kept in the file.

    Example:
        >>> tuning.export_table(dev, {case: tune.tune_case(dev, case, call)}, "nvidia-hopper.json")
    """
    cls = cls or device_class(device.info)
    if not cls:
        raise ValueError(f"{device.info.name} belongs to no device class with a shipped table: name one")
    path = Path(path)
    refuse_special(path)  # reading a FIFO would block
    info, cases, notes = device.info, {}, []
    old = _table_to_extend(path, cls, info.compute_units)
    if old is not None:
        source, notes = old.get("source"), [part for part in old["tuned_on"]["note"].split("; ") if part]
        cases = {key: result if source == source_hash(device.family) else {"source": source, **result}
                 for key, result in old["cases"].items()}
    cases.update({case.key: result for case, result in results.items()})
    notes += [note] if note and note not in notes else []
    table = {"format": TABLE_FORMAT, "version": VERSION, "class": cls, "source": source_hash(device.family),
             "tuned_on": {"platform": info.platform, "device": info.name, "driver": info.driver,
                          "compute_units": info.compute_units, "note": "; ".join(notes)},
             "cases": cases}
    text = (json.dumps(table, indent=1, sort_keys=True) + "\n").encode()
    replace_atomically(path, lambda f: f.write(text))
    return path


def _table_to_extend(path, cls, units):
    """The parsed table at `path` if it is one of class `cls` made on `units` compute units; else
    None, with a warning where a file there is replaced."""
    try:
        old = json.loads(path.read_text())
        made = (old["class"], _table_units(old))
        if not (isinstance(old["cases"], dict) and all(isinstance(r, dict) for r in old["cases"].values())
                and isinstance(old["tuned_on"]["note"], str)):
            raise ValueError("not a clnet tuned table")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        log.warning("replacing %s, which is no table to extend (%s)", path, exc)
        return None
    if made != (cls, units):
        log.warning("replacing the table %s: made for class %s on %s compute units, this one is %s on %d",
                    path, *made, cls, units)
        return None
    return old


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
