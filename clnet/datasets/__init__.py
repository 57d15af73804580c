"""Datasets: the bundled MNIST-5k, known datasets by name (found on disk or downloaded and
verified), readers for the common formats, packs, streamed image folders, and feeding the device."""

from .arrays import load_arrays
from .bundled import load_mnist_5k
from .cifar import load_cifar
from .dataset import Dataset
from .folder import ImageFolder
from .idx import load_idx_pair, read_idx
from .inputs import fit_array, match_channels, read_array_file, read_image, read_inputs
from .packed import open_pack, pack
from .registry import DATASETS, cache_dir, fetch, load, locate
from .stream import ImageStream

__all__ = ["DATASETS", "Dataset", "ImageFolder", "ImageStream", "cache_dir", "fetch", "fit_array", "load",
           "load_arrays", "load_cifar", "load_idx_pair", "load_mnist_5k", "locate", "match_channels", "open_pack",
           "pack", "read_array_file", "read_idx", "read_image", "read_inputs"]
