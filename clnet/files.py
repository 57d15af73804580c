"""Files as clnet reads and writes them: only regular files (never a FIFO or a device, checked with
stat before opening), written atomically: model files, checkpoints, weights files, ONNX exports,
metrics logs, plots, packs, run options, benchmark results and the tuning cache and tables."""

import contextlib
import os
import re
import stat
import tempfile

from .errors import ClnetError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def special_kind(path):
    """What `path` is ("a FIFO", "a folder", ...) when it exists and is not a regular file, else None.
    Symlinks are followed: a link to a regular file is a regular file. Only stat is used, so a FIFO
    or a device is never opened (opening a FIFO blocks; reading /dev/zero never ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    return _kind(mode)


def _kind(mode):
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def refuse_special(path):
    """Raise a ClnetError unless `path` is absent or a regular file (through a symlink too)."""
    path = os.fspath(path)
    try:
        kind = special_kind(path)
    except OSError as exc:  # a link loop, a folder on the way that cannot be searched
        raise ClnetError(f"cannot write {path}: {exc.strerror or exc}") from None
    if kind:
        raise ClnetError(f"{path} is {kind}, not a regular file: clnet writes only regular files; "
                         "give the path of a file to create or replace")


def check_writable(path):
    """Raise a ClnetError unless `path` can become a regular file: absent or regular, in a folder
    that exists and can be written. Called before long work (training) so that a bad output path
    fails first, not after the work is done."""
    refuse_special(path)
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise ClnetError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ClnetError(f"cannot write {path}: the folder {folder} is not writable; "
                         "give a path in a writable folder")


def _fsync_folder(folder):
    """Make the rename durable; some systems (Windows) cannot open a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode(path):
    """The mode the file gets: the previous file's, else what open() would give (0666 & ~umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask():
    """The process's umask, read from /proc where Linux shows it: os.umask can only read it by
    setting it, for every thread at once, and a file another thread made meanwhile would get 0666."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
        return umask


def replace_atomically(path, write):
    """Make `path` hold what `write(f)` writes to a binary file, or leave it untouched: the content
    goes to a temporary file in the same folder (flushed, fsynced), which then replaces `path`.
    On any failure the temporary file is removed and the exception propagates (OSError included).
    A `path` that exists and is not a regular file (a device, a FIFO, a socket, a folder) is refused
    with a ClnetError, never replaced. A symlink is written through: its target (a regular file or
    absent) is replaced and the link is kept. The temporary file is named `.<name>.<pid>.<random>.tmp`;
    those a killed writer left for `path` are removed first (`remove_stale_temporaries`)."""
    refuse_special(path)
    path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, _file_mode(path))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def readable_size(path, error=ClnetError) -> int:
    """The size in bytes of the regular file at `path` (through a symlink too), found with stat
    before anything opens it: a FIFO would block its reader and a device such as /dev/zero never
    end. A path that is missing, or not a regular file, raises `error` (a ClnetError class) naming it.

    Example:
        >>> readable_size("train-images-idx3-ubyte", DatasetError)
        47040016
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file: check the path") from None
    except OSError as exc:  # a link loop, a folder on the way that cannot be searched
        raise error(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    kind = _kind(info.st_mode)
    if kind:
        raise error(f"{path} is {kind}, not a regular file: clnet reads only regular files; give the path of a file")
    return info.st_size


def remove_stale_temporaries(path):
    """Remove the temporary files that `replace_atomically(path, ...)` left when its process was
    killed mid-write: only files of its own naming for this target (`.<name>.<pid>.<random>.tmp`,
    beside it), regular, whose process no longer runs. A live process's file (this one's
    included) and any other file are never touched; nothing is removed where processes cannot be
    probed (Windows)."""
    if os.name != "posix":
        return
    path = os.path.realpath(path)
    folder, name = os.path.split(path)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[a-z0-9_]{8}\.tmp")
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry)
        if not match or _alive(int(match.group(1))):
            continue
        leftover = os.path.join(folder, entry)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(leftover).st_mode):
                os.unlink(leftover)


def _alive(pid):
    """Whether process `pid` runs (or may: one that cannot be signalled counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True
