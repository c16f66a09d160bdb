"""Kernel regression without the N x N kernel: Nystrom centres and Falkon-style preconditioned CG.

With M centres ``C`` (a subset of the N training inputs), the Nystrom estimator
``f(x) = K_xC alpha`` solves the normal equations

    (K_Cn K_nC + ridge K_CC) alpha = K_Cn y,

which with C = all inputs is exactly ``(K + ridge I)^-1 y`` (:func:`ntk_ode.predict.kernel_solve`).
They are solved by conjugate gradients preconditioned as in Falkon (Rudi, Carratino and Rosasco
2017): ``K_Cn K_nC ~ (n / M) K_CC^2``, so ``P = T^T (n/M T T^T + ridge I) T`` with
``T^T T = K_CC``, applied by triangular solves. Only ``N x M`` numbers (the ``K_nC`` blocks) and
``M x M`` ones are ever held: the blocks stay in memory up to ``cache_bytes``; the rest go to an
unlinked temporary file in ``cache_dir`` when one is named (read back block by block at every
iteration, so the process holds one block of them at a time), else they are recomputed at every
iteration.

:func:`engine_blocks` gives the kernel blocks from the engine: a certified (norm, norm, angle)
interpolant for inputs of several norms, a zonal interpolant for inputs of one norm
(docs/theory.md sections 8 and 14), so an entry costs a few hundred flops.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import IO, Any, NamedTuple

import jax
import numpy as np
import scipy.linalg

from ._checks import default_rtol
from .batching import pad_rows

__all__ = ["NystromSolve", "nystrom_solve", "engine_blocks", "select_centres"]

Block = Callable[[np.ndarray, np.ndarray], Any]
PAD_ROWS = 256  # engine blocks pad their rows to a multiple of this (one compilation per size class)


class NystromSolve(NamedTuple):
    """The result of :func:`nystrom_solve`.

    Attributes:
        alpha: (M,) or (M, k) coefficients on the centres: ``f(x) = k(x, centres) @ alpha``.
        centres: indices of the centres in the training inputs (M,).
        residuals: the relative residual of the normal equations after each CG iteration.
        iterations: CG iterations.
        exact_difference: ``max |f_nystrom - f_exact| / max |f_exact|`` on the training inputs
            against ``(K + ridge I)^-1 y`` when that was affordable (else nan).
        storage: how many ``K_nC`` row blocks were kept in "memory", on "disk", or "recomputed"
            at every iteration.
    """

    alpha: np.ndarray
    centres: np.ndarray
    residuals: np.ndarray
    iterations: int
    exact_difference: float
    storage: dict


class _RowBlocks:
    """The ``K_nC`` row blocks: computed once, then kept in memory up to ``memory_bytes``, then in
    an unlinked temporary file in ``disk_dir`` (if given), else recomputed on every request."""

    def __init__(self, block: Block, x: np.ndarray, C: np.ndarray, size: int, memory_bytes: int, disk_dir):
        self.block, self.x, self.C, self.size = block, x, C, int(size)
        self.starts = list(range(0, x.shape[0], self.size))
        self.memory: dict[int, np.ndarray] = {}
        self.disk: dict[int, tuple[int, tuple[int, int]]] = {}  # block -> (byte offset, shape)
        self.free_memory = int(memory_bytes)
        self.file: IO[bytes] | None = None
        if disk_dir is not None:
            need = x.shape[0] * C.shape[0] * 8 - max(self.free_memory, 0)
            free = shutil.disk_usage(disk_dir).free
            if need > 0 and need > free:
                raise ValueError(
                    f"cache_dir {str(disk_dir)!r} has {free / 2**30:.1f} GiB free, the K_nC blocks need "
                    f"{need / 2**30:.1f} GiB there; name another folder or raise cache_bytes"
                )
            self.file = tempfile.TemporaryFile(dir=disk_dir, prefix="ntk_ode-nystrom-")  # unlinked at once
        elif x.shape[0] * C.shape[0] * 8 > self.free_memory:
            logging.getLogger("ntk_ode").warning(
                "nystrom_solve: K_nC (%.2f GiB) is above cache_bytes (%.2f GiB); the blocks beyond it are "
                "recomputed at every CG iteration. Pass cache_dir= to keep them on disk instead.",
                x.shape[0] * C.shape[0] * 8 / 2**30,
                self.free_memory / 2**30,
            )

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> np.ndarray:
        if k in self.memory:
            return self.memory[k]
        if k in self.disk:
            assert self.file is not None
            offset, shape = self.disk[k]
            self.file.seek(offset)
            out = np.fromfile(self.file, np.float64, count=shape[0] * shape[1])
            if out.size != shape[0] * shape[1]:
                raise RuntimeError("nystrom_solve: a K_nC block could not be read back from cache_dir")
            return out.reshape(shape)
        s = self.starts[k]
        Kb = np.asarray(self.block(self.x[s : s + self.size], self.C), np.float64)
        if not np.all(np.isfinite(Kb)):
            raise RuntimeError("nystrom_solve: the kernel block has non-finite values")
        if Kb.nbytes <= self.free_memory:
            self.memory[k] = Kb
            self.free_memory -= Kb.nbytes
        elif self.file is not None:
            offset = self.file.seek(0, 2)
            self.file.write(np.ascontiguousarray(Kb).tobytes())
            self.file.flush()
            self.disk[k] = (offset, Kb.shape)
        return Kb

    def storage(self) -> dict:
        return {
            "memory": len(self.memory),
            "disk": len(self.disk),
            "recomputed": len(self) - len(self.memory) - len(self.disk),
        }

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def engine_blocks(
    model: Any, x: Any, *, depth: int | None = None, get: str = "ntk", rtol: float | None = None
) -> tuple:
    """Kernel blocks of the engine for inputs like ``x``, as a jitted ``block(x1, x2)``.

    Inputs of one norm get :func:`ntk_ode.harmonics.zonal_kernel`; inputs of several norms get
    :func:`ntk_ode.kernels.norm_angle_kernel` over [min norm, max norm]. Blocks of other inputs
    must have norms in that range.

    Args:
        model: the Neural ODE.
        x: the inputs (N, d) whose norms the interpolant must cover.
        depth: None for the ODE, L for the ResNet.
        get: "ntk" or "nngp".
        rtol: the interpolant's target accuracy relative to the kernel's largest value (default
            1e-8 with 64-bit floats, 1e-5 in float32, as :func:`ntk_ode.kernel_fn`).

    Returns:
        ``(block, error)``: the block function (numpy arrays in and out; rows padded to a
        multiple of ``PAD_ROWS`` inside, so few shapes compile) and the interpolant's error
        bound (absolute).

    Raises:
        ValueError: ``get`` is not "ntk" or "nngp" (or bad arguments from the interpolant).
        RuntimeError: the interpolant cannot meet ``rtol``.
    """
    from .harmonics import zonal_kernel
    from .kernels import norm_angle_kernel

    x = np.asarray(x, np.float64)
    if rtol is None:
        rtol = default_rtol(jax.numpy.asarray(0.0).dtype)  # the working precision
    norms = np.linalg.norm(x, axis=1)
    lo, hi = float(norms.min()), float(norms.max())
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")
    k: Any
    if hi - lo <= 1e-12 * hi:
        k = zonal_kernel(model, x.shape[1], depth=depth, get=get, radius=hi, rtol=rtol)
    else:
        k = norm_angle_kernel(model, x.shape[1], lo, hi, depth=depth, get=get, rtol=rtol)
    gram = jax.jit(k.gram)

    def block(x1, x2):
        # rows padded to a multiple of PAD_ROWS (copies of a real row): few compiled shapes
        x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
        n1, n2 = x1.shape[0], x2.shape[0]
        up = lambda n: -(-n // PAD_ROWS) * PAD_ROWS
        return np.asarray(gram(pad_rows(x1, up(n1)), pad_rows(x2, up(n2))))[:n1, :n2]

    return block, float(k.error)


def _diagonal(block: Block, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``k(x_i, x_i)`` from diagonal blocks of ``chunk`` rows (N * chunk entries in all)."""
    parts = [
        np.diag(np.asarray(block(x[i : i + chunk], x[i : i + chunk]), np.float64)) for i in range(0, len(x), chunk)
    ]
    return np.concatenate(parts)


