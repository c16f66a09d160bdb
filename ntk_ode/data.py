"""Data sets: points on the unit sphere (Assumption 1), bundled digits, synthetic teachers."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
from jaxtyping import ArrayLike

from ._checks import positive_int

__all__ = [
    "load_matrix",
    "load_text",
    "to_sphere",
    "digits",
    "sphere",
    "teacher",
    "binary_task",
    "train_test_split",
    "mnist",
    "cifar10",
]


def to_sphere(x: ArrayLike) -> np.ndarray:
    """Rows scaled to unit Euclidean norm.

    Args:
        x: data (N, d).

    Returns:
        The rows divided by their norms (float64).

    Raises:
        ValueError: x is not 2-d, is not finite or has an all-zero row.
    """
    x = np.asarray(x, float)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, d), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains non-finite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("x has an all-zero row, which cannot be put on the sphere")
    return x / norms


def digits(
    classes: Sequence[int] = (0, 1), n: int | None = None, seed: int = 0, center: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits bundled with scikit-learn (offline): two classes, targets +-1, on the sphere.

    Pixels are centred by the mean image (so that the data are not all in one orthant) and each
    image is scaled to unit norm. ``n`` points are drawn deterministically by ``seed``.

    Args:
        classes: two distinct digits in 0..9; the first gets target +1.
        n: number of points (default all, about 360).
        seed: the draw.
        center: subtract the mean image first.

    Returns:
        ``(x (n, 64), y (n,))``.

    Raises:
        ValueError: classes are not two distinct digits in 0..9, or n is too large.
    """
    from sklearn.datasets import load_digits

    if len(classes) != 2 or classes[0] == classes[1] or not all(int(c) == c and 0 <= c <= 9 for c in classes):
        raise ValueError(f"classes must be two distinct digits in 0..9, got {classes!r}")
    ds = load_digits()
    keep = np.isin(ds.target, classes)
    x, t = ds.data[keep].astype(float), ds.target[keep]
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    y = np.where(t == classes[0], 1.0, -1.0)
    idx = np.random.default_rng(seed).permutation(len(x))
    if n is not None:
        n = positive_int("n", n)
        if n > len(x):
            raise ValueError(f"n={n} exceeds the {len(x)} available digits of classes {classes}")
        idx = idx[:n]
    return to_sphere(x[idx]), y[idx]


def sphere(N: int, d: int, seed: int = 0) -> np.ndarray:
    """N uniform points on the unit sphere in R^d.

    Args:
        N: number of points.
        d: dimension.
        seed: the draw.

    Returns:
        Points (N, d).

    Raises:
        ValueError: N or d is not a positive integer.
    """
    N, d = positive_int("N", N), positive_int("d", d)
    return to_sphere(np.random.default_rng(seed).standard_normal((N, d)))


