"""Downloads that never leave a partial or unverified file: streamed into a temporary file beside
the destination, checked against the expected size and SHA-256, then renamed into place."""

import hashlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from ..errors import DatasetError
from ..progress import ProgressBar

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0  # seconds without a byte from the server before a download is given up
CHUNK = 1 << 16
USER_AGENT = "clnet (Python urllib)"


def download_file(url, dest, size=None, sha256=None, timeout=None):
    """Download url to dest (a Path) atomically: the bytes go to a temporary file in dest's folder,
    are checked against size and sha256, then renamed to dest. On any failure the temporary file
    is deleted and DatasetError raised (a KeyboardInterrupt goes on, once the file is gone)."""
    dest = Path(dest)
    timeout = TIMEOUT_S if timeout is None else timeout
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DatasetError(f"cannot write into {dest.parent} ({exc}): set CLNET_DATA_DIR to a writable "
                           "folder, or put the files in place yourself") from None
    _sweep_stale(dest)
    log.info("Downloading %s to %s", url, dest)
    progress = None
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                offered = int(length) if length and length.strip().isdigit() else None
                if size is not None and offered is not None and offered != size:
                    raise _Rejected(f"the server offers {offered:,} bytes, expected {size:,}")
                progress = ProgressBar(offered if offered is not None else size, dest.name, scaled=True)
                digest, done = hashlib.sha256(), 0
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    done += len(chunk)
                    if size is not None and done > size:
                        raise _Rejected(f"the server sent more than the expected {size:,} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    progress.update(done, _rate(done, progress))
                progress.close(keep=True)
        if size is not None and done != size:
            raise _Rejected(f"got {done:,} bytes, expected {size:,} (the transfer was cut short)")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise _Rejected(f"its SHA-256 is {digest.hexdigest()}, expected {sha256}: "
                            "the file is corrupt or not the one expected")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a finished download is an ordinary file
        os.replace(tmp, dest)
    except BaseException as exc:
        if progress is not None:
            progress.close()
        _unlink(tmp)
        reason = _describe(exc, timeout)
        if reason is None:  # Ctrl-C stays an interruption; anything unforeseen is a bug
            raise
        raise DatasetError(f"download of {url} failed: {reason} (nothing of it was kept)") from None
    return dest


class _Rejected(Exception):
    """Bytes arrived but are not the expected file."""


def _describe(exc, timeout):
    """A one-line reason for a failed download, or None for an interruption or a bug."""
    if isinstance(exc, _Rejected):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return f"no answer within {timeout:g} s"
        return f"cannot connect ({reason})"
    if isinstance(exc, TimeoutError):
        return f"no data for {timeout:g} s"
    if isinstance(exc, (OSError, HTTPException)):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError):  # e.g. a malformed mirror URL
        return str(exc)
    return None


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sweep_stale(dest, age_s=24 * 3600):
    """Delete temporary files of dest left by a process that was killed (not touched for a day)."""
    now = time.time()
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if now - part.stat().st_mtime > age_s:
                part.unlink()
        except OSError:
            pass


def _rate(done, bar):
    """ "3.1 MB/s": the rate a download's progress bar shows beside the bytes done."""
    return f"{done / max(bar.elapsed, 1e-6) / 1e6:.1f} MB/s"
