"""Digit images for the classification experiment: scikit-learn's bundled 8x8 digits, or MNIST from IDX files.

Both come back as a :class:`DigitImages` with a train and a test split of ``(N, H, H)`` float images,
scaled to [0, 1] and then standardised with the train split's mean and standard deviation, and integer
labels 0-9.

- ``"digits"`` (the default): the 1797 8x8 images that scikit-learn ships, so nothing is downloaded.
  They have no official split; :func:`load_digits_images` splits every class in half, at random under
  the given generator.
- ``"mnist"``: the four standard MNIST files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``), read by
  :func:`read_idx`. They are looked for in ``data_dir``, ``data_dir/raw`` and ``data_dir/MNIST/raw``
  (where ``torchvision.datasets.MNIST(root=data_dir)`` keeps them), so a folder torchvision once filled
  works as it is. Nothing is downloaded. (We read the files ourselves rather than through torchvision:
  PyPI's torchvision 0.28.0 wheel links the CUDA build of torch and fails to load beside torch 2.13.0's
  CPU build, ``operator torchvision::nms does not exist``.)
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("digits", "mnist")

#: IDX type codes (the third byte of the magic number) and their big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class DigitImages:
    """A train and a test split of square grey-scale digit images with labels 0-9."""

    name: str
    train_images: torch.Tensor  # (N, H, H) float32, standardised
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dim() != 3 or images.shape[1] != images.shape[2]:
                raise ValueError(f"{self.name}: {split} images must have shape (N, H, H), got {tuple(images.shape)}.")
            if labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{self.name}: {split} split has {images.shape[0]} images but labels of shape {tuple(labels.shape)}."
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in size.")

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])


def _standardise(train: np.ndarray, test: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    train = train.astype(np.float32) / scale
    test = test.astype(np.float32) / scale
    mean, std = float(train.mean()), float(train.std())
    return torch.from_numpy((train - mean) / std), torch.from_numpy((test - mean) / std)


def load_digits_images(generator: torch.Generator) -> DigitImages:
    """scikit-learn's 8x8 digits (pixel values 0-16), each class split in half at random into train and test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        order = idx[torch.randperm(len(idx), generator=generator).numpy()]
        train_idx.append(order[: len(idx) // 2])
        test_idx.append(order[len(idx) // 2:])
    train_idx, test_idx = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    train, test = _standardise(images[train_idx], images[test_idx], 16.0)
    return DigitImages("digits", train, torch.from_numpy(labels[train_idx]), test, torch.from_numpy(labels[test_idx]))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the format of the MNIST files; gzip-compressed if the name ends in ``.gz``).

    The header is two zero bytes, a type code, the number of dimensions d, then d big-endian 32-bit
    sizes; the data follow in C order.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: the header says {shape} ({expected} bytes of data) but {len(data) - header} follow.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_mnist_file(data_dir: str | os.PathLike, stem: str) -> str:
    """The path of one MNIST file (``stem`` or ``stem.gz``) in ``data_dir``, ``data_dir/raw`` or ``data_dir/MNIST/raw``."""
    folders = [os.fspath(data_dir), os.path.join(data_dir, "raw"), os.path.join(data_dir, "MNIST", "raw")]
    for folder in folders:
        for name in (stem, stem + ".gz"):
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {folders}. Nothing is downloaded: put the four MNIST files "
        f"({', '.join(MNIST_FILES.values())}) into --data-dir, or use the bundled digits (--data digits)."
    )


def load_mnist_images(data_dir: str | os.PathLike) -> DigitImages:
    """MNIST's train (60000) and test (10000) splits from the IDX files in ``data_dir`` (see :func:`find_mnist_file`)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {os.fspath(data_dir)!r} is not a folder; it must hold the MNIST files.")
    arrays = {key: read_idx(find_mnist_file(data_dir, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(f"MNIST {split} files must hold (N, H, W) images and (N,) labels, "
                             f"got {images.shape} and {labels.shape}.")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"MNIST {split} labels must be digits 0-9, got values in [{labels.min()}, {labels.max()}].")
    train, test = _standardise(arrays["train_images"], arrays["test_images"], 255.0)
    return DigitImages(
        "mnist", train, torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test, torch.from_numpy(arrays["test_labels"].astype(np.int64)),
    )


def write_idx(path: str | os.PathLike, array: np.ndarray) -> str:
    """Write ``array`` (uint8, or another IDX type) as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    The inverse of :func:`read_idx`: tests and users make small MNIST-format files with it.
    """
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype)
    if code is None:
        raise ValueError(f"IDX has no type for dtype {array.dtype}; use one of {sorted(str(d) for d in codes)}.")
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


def load_images(name: str, generator: torch.Generator, data_dir: str | os.PathLike | None = None) -> DigitImages:
    """The data set ``name`` (one of :data:`DATASETS`); ``data_dir`` is needed for MNIST."""
    if name == "digits":
        return load_digits_images(generator)
    if name == "mnist":
        if data_dir is None:
            raise ValueError("--data mnist needs --data-dir DIR holding the MNIST IDX files (nothing is downloaded).")
        return load_mnist_images(data_dir)
    raise ValueError(f"Unknown data set {name!r}; choose one of {list(DATASETS)}.")


__all__ = [
    "DATASETS",
    "MNIST_FILES",
    "DigitImages",
    "find_mnist_file",
    "load_digits_images",
    "load_images",
    "load_mnist_images",
    "read_idx",
    "write_idx",
]