def teacher(N: int, d: int, seed: int = 0, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Points on the sphere with a smooth non-linear teacher target ``y = tanh(2 a.x) + (b.x)^2 - mean``.

    Args:
        N: number of points.
        d: dimension.
        seed: the draw (points, directions a and b, noise).
        noise: standard deviation of Gaussian noise added to y.

    Returns:
        ``(x (N, d), y (N,))``.

    Raises:
        ValueError: N or d is not a positive integer, or noise is negative or not finite.
    """
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    x = sphere(N, d, seed)
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    a /= np.linalg.norm(a)
    b /= np.linalg.norm(b)
    y = np.tanh(2 * x @ a) + (x @ b) ** 2
    y = y - y.mean() + noise * rng.standard_normal(N)
    return x, y


def binary_task(
    x: ArrayLike, labels: ArrayLike, classes: Sequence[int] = (0, 1), n: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Keep two classes, targets +1 / -1, rows centred and on the sphere, ``n`` drawn deterministically.

    Args:
        x: samples (N, ...), flattened to rows.
        labels: their labels (N,).
        classes: the two classes kept; the first gets +1.
        n: number of points (default all).
        seed: the draw.

    Returns:
        ``(x (n, D), y (n,))``.

    Raises:
        ValueError: no sample of the classes.
    """
    xa = np.asarray(x, float)
    x = xa.reshape(xa.shape[0], -1)
    labels = np.asarray(labels)
    keep = np.isin(labels, classes)
    if keep.sum() == 0:
        raise ValueError(f"no samples of classes {classes}")
    x, t = x[keep], labels[keep]
    idx = np.random.default_rng(seed).permutation(len(x))[: n or len(x)]
    return to_sphere(x[idx] - x.mean(axis=0)), np.where(t[idx] == classes[0], 1.0, -1.0)


def train_test_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random split, deterministic by ``seed``.

    Args:
        x: inputs (N, ...).
        y: targets (N, ...).
        test_fraction: share of the test set, in (0, 1).
        seed: the permutation.

    Returns:
        ``(x_train, y_train, x_test, y_test)``.

    Raises:
        ValueError: test_fraction outside (0, 1).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    idx = np.random.default_rng(seed).permutation(len(x))
    k = int(round(len(x) * (1 - test_fraction)))
    return x[idx[:k]], y[idx[:k]], x[idx[k:]], y[idx[k:]]


_MNIST = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path):
    import gzip
    import struct

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def mnist(folder: str, split: Literal["train", "test"] = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from the standard IDX files (gzipped or not) in ``folder``.

    Args:
        folder: where ``train-images-idx3-ubyte.gz`` etc. are.
        split: "train" or "test".

    Returns:
        Images (N, 784) in [0, 1] and labels (N,).

    Raises:
        ValueError: an unknown split, or a file that is not IDX or is truncated.
        FileNotFoundError: the files are missing.
    """
    import os

    if split not in _MNIST:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    paths = [os.path.join(folder, f) for f in _MNIST[split]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"MNIST {split} files not found in {folder!r}: expected {', '.join(_MNIST[split])}")
    images, labels = (_read_idx(p) for p in paths)
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images.reshape(len(images), -1).astype(float) / 255.0, labels.astype(int)


def cifar10(folder: str, split: Literal["train", "test"] = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from its binary version (plain bytes; nothing is unpickled).

    Args:
        folder: where ``data_batch_1.bin`` etc. are (or their ``cifar-10-batches-bin`` folder).
        split: "train" or "test".

    Returns:
        Images (N, 3072) in [0, 1] and labels (N,).

    Raises:
        ValueError: an unknown split or a malformed batch file.
        FileNotFoundError: the files are missing.
    """
    import os

    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for base in (folder, os.path.join(folder, "cifar-10-batches-bin")):
        paths = [os.path.join(base, n) for n in names]
        if all(os.path.exists(p) for p in paths):
            break
    else:
        raise FileNotFoundError(
            f"CIFAR-10 {split} files not found in {folder!r}: expected {', '.join(names)} "
            "(the 'binary version' of CIFAR-10)"
        )
    xs, ys = [], []
    for p in paths:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size % 3073:
            raise ValueError(f"{p} is not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)")
        rec = raw.reshape(-1, 3073)
        ys.append(rec[:, 0].astype(int))
        xs.append(rec[:, 1:].astype(float) / 255.0)
    return np.concatenate(xs), np.concatenate(ys)


def load_matrix(path: str) -> np.ndarray:
    """A data matrix (one input per row) from .npy (no pickles) or delimited text.

    Text files (.csv, .tsv, .txt): the delimiter (``,``, ``;``, tab or space) and a header row
    are detected; ``#`` lines are comments.

    Args:
        path: the file.

    Returns:
        The 2-d numeric array.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another extension, a pickle or a non-numeric, ragged or non-2-d array.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if path.endswith(".npy"):
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(
                f"{path} is not a numeric .npy array ({type(e).__name__}); save it with numpy.save from a float array"
            ) from None
    elif path.endswith((".csv", ".tsv", ".txt")):
        x = load_text(path)
    else:
        raise ValueError(f"{path}: expected a .npy, .csv, .tsv or .txt file")
    if x.ndim == 2 and x.dtype.kind == "f" and x.dtype.itemsize < 8:
        x = x.astype(np.float64)  # float16/float32 files: computed in float64 from the stored values
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise ValueError(
            f"{path}: expected a 2-d numeric array (one input per row), got shape {x.shape}, dtype {x.dtype}"
        )
    return x


def load_text(path: str) -> np.ndarray:
    """A numeric matrix from delimited text (see :func:`load_matrix`).

    Args:
        path: the file.

    Returns:
        The 2-d float array.

    Raises:
        ValueError: no rows, ragged rows or a non-numeric row (named by its number).
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path} holds no data rows")
    try:
        delim = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t ").delimiter
    except csv.Error:
        delim = ","
    rows = [
        [c.strip() for c in csv.reader([ln], delimiter=delim, skipinitialspace=True).__next__() if c.strip()]
        for ln in lines
    ]

    def numeric(row):
        try:
            [float(c) for c in row]
            return True
        except ValueError:
            return False

    if not numeric(rows[0]) and len(rows) > 1 and numeric(rows[1]):
        rows = rows[1:]  # a header row
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)} (delimiter {delim!r})")
    bad = next((i for i, r in enumerate(rows) if not numeric(r)), None)
    if bad is not None:
        raise ValueError(f"{path}: row {bad + 1} is not numeric: {rows[bad][:5]}")
    return np.array([[float(c) for c in r] for r in rows])
