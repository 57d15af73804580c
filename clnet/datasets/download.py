"""Downloads that never leave a partial or unverified file in place: streamed into a temporary
file beside the destination, checked against the expected size and SHA-256, then renamed into
place. A transient failure (no connection, a timeout, a transfer cut short, HTTP 5xx, 408 or 429)
is retried a few times, waiting longer each time, resuming where the bytes stopped (an HTTP Range
request, when the server honours it); what was received when the attempts run out, or at Ctrl-C,
is kept as `.<name>.partial`, and the next download of the file resumes from it."""

import hashlib
import logging
import os
import socket
import stat
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
RETRIES = 4       # further attempts after a transient failure
BACKOFF_S = 1.0   # seconds before the first retry, doubled before each further one
CHUNK = 1 << 16
USER_AGENT = "clnet (Python urllib)"


def download_file(url, dest, size=None, sha256=None, timeout=None):
    """Download url to dest (a Path) atomically: the bytes go to a temporary file in dest's folder,
    are checked against size and sha256, then renamed to dest. Transient failures are retried
    (RETRIES times, BACKOFF_S doubling), each attempt resuming the bytes received; when they run
    out, or at Ctrl-C, those bytes are kept as dest's `.partial` file for the next download to
    resume, and DatasetError is raised (a KeyboardInterrupt goes on). Bytes that are not the
    expected file (a wrong size or checksum) are deleted, never kept."""
    dest = Path(dest)
    timeout = TIMEOUT_S if timeout is None else timeout
    partial = dest.parent / f".{dest.name}.partial"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise DatasetError(f"cannot write into {dest.parent} ({exc}): set CLNET_DATA_DIR to a writable "
                           "folder, or put the files in place yourself") from None
    _sweep_stale(dest)
    try:  # taken by this download (another one at the same time starts afresh); a link, a FIFO or a
        # device is left alone: tmp is opened and written, which would follow the link or block
        if stat.S_ISREG(os.lstat(partial).st_mode):
            os.replace(partial, tmp)
    except FileNotFoundError:
        pass
    have = os.path.getsize(tmp)
    if have:
        log.info("Resuming the download of %s into %s after its first %s bytes", url, dest, f"{have:,}")
    else:
        log.info("Downloading %s to %s", url, dest)
    progress, attempts = ProgressBar(size, dest.name, initial=have, scaled=True), 1
    try:
        while True:
            try:
                resumed, digest = _transfer(url, tmp, size, timeout, progress)  # the size is checked as it comes
                _verify(digest, sha256, resumed)
                break
            except (_Rejected, _Transient, OSError, HTTPException) as exc:  # URLError and timeouts are OSErrors
                afresh = isinstance(exc, _Rejected) and exc.resumed
                if attempts > RETRIES or not (afresh or _transient(exc)):
                    raise
                if afresh:  # the bytes kept from before were of another file: start again from none
                    os.truncate(tmp, 0)
                wait = BACKOFF_S * 2 ** (attempts - 1)
                log.warning("Download of %s: %s; trying again in %g s", url, _describe(exc, timeout), wait)
                time.sleep(wait)
                attempts += 1
        progress.close(keep=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a finished download is an ordinary file
        os.replace(tmp, dest)
    except BaseException as exc:
        progress.close()
        kept = _keep(tmp, partial, exc)
        reason = _describe(exc, timeout)
        if reason is None:  # Ctrl-C stays an interruption; anything unforeseen is a bug
            raise
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        what = (f"the {kept:,} bytes received are kept in {partial}, and the next download resumes there"
                if kept else "nothing of it was kept")
        raise DatasetError(f"download of {url} failed{tries}: {reason} ({what})") from None
    return dest


def _transfer(url, tmp, size, timeout, progress):
    """Append to `tmp` what the server has beyond the bytes already there (a Range request; a
    server that sends the whole file instead starts it afresh). Returns whether `tmp` then holds
    bytes from before this transfer, and the SHA-256 of its bytes (hashlib's): the kept bytes read
    once, then each chunk as it is written, so the file is never read back whole."""
    have = os.path.getsize(tmp)
    if size is not None and have >= size:
        if have == size:
            with open(tmp, "rb") as kept:
                return True, _hash(kept, hashlib.sha256())
        os.truncate(tmp, 0)
        have = 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left beyond our bytes as the server sees it: start afresh
            exc.close()
            os.truncate(tmp, 0)
            raise _Transient("the server refused to resume the download") from None
        raise
    with response:
        if have and (response.status != 206 or not _range_starts_at(response, have)):
            have = 0  # a whole file, not the rest of ours
        length = response.headers.get("Content-Length")
        offered = have + int(length) if length and length.strip().isdigit() else None
        if size is not None and offered is not None and offered != size:
            raise _Rejected(f"the server offers {offered:,} bytes, expected {size:,}")
        with open(tmp, "r+b") as out:
            out.truncate(have)
            digest = _hash(out, hashlib.sha256())  # the kept bytes
            out.seek(have)
            done = have
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                done += len(chunk)
                if size is not None and done > size:
                    raise _Rejected(f"the server sent more than the expected {size:,} bytes")
                out.write(chunk)
                digest.update(chunk)
                progress.update(done, _rate(done, progress))
    expected = size if size is not None else offered
    if expected is not None and done != expected:
        raise _Transient(f"got {done:,} bytes, expected {expected:,} (the transfer was cut short)")
    return have > 0, digest


def _hash(f, digest):
    """`digest` updated with the rest of the open file f, read in blocks; returned."""
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest


def _range_starts_at(response, start):
    """Whether a 206 response's Content-Range ("bytes START-END/TOTAL") starts at `start`."""
    unit, _, span = response.headers.get("Content-Range", "").partition(" ")
    return unit == "bytes" and span.split("-")[0].strip() == str(start)


def _verify(digest, sha256, resumed):
    """Raise _Rejected unless the file's `digest` (hashlib's) is the SHA-256 `sha256` (when given);
    `resumed`: the file holds bytes from an earlier transfer."""
    if sha256 is None:
        return
    if digest.hexdigest() != sha256.lower():
        raise _Rejected(f"its SHA-256 is {digest.hexdigest()}, expected {sha256}: "
                        "the file is corrupt or not the one expected", resumed)


class _Rejected(Exception):
    """Bytes arrived but are not the expected file. `resumed`: some were kept from an earlier
    transfer (perhaps of another version of the file), so a fresh attempt may yet succeed."""

    def __init__(self, message, resumed=False):
        super().__init__(message)
        self.resumed = resumed


class _Transient(Exception):
    """A transfer that may succeed when tried again (cut short, a resume refused)."""


def _transient(exc):
    """Whether a failure may pass if the download is tried again."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (408, 429) or exc.code >= 500
    return isinstance(exc, (_Transient, urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError,
                            HTTPException))


def _keep(tmp, partial, exc):
    """Keep the bytes of an interrupted or transiently failed download as `partial` for the next
    one to resume, and return their number; else (wrong bytes, or none) delete them and return 0."""
    try:
        kept = os.path.getsize(tmp) if _transient(exc) or isinstance(exc, KeyboardInterrupt) else 0
        if kept:
            os.replace(tmp, partial)
            return kept
    except OSError:
        pass
    _unlink(tmp)
    return 0


def _describe(exc, timeout):
    """A one-line reason for a failed download, or None for an interruption or a bug."""
    if isinstance(exc, (_Rejected, _Transient)):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return f"no answer within {timeout:g} s"
        return f"cannot connect ({reason})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
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
    """ "3.1 MB/s": the rate a download's progress bar shows beside the bytes done (those resumed
    from an earlier download left out)."""
    return f"{max(done - bar.initial, 0) / max(bar.elapsed, 1e-6) / 1e6:.1f} MB/s"
