"""Writing a file atomically: model files, checkpoints, ONNX exports and the tuning cache."""

import contextlib
import os
import tempfile


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
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def replace_atomically(path, write):
    """Make `path` hold what `write(f)` writes to a binary file, or leave it untouched: the content
    goes to a temporary file in the same folder (flushed, fsynced), which then replaces `path`.
    On any failure the temporary file is removed and the exception propagates (OSError included)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
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
