"""Solving with a kernel matrix held in memory or memory-mapped on disk.

:func:`kernel_solve` solves ``(K + ridge I) alpha = y`` by Cholesky when K fits in memory, else by
conjugate gradients over row blocks (:func:`kernel_matvec`), after :func:`check_symmetric`.
:mod:`ntk_ode.predict` re-exports all three.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = ["KernelSolve", "kernel_matvec", "check_symmetric", "kernel_solve"]


class KernelSolve(NamedTuple):
    """The solution of ``(K + ridge I) alpha = y`` from :func:`kernel_solve`.

    Attributes:
        alpha: (N,) or (N, k) coefficients.
        residual: relative residual ``|(K + ridge I) alpha - y| / |y|`` per column (k,).
        iterations: conjugate-gradient iterations (0 for Cholesky).
        method: "cholesky" or "cg".
    """

    alpha: np.ndarray
    residual: np.ndarray
    iterations: int
    method: str


def kernel_matvec(k: Any, v: Any, block: int = 4096) -> np.ndarray:
    """``k @ v`` for a kernel matrix held in memory or memory-mapped on disk, ``block`` rows at a
    time (a memory-mapped kernel is read once per call and never copied whole).

    Args:
        k: (M, N) array or ``numpy.memmap``.
        v: (N,) or (N, c).
        block: rows read at once.

    Returns:
        (M,) or (M, c) float64.

    Raises:
        ValueError: the shapes do not match.
    """
    v = np.asarray(v, np.float64)
    if k.ndim != 2 or k.shape[1] != v.shape[0]:
        raise ValueError(f"k must have shape (M, {v.shape[0]}), got {k.shape}")
    out = np.empty((k.shape[0],) + v.shape[1:])
    for i in range(0, k.shape[0], block):
        out[i : i + block] = np.asarray(k[i : i + block], np.float64) @ v
    return out


def check_symmetric(k: Any, rtol: float = 1e-8, samples: int = 4096) -> None:
    """Refuse a kernel that is not symmetric: all entries when it is small, else ``samples``
    random pairs ``(i, j)`` and ``(j, i)`` (a memory-mapped K is never read whole here).

    Args:
        k: (N, N) array or ``numpy.memmap``.
        rtol: tolerated ``|K_ij - K_ji|`` relative to the largest entry compared.
        samples: pairs compared when N^2 exceeds 4 ``samples``.

    Raises:
        ValueError: an asymmetry above ``rtol``, with its size and place.
    """
    N = k.shape[0]
    if N * N <= 4 * samples:
        K = np.asarray(k, np.float64)
        i, j = np.triu_indices(N, 1)
        a, b = K[i, j], K[j, i]
    else:
        rng = np.random.default_rng(0)
        i, j = rng.integers(0, N, samples), rng.integers(0, N, samples)
        a = np.array([float(k[p, q]) for p, q in zip(i, j)])
        b = np.array([float(k[q, p]) for p, q in zip(i, j)])
    if a.size == 0:
        return
    with np.errstate(invalid="ignore"):
        gap = np.abs(a - b)
        scale = max(float(np.nanmax(np.abs(np.concatenate([a, b])))), 1e-300)
    worst = int(np.nanargmax(gap)) if np.any(np.isfinite(gap)) else 0
    if np.nanmax(gap, initial=0.0) > rtol * scale:
        raise ValueError(
            f"k is not symmetric: |K[{i[worst]}, {j[worst]}] - K[{j[worst]}, {i[worst]}]| = {gap[worst]:.3g} "
            f"(relative {gap[worst] / scale:.1e}); a kernel matrix must be symmetric"
        )


def kernel_solve(
    k: Any,
    y: Any,
    ridge: float = 0.0,
    *,
    method: Literal["auto", "cholesky", "cg"] = "auto",
    tol: float = 1e-10,
    maxiter: int | None = None,
    block: int = 4096,
    memory_limit: float = 4 * 2**30,
) -> KernelSolve:
    """Solve ``(K + ridge I) alpha = y`` for kernel regression at scale (docs/theory.md section 14).

    ``method="auto"`` uses a Cholesky factorization when K fits in ``memory_limit`` bytes, else
    conjugate gradients with a Jacobi (diagonal) preconditioner, one product with K per
    iteration through :func:`kernel_matvec`, so a memory-mapped K (:mod:`ntk_ode.tiles`) is never
    copied whole. The relative residuals are reported; CG that stops at ``maxiter`` short of
    ``tol`` warns.

    Args:
        k: (N, N) symmetric positive (semi)definite kernel, array or ``numpy.memmap``.
        y: targets (N,) or (N, c).
        ridge: added to the diagonal (>= 0).
        method: "auto", "cholesky" or "cg".
        tol: CG's target relative residual per column.
        maxiter: CG's most iterations (default 10 N).
        block: rows read at once by CG.
        memory_limit: bytes up to which "auto" chooses Cholesky.

    Returns:
        A :class:`KernelSolve`.

    Raises:
        ValueError: bad shapes or options, a complex, non-finite or non-symmetric k, non-finite
            y, or a Cholesky factorization that fails (not positive definite: add ``ridge``).

    Warns:
        RuntimeWarning: CG did not reach ``tol``.
    """
    if method not in ("auto", "cholesky", "cg"):
        raise ValueError(f"method must be 'auto', 'cholesky' or 'cg', got {method!r}")
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if not (np.isfinite(tol) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if not hasattr(k, "ndim"):
        k = np.asarray(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"k must be a square (N, N) matrix with N >= 1, got shape {k.shape}")
    if np.dtype(k.dtype).kind not in "biuf":
        raise ValueError(f"k must be a real array, got dtype {k.dtype}")
    N = k.shape[0]
    y = np.asarray(y)
    if np.dtype(y.dtype).kind not in "biuf":
        raise ValueError(f"y must be a real array, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != N:
        raise ValueError(f"y must have shape ({N},) or ({N}, c), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains non-finite values")
    Y = y.reshape(N, -1)
    check_symmetric(k)
    if method == "auto":
        method = "cholesky" if 8.0 * N * N <= memory_limit else "cg"
    if method == "cholesky":
        K = np.array(k, np.float64)
        if not np.all(np.isfinite(K)):
            raise ValueError("k contains non-finite values")
        K = 0.5 * (K + K.T) + ridge * np.eye(N)
        try:
            C = np.linalg.cholesky(K)
        except np.linalg.LinAlgError:
            raise ValueError(
                "k (plus ridge) is not positive definite: its Cholesky factorization failed; pass ridge > 0"
            ) from None
        A = np.linalg.solve(C.T, np.linalg.solve(C, Y))
        res = np.linalg.norm(K @ A - Y, axis=0) / np.maximum(np.linalg.norm(Y, axis=0), 1e-300)
        return KernelSolve(A.reshape(y.shape), res, 0, "cholesky")
    maxiter = 10 * N if maxiter is None else int(maxiter)
    diag = np.array([float(k[i, i]) for i in range(N)]) + ridge
    if not np.all(np.isfinite(diag)):
        raise ValueError("k has a non-finite diagonal entry")
    if np.any(diag <= 0):
        raise ValueError("k has a non-positive diagonal entry (plus ridge): not positive definite")

    def op(v):
        out = kernel_matvec(k, v, block) + ridge * v
        if not np.all(np.isfinite(out)):
            raise ValueError("k contains non-finite values (a product with it is not finite)")
        return out

    X = np.zeros_like(Y)
    R = Y.copy()
    Z = R / diag[:, None]
    P = Z.copy()
    rz = np.sum(R * Z, axis=0)
    ynorm = np.maximum(np.linalg.norm(Y, axis=0), 1e-300)
    it = 0
    while it < maxiter and np.any(np.linalg.norm(R, axis=0) > tol * ynorm):
        KP = op(P)
        alpha = rz / np.maximum(np.sum(P * KP, axis=0), 1e-300)
        X += alpha * P
        R -= alpha * KP
        Z = R / diag[:, None]
        rz_new = np.sum(R * Z, axis=0)
        P = Z + (rz_new / np.maximum(rz, 1e-300)) * P
        rz = rz_new
        it += 1
    res = np.linalg.norm(Y - op(X), axis=0) / ynorm
    if np.any(res > tol):
        warnings.warn(
            f"kernel_solve: CG stopped after {it} iterations at relative residual {res.max():.1e} > tol={tol:g}",
            RuntimeWarning,
            stacklevel=2,
        )
    return KernelSolve(X.reshape(y.shape), res, it, "cg")
