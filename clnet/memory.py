"""How much memory the host offers, so that a size read from a file is refused before it is allocated."""

import os

from .text import format_bytes

try:
    import resource
except ImportError:  # Windows: no address-space limit to read
    resource = None


def host_memory() -> int:
    """The bytes this process may hold: the host's physical memory, or less where an address-space
    limit (ulimit -v, resource.RLIMIT_AS) is set.

    Example:
        >>> host_memory() > 2**20
        True
    """
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf names (Windows): no bound from here
        physical = 2**63
    if resource is None:
        return physical
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    return physical if limit == resource.RLIM_INFINITY else min(physical, limit)


def check_host_memory(nbytes: int, what: str, error: type) -> None:
    """Raise `error` (a ClnetError class) when `nbytes` for `what` exceed what the host has.

    Args:
        nbytes: the size about to be allocated, as a file or an option declares it.
        what: says what it is and where it comes from ("the images of data.npz['x'], (10**12, 784) uint8").
        error: the class of the error raised, such as DatasetError.

    Example:
        >>> check_host_memory(10**15, "photos: 9,000 images of 3x30000x30000", DatasetError)
        Traceback (most recent call last):
        DatasetError: photos: 9,000 images of 3x30000x30000 need 7.5 TiB, more than the host's ...
    """
    available = host_memory()
    if nbytes > available:
        raise error(f"{what} need {format_bytes(nbytes)}, more than the host's {format_bytes(available)} of memory")