def select_centres(
    block: Block, x: np.ndarray, M: int, ridge: float, sampling: str = "uniform", seed: int = 0
) -> np.ndarray:
    """M distinct centre indices: uniform, or by approximate ridge leverage scores.

    The leverage scores ``[K (K + ridge I)^-1]_ii`` are approximated from a uniform pilot set P
    of 2M points: ``(k_ii - k_iP (K_PP + ridge I)^-1 k_Pi) / ridge``.

    Args:
        block: ``block(x1, x2)`` -> kernel matrix.
        x: the inputs (N, d).
        M: the number of centres (1 <= M <= N).
        ridge: the ridge of the regression.
        sampling: "uniform" or "leverage".
        seed: the random draw.

    Returns:
        Sorted indices (M,).

    Raises:
        ValueError: a bad M or sampling.
    """
    N = x.shape[0]
    if isinstance(M, bool) or int(M) != M or not 1 <= M <= N:
        raise ValueError(f"centres must be an integer in [1, N={N}], got {M!r}")
    if sampling not in ("uniform", "leverage"):
        raise ValueError(f"sampling must be 'uniform' or 'leverage', got {sampling!r}")
    rng = np.random.default_rng(seed)
    if sampling == "uniform" or M == N:
        return np.sort(rng.choice(N, size=int(M), replace=False))
    pilot = np.sort(rng.choice(N, size=min(N, 2 * int(M)), replace=False))
    K_pp = np.asarray(block(x[pilot], x[pilot]), np.float64)
    L = np.linalg.cholesky(K_pp + ridge * np.eye(pilot.size))
    scores = np.empty(N)
    for i in range(0, N, 2048):
        rows = x[i : i + 2048]
        K_ip = np.asarray(block(rows, x[pilot]), np.float64)
        diag = _diagonal(block, rows)
        v = scipy.linalg.solve_triangular(L, K_ip.T, lower=True)
        scores[i : i + rows.shape[0]] = np.maximum(diag - np.sum(v * v, axis=0), 0.0) / ridge
    p = scores / scores.sum() if scores.sum() > 0 else None
    return np.sort(rng.choice(N, size=int(M), replace=False, p=p))


