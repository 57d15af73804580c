"""One image file decoded with Pillow: any mode (grey, 16-bit grey, RGB, RGBA, palette, CMYK, ...)
as grey or RGB uint8, as image folders, packs, streams and clnet-predict read them."""

from pathlib import Path

import numpy as np

from ..errors import DatasetError

PILLOW_HINT = ("reading image folders needs Pillow, which is not installed: pip install pillow (or clnet's "
               'images extra: pip install ".[images]" in its checkout)')
_GRAY_MODES = {"1", "L", "LA", "F"}


def _import_pillow(root):
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(f"{root}: {PILLOW_HINT}") from None
    return Image


def convert_mode(Image, im, grayscale):
    """A PIL image of any mode as "L" (grey) or "RGB": grey modes, 16-bit grey (its high byte) and
    palettes of greys become "L" whatever `grayscale` (three channels broadcast it: `to_chw`);
    colour modes (RGB, RGBA with the alpha dropped, palettes, CMYK, YCbCr, ...) become "RGB", or "L"
    (ITU-R 601-2 luma) when grayscale is True."""
    mode = im.mode
    if mode == "I" or mode.startswith("I;16"):  # 16-bit grayscale PNG: keep the high byte
        im = Image.fromarray((np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8))
    elif mode in _GRAY_MODES:
        if mode != "L":
            im = im.convert("L")
    elif mode != "RGB":  # RGBA (alpha dropped), P/PA (palette), CMYK, YCbCr, ...
        im = im.convert("RGB")
        if mode in ("P", "PA"):  # a palette of greys is a grayscale image
            rgb = np.asarray(im)
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                im = Image.fromarray(np.ascontiguousarray(rgb[..., 0]))
    if grayscale is True and im.mode == "RGB":
        im = im.convert("L")  # ITU-R 601-2 luma, as Pillow converts
    return im


def bilinear(Image):
    """Pillow's bilinear filter, under its name before and after Pillow 9.1 (Image.Resampling)."""
    return getattr(getattr(Image, "Resampling", Image), "BILINEAR")


def _decode(Image, path, grayscale, size):
    """One image as uint8 (H, W) when grey or (H, W, 3) when colour (`convert_mode`), resized to
    `size` (h, w)."""
    with Image.open(path) as im:
        im.load()
        im = convert_mode(Image, im, grayscale)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), bilinear(Image))
        return np.array(im, dtype=np.uint8)


def decodes_to_colour(Image, path: Path) -> bool:
    """Whether `_decode` gives `path` colour channels (grayscale=None), mostly from the header alone;
    False for an unreadable file, which decoding then reports."""
    try:
        with Image.open(path) as im:
            mode = im.mode
        if mode == "I" or mode.startswith("I;16") or mode in _GRAY_MODES:
            return False
        return mode not in ("P", "PA") or _decode(Image, path, None, None).ndim == 3  # a palette may be grey
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        return False


def to_chw(array: np.ndarray) -> np.ndarray:
    """A decoded image (H, W) or (H, W, 3) as (C, H, W); assigned to 3 channels, grey broadcasts."""
    return array.transpose(2, 0, 1) if array.ndim == 3 else array
