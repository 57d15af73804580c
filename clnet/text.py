"""Small helpers for what clnet prints."""


def format_bytes(n):
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def is_unicode(text):
    """Whether `text` is valid Unicode, as UTF-8 writes and terminals print it: a file name in another
    encoding reaches Python with lone surrogates ("caf\\udce9"), which are not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
