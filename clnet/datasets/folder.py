"""Image folders: one sub-folder per class holding PNG, JPEG, BMP, WebP, TIFF or GIF files (a GIF's
or TIFF's first frame), read with Pillow.

    root/
      cat/ 001.png 002.jpg ...
      dog/ a.bmp b.JPEG c.webp ...

The sorted sub-folder names are the classes. Files with other extensions are left out and counted
in a warning (the "clnet" logger's); hidden files and folders (names starting with '.', such as
macOS '._x.jpg' companions) are ignored. Images in nested folders inside a class folder belong to
that class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError, InputError
from ..files import special_kind
from ..memory import check_host_memory
from ..text import is_unicode
from .dataset import Dataset
from .images import _decode, _import_pillow, to_chw
from .stream import decoded_bytes, memory_budget, stream_folder
from .transforms import CROP_FRACTION

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width) or one int, not {image_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, not {image_size!r}")
    return h, w


def _list_images(folder):
    """(image files under `folder`, sorted by their path relative to it; the other files), hidden
    entries skipped, linked folders not followed (as os.walk). An image name that is not a regular
    file (a FIFO would block its reader) is refused: the scan's own file types tell, so a folder of a
    million images costs no stat per file."""
    found, others, pending = [], [], [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:  # as os.walk: a folder that cannot be listed is passed over
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_folder(entry):
                if not entry.is_symlink():
                    pending.append(entry.path)
            elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                others.append(Path(entry.path))
            else:
                kind = None if entry.is_file() else special_kind(entry.path)
                if kind:
                    raise DatasetError(f"{entry.path} is {kind}, not an image file: remove it from the image folder")
                found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.relative_to(folder).parts), others


def _is_folder(entry):
    try:
        return entry.is_dir()
    except OSError:
        return False


def list_classes(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """(class names, image files, their labels) of a folder of class folders, checked: the sorted
    sub-folder names are the classes, each holding at least one image."""
    if not root.exists():
        raise DatasetError(f"{root}: no such folder: give a folder with one sub-folder of images per class")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder: give a folder with one sub-folder of images "
                           "per class")
    try:
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None
    unencodable = next((d for d in class_dirs if not is_unicode(d.name)), None)
    if unencodable is not None:
        raise DatasetError(f"{unencodable}: the class folder's name is not valid Unicode text (another encoding?): "
                           "rename the folder, as it becomes the class name")
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS)]
        hint = f" (it holds {len(loose)} images directly: move them into class folders)" if loose else ""
        raise DatasetError(f"{root}: no class folders{hint}: put the images of each class in a sub-folder "
                           "named after the class")

    files, labels, others = [], [], []
    for label, folder in enumerate(class_dirs):
        images, not_images = _list_images(folder)
        if not images:
            raise DatasetError(f"{folder}: class folder {folder.name!r} holds no images "
                               f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder")
        files += images
        labels += [label] * len(images)
        others += not_images
    if others:
        log.warning("%s: %d files are not images (%s) and were left out, the first: %s", root, len(others),
                    ", ".join(IMAGE_EXTENSIONS), sorted(others)[0])
    return [d.name for d in class_dirs], files, labels


class ImageFolder(Dataset):
    """A Dataset read from `root`/<class>/<image>: x uint8 (N, C, H, W), y int64, classes the folder
    names; or, streamed, an `ImageStream` (clnet.datasets.stream) whose batches worker processes
    decode as a fit, evaluate or predict uses them, in bounded memory.

    `image_size`: (height, width) to resize every image to (bilinear); without it all images must
    have one size (streamed: the first image's size). `grayscale`: None gives RGB when any image is
    colour (streamed: any of 32 spread over the folder) and one channel otherwise; True or False
    forces one or three channels.

    Args:
        root: the folder of class folders.
        image_size: (height, width), or one int for a square; None keeps the images' own size.
        grayscale: None, True or False, as above.
        name: defaults to the folder's name.
        stream: True streams; "auto" (the default) streams when the decoded images would take more
            than `stream.memory_budget()` (half the available memory, or $CLNET_MEMORY_LIMIT); False
            decodes the whole folder now.
        augment: a stream's training transforms: "random-resized-crop" and/or "flip"
            (ImageStream); its other batches are resized to image_size by `crop_fraction`.
        workers: a stream's decoding processes (default: the cores; 0: in this process).
        on_error: a stream's unreadable images: "skip" (replaced by the next readable one, and
            reported) or "raise"; decoded into memory, an unreadable image always stops the load.
        crop_fraction: a stream resizes the short side to image_size / crop_fraction and crops the
            centre; None stretches the whole image to image_size, as a folder decoded into memory
            is; "auto": 0.875 when stream=True, None when "auto" chose to stream, so that a folder
            too large for memory gives the images it would have given in memory.

    Attributes:
        root: `root` as a Path.
        files: the image file behind each row of `x`, in order.

    Example:
        >>> data = ImageFolder("photos", image_size=(64, 64))
        >>> data.classes, data.x.shape          # e.g. (['cat', 'dog'], (812, 3, 64, 64))
        >>> train = ImageFolder("imagenet/train", image_size=224, stream=True, augment="random-resized-crop,flip")
    """

    def __new__(cls, root: str | os.PathLike | None = None, image_size: int | Sequence[int] | None = None,
                grayscale: bool | None = None, name: str | None = None, stream: bool | str = "auto",
                augment: str | None = None, workers: int | None = None, on_error: str = "skip",
                crop_fraction: float | None | str = "auto"):
        if root is None:  # unpickling, copying
            return super().__new__(cls)
        root = Path(root)
        size = _image_size(image_size)
        if grayscale not in (None, True, False):
            raise ValueError(f"grayscale must be None, True or False, not {grayscale!r}")
        if stream not in (True, False, "auto"):
            raise InputError(f"stream must be True, False or 'auto', not {stream!r}")
        _import_pillow(root)
        listing = list_classes(root)
        if stream == "auto":
            # colour assumed: a folder that might not fit in memory is streamed
            stream = decoded_bytes(root, listing[1], size, grayscale, undecided=3) > memory_budget()
            crop_fraction = None if crop_fraction == "auto" else crop_fraction
        elif crop_fraction == "auto":
            crop_fraction = CROP_FRACTION
        if stream:
            return stream_folder(root, listing[1], listing[2], listing[0], size, grayscale, augment,
                                  workers, on_error, crop_fraction, name or root.name or str(root))
        folder = super().__new__(cls)
        folder._listing = listing
        return folder

    def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int] | None = None,
                 grayscale: bool | None = None, name: str | None = None, stream: bool | str = "auto",
                 augment: str | None = None, workers: int | None = None, on_error: str = "skip",
                 crop_fraction: float | None | str = "auto"):
        root = Path(root)
        size = _image_size(image_size)
        Image = _import_pillow(root)
        classes, files, labels = self._listing
        del self._listing
        if size is not None:  # the decoded images' memory, checked before the first is decoded, grey
            # assumed: a folder is refused only where it cannot fit however its images decode
            check_host_memory(decoded_bytes(root, files, size, grayscale, undecided=1),
                              f"{root}: {len(files):,} images of {size[0]}x{size[1]}", DatasetError)

        arrays, first = [], None
        for path in files:
            try:
                array = _decode(Image, path, grayscale, size)
            except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
                raise DatasetError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc}): "
                                   "replace or delete the file") from None
            if size is None:
                if first is None:
                    first = (path, array.shape[:2])
                elif array.shape[:2] != first[1]:
                    (h0, w0), (h1, w1) = first[1], array.shape[:2]
                    raise DatasetError(
                        f"{root}: images differ in size: {first[0]} is {h0}x{w0} (height x width) but {path} "
                        f"is {h1}x{w1}: pass --image-size H W (image_size=(h, w)) to resize them all")
            arrays.append(array)

        channels = 1 if grayscale is True else 3 if grayscale is False else \
            3 if any(a.ndim == 3 for a in arrays) else 1
        h, w = arrays[0].shape[:2]
        x = np.empty((len(arrays), channels, h, w), dtype=np.uint8)
        for i, array in enumerate(arrays):
            x[i] = to_chw(array)
        super().__init__(x, np.array(labels, dtype=np.int64), classes=classes,
                         name=name or root.name or str(root))
        self.root = root
        self.files = files  # the image behind each row of x, in order