def nystrom_solve(
    block: Block,
    x: Any,
    y: Any,
    centres: int | Any = 1000,
    ridge: float = 1e-6,
    *,
    sampling: str = "uniform",
    seed: int = 0,
    tol: float = 1e-10,
    maxiter: int = 200,
    block_size: int = 2048,
    cache_bytes: int = 2**30,
    cache_dir: str | None = None,
    exact_max: int = 4000,
    jitter: float = 1e-12,
) -> NystromSolve:
    """Nystrom kernel regression by Falkon-style preconditioned conjugate gradients (see the module).

    Args:
        block: ``block(x1, x2)`` -> the (n1, n2) kernel matrix (e.g. from :func:`engine_blocks`).
        x: training inputs (N, d).
        y: targets (N,) or (N, k).
        centres: how many centres (drawn by ``sampling``), or their indices.
        ridge: the ridge of ``(K + ridge I)^-1 y`` (absolute).
        sampling: "uniform" or "leverage" (approximate ridge leverage scores).
        seed: the centres' draw.
        tol: stop at this relative residual of the normal equations.
        maxiter: at most this many CG iterations.
        block_size: training rows per kernel block.
        cache_bytes: keep ``K_nC`` row blocks in memory up to this many bytes.
        cache_dir: a folder for the ``K_nC`` blocks beyond ``cache_bytes`` (an unlinked temporary
            file, gone when the solve ends or is killed: ``8 N M`` bytes at most); None recomputes
            them at every CG iteration instead.
        exact_max: compare with the exact solution when N is at most this (N^2 kernel entries).
        jitter: added to K_CC's diagonal, relative to its mean, in the preconditioner's factor.

    Returns:
        A :class:`NystromSolve`.

    Raises:
        ValueError: bad shapes or options, non-finite targets, too little space in ``cache_dir``.
        RuntimeError: non-finite kernel values, or CG did not reach ``tol`` in ``maxiter``.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape[:1] != x.shape[:1] or y.ndim not in (1, 2):
        raise ValueError(f"x must be (N, d) and y (N,) or (N, k) with the same N, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains non-finite values")
    if not (np.isfinite(ridge) and ridge > 0):
        raise ValueError(f"ridge must be a positive number, got {ridge!r}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if cache_dir is not None and not os.path.isdir(cache_dir):
        raise ValueError(f"cache_dir must be an existing folder, got {cache_dir!r}")
    N = x.shape[0]
    if np.ndim(centres) == 0:
        idx = select_centres(block, x, centres, ridge, sampling, seed)
    else:
        idx = np.unique(np.asarray(centres, int))
        if idx.size == 0 or idx[0] < 0 or idx[-1] >= N:
            raise ValueError(f"centre indices must lie in [0, {N}), got {centres!r}")
    C = x[idx]
    Y = y.reshape(N, -1)
    rows = _RowBlocks(block, x, C, block_size, cache_bytes, cache_dir)
    try:
        return _solve(rows, block, x, Y, idx, ridge, tol, maxiter, exact_max, jitter, y.ndim)
    finally:
        rows.close()


def _solve(rows: _RowBlocks, block: Block, x, Y, idx, ridge, tol, maxiter, exact_max, jitter, ndim) -> NystromSolve:
    """The preconditioned CG of :func:`nystrom_solve` over the row blocks ``rows``."""
    N, M, C, size = x.shape[0], idx.size, rows.C, rows.size
    K_cc = np.asarray(block(C, C), np.float64)
    K_cc = 0.5 * (K_cc + K_cc.T)
    b = np.zeros((M, Y.shape[1]))
    for k, s in enumerate(rows.starts):
        b += rows[k].T @ Y[s : s + size]

    def H(v: np.ndarray) -> np.ndarray:
        out = ridge * (K_cc @ v)
        for k in range(len(rows)):
            Kb = rows[k]
            out += Kb.T @ (Kb @ v)
        return out

    # the preconditioner P = T^T (N/M T T^T + ridge I) T, T^T T = K_CC (+ jitter)
    T = np.linalg.cholesky(K_cc + jitter * np.mean(np.diag(K_cc)) * np.eye(M)).T  # upper
    A = np.linalg.cholesky((N / M) * (T @ T.T) + ridge * np.eye(M)).T  # upper

    def P_inv(r: np.ndarray) -> np.ndarray:
        z = scipy.linalg.solve_triangular(T, r, trans="T")
        z = scipy.linalg.solve_triangular(A, z, trans="T")
        z = scipy.linalg.solve_triangular(A, z)
        return scipy.linalg.solve_triangular(T, z)

    alpha = np.zeros_like(b)
    r = b.copy()
    z = P_inv(r)
    p = z.copy()
    rz = np.sum(r * z, axis=0)
    bnorm = np.maximum(np.linalg.norm(b, axis=0), np.finfo(float).tiny)
    residuals = []
    it = 0
    while it < maxiter:
        Hp = H(p)
        step = rz / np.maximum(np.sum(p * Hp, axis=0), np.finfo(float).tiny)
        alpha += step * p
        r -= step * Hp
        it += 1
        rel = float(np.max(np.linalg.norm(r, axis=0) / bnorm))
        residuals.append(rel)
        if rel <= tol:
            break
        z = P_inv(r)
        rz_new = np.sum(r * z, axis=0)
        p = z + (rz_new / np.maximum(rz, np.finfo(float).tiny)) * p
        rz = rz_new
    if residuals[-1] > tol:
        raise RuntimeError(
            f"nystrom_solve: CG reached a relative residual of {residuals[-1]:.2e} after {it} iterations, "
            f"above tol={tol:g}; raise maxiter or the ridge"
        )
    exact = float("nan")
    if N <= exact_max:
        K = np.asarray(block(x, x), np.float64)
        f_exact = K @ np.linalg.solve(0.5 * (K + K.T) + ridge * np.eye(N), Y)
        f_ny = np.concatenate([rows[k] @ alpha for k in range(len(rows))])
        exact = float(np.max(np.abs(f_ny - f_exact)) / max(np.max(np.abs(f_exact)), np.finfo(float).tiny))
    out_alpha = alpha[:, 0] if ndim == 1 else alpha
    return NystromSolve(out_alpha, idx, np.array(residuals), it, exact, rows.storage())
