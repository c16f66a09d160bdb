"""Data sets: points on the unit sphere (Assumption 1), bundled digits, synthetic teachers."""

from __future__ import annotations

import numpy as np

__all__ = ["to_sphere", "digits", "sphere"]


def to_sphere(x):
    """Rows scaled to unit Euclidean norm (rows of zeros are rejected)."""
    x = np.asarray(x, float)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, d), got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("x has an all-zero row, which cannot be put on the sphere")
    return x / norms


def digits(classes=(0, 1), n: int | None = None, seed: int = 0, center: bool = True):
    """The 8x8 digits bundled with scikit-learn (offline): two classes, targets +-1, on the sphere.

    Pixels are centred by the mean image (so that the data are not all in one orthant) and each
    image is scaled to unit norm. ``n`` points are drawn deterministically by ``seed``.
    """
    from sklearn.datasets import load_digits

    if len(classes) != 2 or classes[0] == classes[1]:
        raise ValueError(f"classes must be two distinct digits, got {classes!r}")
    ds = load_digits()
    keep = np.isin(ds.target, classes)
    x, t = ds.data[keep].astype(float), ds.target[keep]
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    y = np.where(t == classes[0], 1.0, -1.0)
    idx = np.random.default_rng(seed).permutation(len(x))
    if n is not None:
        if n > len(x):
            raise ValueError(f"n={n} exceeds the {len(x)} available digits of classes {classes}")
        idx = idx[:n]
    return to_sphere(x[idx]), y[idx]


def sphere(N: int, d: int, seed: int = 0):
    """N uniform points on the unit sphere in R^d."""
    return to_sphere(np.random.default_rng(seed).standard_normal((N, d)))
