"""Data loaders: bundled digits, sphere, IDX and CIFAR binary parsing, clear errors."""

import gzip
import struct

import numpy as np
import pytest

from ntk_ode import data


def test_digits_on_sphere_and_deterministic():
    x, y = data.digits((0, 1), n=50, seed=3)
    assert x.shape == (50, 64) and set(np.unique(y)) == {-1.0, 1.0}
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    x2, _ = data.digits((0, 1), n=50, seed=3)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match="classes"):
        data.digits((1, 1))


def test_teacher_and_split():
    x, y = data.teacher(40, 5, seed=1)
    assert abs(y.mean()) < 1e-12
    a, b, c, d = data.train_test_split(x, y, 0.25, seed=0)
    assert len(a) == 30 and len(c) == 10
    with pytest.raises(ValueError, match="zero row"):
        data.to_sphere(np.zeros((2, 3)))


def test_mnist_idx(tmp_path):
    imgs = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([7, 1, 7], dtype=np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 3, 28, 28) + imgs.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 3) + labels.tobytes())
    x, t = data.mnist(str(tmp_path))
    assert x.shape == (3, 784) and list(t) == [7, 1, 7]
    np.testing.assert_allclose(x[0, :3], np.array([0, 1, 2]) / 255)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        data.mnist(str(tmp_path), "test")
    xb, yb = data.binary_task(x, t, (7, 1))
    assert list(yb[np.argsort(yb)]) == [-1.0, 1.0, 1.0]


def test_cifar_binary(tmp_path):
    rec = np.zeros((4, 3073), dtype=np.uint8)
    rec[:, 0] = [3, 5, 3, 9]
    rec[:, 1] = 255
    rec.tofile(tmp_path / "test_batch.bin")
    x, t = data.cifar10(str(tmp_path), "test")
    assert x.shape == (4, 3072) and list(t) == [3, 5, 3, 9] and x[0, 0] == 1.0
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        data.cifar10(str(tmp_path), "train")
    (tmp_path / "bad").mkdir()
    np.zeros(100, np.uint8).tofile(tmp_path / "bad" / "test_batch.bin")
    with pytest.raises(ValueError, match="3073"):
        data.cifar10(str(tmp_path / "bad"), "test")
