"""Transforms of full-size images, as a streamed image folder applies them in its workers: a
training random-resized-crop (torchvision's defaults: a box of 8% to 100% of the area and an aspect
ratio from 3/4 to 4/3, ten tries, then a centre crop) and horizontal flip; for evaluation, a resize
of the short side to image_size / 0.875 (as ImageNet practice: 256 for 224) and a centre crop.
Images of any mode (grey, RGB, RGBA, palette, CMYK) become the model's 1 or 3 channels.

Random draws come from a generator keyed by (seed, epoch, sample): `sample_rng`; so a sample's
crop and flip never depend on which worker decodes it, nor when.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .images import bilinear, convert_mode, to_chw

SCALE = (0.08, 1.0)           # the box's share of the image's area
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # the box's width / height
TRIES = 10
CROP_FRACTION = 0.875         # evaluation: the centre crop's share of the resized image's side
_STREAM_TAG = 0x5743_5354     # keeps the stream's draws apart from the other uses of a seed


@dataclass(frozen=True)
class Transform:
    """How one image becomes a sample of (height, width): `resized_crop` (a random-resized-crop
    box) and `flip` (mirror with probability 1/2) when training; else a resize and centre crop
    keeping `crop_fraction` of the short side, or, with crop_fraction None, the whole image
    stretched to the size (as an image folder decoded into memory is)."""
    size: tuple
    resized_crop: bool = False
    flip: bool = False
    crop_fraction: float | None = CROP_FRACTION

    @property
    def random(self):
        return self.resized_crop or self.flip


def sample_rng(seed: int, epoch: int, sample: int) -> np.random.Generator:
    """The generator of one sample's draws in one epoch: Philox keyed by the seed, counting from
    (sample, epoch), so draws are independent of every other sample's and of the order of decoding.

    Example:
        >>> sample_rng(0, 1, 17).random() == sample_rng(0, 1, 17).random()
        True
    """
    return np.random.Generator(np.random.Philox(counter=[0, 0, int(sample), int(epoch)],
                                                key=(int(seed) % 2 ** 64) << 64 | _STREAM_TAG))


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale=SCALE,
                            ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random box of an image, as torchvision's RandomResizedCrop
    chooses it: up to ten tries of an area share from `scale` and a log-uniform aspect ratio from
    `ratio` that fits; then the centre crop of the image clamped to the ratios.

    Args:
        rng: the sample's generator (`sample_rng`).
        height, width: the image's size.

    Example:
        >>> random_resized_crop_box(sample_rng(0, 1, 0), 375, 500)   # e.g. (41, 103, 290, 315)
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(TRIES):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif aspect > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def centre_crop_geometry(height: int, width: int, size: tuple, crop_fraction: float = CROP_FRACTION):
    """((resized height, resized width), (top, left)): the image resized so that it covers
    size / crop_fraction (for a square size, its short side to round(size / crop_fraction) and the
    long side in proportion, rounded down), and the top-left corner of the centred crop of `size`.

    Example:
        >>> centre_crop_geometry(375, 500, (224, 224))
        ((256, 341), (16, 58))
    """
    h, w = size
    cover_h, cover_w = int(round(h / crop_fraction)), int(round(w / crop_fraction))
    if cover_h * width >= cover_w * height:  # the height binds
        new_h, new_w = cover_h, int(cover_h * width / height)
    else:
        new_h, new_w = int(cover_w * height / width), cover_w
    return (new_h, new_w), (int(round((new_h - h) / 2.0)), int(round((new_w - w) / 2.0)))


def source_box(transform: Transform, height: int, width: int, rng=None) -> tuple:
    """(left, top, right, bottom): the region of an image of (height, width) that becomes the
    sample, in its pixels: a random-resized-crop box (drawn from `rng`), the whole image, or the
    region that the centre crop of the resized image covers (fractional).

    Example:
        >>> source_box(Transform((224, 224)), 375, 500)     # 256 x 341, then the centre 224 x 224
        (85.04..., 23.43..., 413.48..., 351.56...)
    """
    out_h, out_w = transform.size
    if transform.resized_crop:
        top, left, h, w = random_resized_crop_box(rng, height, width)
        return left, top, left + w, top + h
    if transform.crop_fraction is None:
        return 0, 0, width, height
    (new_h, new_w), (top, left) = centre_crop_geometry(height, width, transform.size, transform.crop_fraction)
    sy, sx = height / new_h, width / new_w
    return left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy


def _resample(Image, image, transform, box, scale=(1.0, 1.0)):
    """The `box` of `image` resized to the transform's size, bilinear; `scale` is how much smaller
    the image is than the one the box was chosen on (a JPEG decoded at a reduced scale)."""
    out_h, out_w = transform.size
    if transform.resized_crop and scale == (1.0, 1.0):  # cropped, then resized: torchvision's, to the bit
        return image.crop(box).resize((out_w, out_h), bilinear(Image))
    box = (box[0] * scale[0], box[1] * scale[1], box[2] * scale[0], box[3] * scale[1])
    if box == (0, 0, *image.size) and image.size == (out_w, out_h):
        return image
    # the filter reads the pixels around the box too, as a resize of the whole image followed by a crop
    return image.resize((out_w, out_h), bilinear(Image), box=box)


def transform_image(Image, image, transform: Transform, grayscale: bool, rng=None) -> np.ndarray:
    """A PIL image as uint8 (H, W) when grayscale else (H, W, 3), transformed: the training
    transforms draw from `rng` (the box, then the flip).

    Args:
        Image: the PIL.Image module.
        image: an opened PIL image of any mode and size.
        transform: what to do (a Transform).
        grayscale: one channel (True) or three.
        rng: the sample's generator, needed when transform.random.

    Example:
        >>> with Image.open("cat.jpg") as im:
        ...     x = transform_image(Image, im, Transform((224, 224), True, True), False, sample_rng(0, 1, 5))
    """
    box = source_box(transform, image.size[1], image.size[0], rng)
    return _flipped(np.asarray(_resample(Image, convert_mode(Image, image, grayscale), transform, box),
                               dtype=np.uint8), transform, rng)


def _flipped(array, transform, rng):
    return array[:, ::-1] if transform.flip and rng.random() < 0.5 else array


def decode_into(Image, path, out: np.ndarray, transform: Transform, rng=None) -> None:
    """Decode the image file at `path` into `out` (uint8 (C, H, W), C 1 or 3), transformed as
    `transform_image` does. A JPEG whose region shrinks by 2 or more under a crop (random-resized
    or centre) is decoded at a reduced scale (1/2, 1/4 or 1/8: Pillow's draft, the DCT scaled),
    still at least the sample's size: much less work for large photos, and pixels within a few
    levels of a full decode. Stretched to the size (crop_fraction None), an image is decoded whole,
    as a folder decoded into memory is.

    Args:
        Image: the PIL.Image module.
        path: the image file.
        out: where the sample goes; its channels decide grey or colour.
        transform, rng: as for `transform_image`.

    Example:
        >>> sample = np.empty((3, 224, 224), np.uint8)
        >>> decode_into(Image, "cat.jpg", sample, Transform((224, 224)))   # resized and centre-cropped
    """
    with Image.open(path) as image:
        width, height = image.size
        box = source_box(transform, height, width, rng)
        shrink = min((box[2] - box[0]) / transform.size[1], (box[3] - box[1]) / transform.size[0])
        if shrink >= 2 and (transform.resized_crop or transform.crop_fraction is not None):
            image.draft(None, (math.ceil(width / shrink), math.ceil(height / shrink)))
        image.load()
        scale = (image.size[0] / width, image.size[1] / height)
        sample = _resample(Image, convert_mode(Image, image, out.shape[0] == 1), transform, box, scale)
        out[:] = to_chw(_flipped(np.asarray(sample, dtype=np.uint8), transform, rng))
