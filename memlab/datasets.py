"""The data sets the reproductions train on, all available offline.

- MNIST: only the 10,000 test images ship with memlab (`memlab/data/mnist-t10k/`, LeCun,
  Cortes, Burges, CC BY-SA 3.0). They are split 8,000 train / 2,000 test with a fixed seed;
  every MNIST figure memlab reports says so.
- Half-moons: two interleaving half circles, generated with a fixed seed.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

MNIST_DIR = Path(__file__).parent / "data" / "mnist-t10k"
MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "t10k-labels-idx1-ubyte.gz"
MNIST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
MNIST_TRAIN = 8000
MNIST_TEST = 2000
MNIST_NOTE = (
    "MNIST: the 10,000 MNIST test images split 8,000 train / 2,000 test with a fixed seed "
    "(the 60k training set is not available offline)"
)

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


@dataclass(frozen=True)
class DataSplit:
    """Train and test tensors: x float32 (n, features); y as documented by the loader."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class MnistSplit(DataSplit):
    """x: float32 (n, 784) in [0, 1], not normalised; y: int64 digits 0-9. The indices say
    which of the 10,000 shipped images went where."""

    train_indices: np.ndarray
    test_indices: np.ndarray


class DataFileError(ValueError):
    """A shipped data file that is not what it should be."""


def _read_idx(path: Path, magic: int, dims: tuple[int, ...]) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header = 4 * (1 + len(dims))
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header")
    found = np.frombuffer(raw[:header], dtype=">u4")
    if int(found[0]) != magic:
        raise DataFileError(f"{path}: magic number {int(found[0]):#010x}, expected {magic:#010x}")
    if tuple(int(d) for d in found[1:]) != dims:
        raise DataFileError(f"{path}: dimensions {tuple(int(d) for d in found[1:])}, expected {dims}")
    if len(raw) != header + int(np.prod(dims)):
        raise DataFileError(f"{path}: {len(raw) - header} data bytes, expected {int(np.prod(dims))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Decoded once per process: images float32 (10000, 784) in [0, 1], labels int64."""
    images = _read_idx(MNIST_DIR / MNIST_IMAGES, _IMAGES_MAGIC, (10000, 28, 28))
    labels = _read_idx(MNIST_DIR / MNIST_LABELS, _LABELS_MAGIC, (10000,))
    counts = tuple(int(c) for c in np.bincount(labels, minlength=10))
    if counts != MNIST_LABEL_COUNTS:
        raise DataFileError(f"{MNIST_DIR / MNIST_LABELS}: label counts {counts}, expected {MNIST_LABEL_COUNTS}")
    x = (images.reshape(10000, 784).astype(np.float32) / 255.0)
    y = labels.astype(np.int64)
    # read-only: the cache is shared by every caller
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist(split_seed: int = 0) -> MnistSplit:
    """The shipped 10,000 MNIST test images, split 8,000 train / 2,000 test by a permutation
    drawn with `split_seed`. Returns fresh tensors each call (the decoded files are cached)."""
    x, y = _mnist_arrays()
    order = np.random.default_rng(split_seed).permutation(len(y))
    train, test = np.sort(order[:MNIST_TRAIN]), np.sort(order[MNIST_TRAIN:])
    return MnistSplit(
        x_train=torch.from_numpy(x[train]),
        y_train=torch.from_numpy(y[train]),
        x_test=torch.from_numpy(x[test]),
        y_test=torch.from_numpy(y[test]),
        train_indices=train,
        test_indices=test,
    )


def make_moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's `make_moons` (outer moon label 0, inner moon label 1, shuffled, then
    Gaussian noise of sd `noise`), with a numpy Generator: same distribution, other draws."""
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    x = np.concatenate([
        np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
        np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], axis=1),
    ])
    y = np.concatenate([np.zeros(n_out), np.ones(n_in)])
    order = rng.permutation(n)
    x, y = x[order], y[order]
    return x + rng.normal(scale=noise, size=x.shape), y


def half_moons(
    n_train: int = 875, n_test: int = 200, noise: float = 0.05, seed: int = 42, scale: bool = True
) -> DataSplit:
    """The two interleaving half-moons, as in Drolet et al.'s 3it-inpaqt code
    (`dataset/moon_dataset.py`: `make_moons(noise=0.05, random_state=42)`, then
    `MinMaxScaler` on all points), with memlab's 875 / 200 split.

    n_train + n_test points are drawn together with `seed`; with `scale` each feature is
    min-max scaled to [0, 1] over all of them (as the authors did) before the split.
    x: float32 (n, 2); y: float32 (n,) with values 0 and 1 (for binary cross-entropy).
    """
    if n_train < 1 or n_test < 1:
        raise ValueError("n_train and n_test must be positive")
    if noise < 0:
        raise ValueError("noise must be >= 0")
    x, y = make_moons(n_train + n_test, noise, np.random.default_rng(seed))
    if scale:
        lo, hi = x.min(axis=0), x.max(axis=0)
        x = (x - lo) / (hi - lo)
    x = torch.from_numpy(x.astype(np.float32))
    y = torch.from_numpy(y.astype(np.float32))
    return DataSplit(x[:n_train], y[:n_train], x[n_train:], y[n_train:])
