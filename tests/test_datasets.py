"""The offline data sets: the shipped MNIST test images and their fixed split, half-moons."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from memlab import datasets
from memlab.datasets import DataFileError, half_moons, load_mnist


def test_mnist_shapes_types_and_ranges():
    s = load_mnist()
    assert s.x_train.shape == (8000, 784) and s.x_test.shape == (2000, 784)
    assert s.y_train.shape == (8000,) and s.y_test.shape == (2000,)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    for x in (s.x_train, s.x_test):
        assert x.min() == 0.0 and x.max() == 1.0  # scaled, not normalised
    # a digit is mostly background
    assert 0.05 < s.x_train.mean().item() < 0.25


def test_mnist_label_counts():
    s = load_mnist()
    counts = torch.bincount(torch.cat([s.y_train, s.y_test]), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # a random split keeps every digit in both parts
    assert torch.bincount(s.y_test, minlength=10).min() > 100


def test_mnist_split_disjoint_covering_and_consistent_with_indices():
    s = load_mnist()
    train, test = set(s.train_indices.tolist()), set(s.test_indices.tolist())
    assert len(train) == 8000 and len(test) == 2000
    assert not train & test
    assert train | test == set(range(10000))
    x_all, y_all = datasets._mnist_arrays()
    assert np.array_equal(s.x_test.numpy(), x_all[s.test_indices])
    assert np.array_equal(s.y_train.numpy(), y_all[s.train_indices])


def test_mnist_split_is_deterministic_and_seeded():
    a, b, c = load_mnist(0), load_mnist(0), load_mnist(1)
    assert np.array_equal(a.test_indices, b.test_indices)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not np.array_equal(a.test_indices, c.test_indices)


def test_mnist_tensors_are_fresh_copies():
    a = load_mnist()
    a.x_train.zero_()
    assert load_mnist().x_train.max() == 1.0


def test_idx_reader_rejects_wrong_magic_and_size(tmp_path):
    good = datasets.MNIST_DIR / datasets.MNIST_LABELS
    raw = gzip.open(good).read()
    bad_magic = tmp_path / "magic.gz"
    bad_magic.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + raw[4:]))
    with pytest.raises(DataFileError, match="magic"):
        datasets._read_idx(bad_magic, 0x801, (10000,))
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(DataFileError, match="data bytes"):
        datasets._read_idx(short, 0x801, (10000,))


def test_half_moons_shapes_labels_and_range():
    m = half_moons()
    assert m.x_train.shape == (875, 2) and m.x_test.shape == (200, 2)
    assert m.y_train.shape == (875,) and m.y_test.shape == (200,)
    assert m.x_train.dtype == torch.float32 and m.y_train.dtype == torch.float32
    y = torch.cat([m.y_train, m.y_test])
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert int(y.sum()) == (875 + 200) - (875 + 200) // 2  # sklearn: the inner moon takes the odd point
    x = torch.cat([m.x_train, m.x_test])
    assert torch.allclose(x.min(dim=0).values, torch.zeros(2)) and torch.allclose(x.max(dim=0).values, torch.ones(2))


def test_half_moons_deterministic_and_seeded():
    a, b, c = half_moons(), half_moons(), half_moons(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_half_moons_geometry_without_scaling():
    m = half_moons(n_train=500, n_test=100, noise=0.0, scale=False)
    x = torch.cat([m.x_train, m.x_test]).double()
    y = torch.cat([m.y_train, m.y_test])
    outer, inner = x[y == 0], x[y == 1]
    # outer moon: unit half circle centred at (0, 0); inner: centred at (1, 0.5), opening upwards
    assert torch.allclose(outer.norm(dim=1), torch.ones(len(outer), dtype=torch.float64), atol=1e-6)
    assert torch.allclose((inner - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1),
                          torch.ones(len(inner), dtype=torch.float64), atol=1e-6)
    assert (outer[:, 1] >= -1e-6).all() and (inner[:, 1] <= 0.5 + 1e-6).all()


def test_half_moons_noise_level():
    clean = half_moons(noise=0.0, scale=False)
    noisy = half_moons(noise=0.1, scale=False)
    # same seed, same shuffle: the difference is the noise alone
    diff = torch.cat([noisy.x_train - clean.x_train, noisy.x_test - clean.x_test])
    assert diff.std().item() == pytest.approx(0.1, rel=0.1)
