"""Infinite-width predictions: kernel gradient descent on the MSE, and GP inference.

The conventions are neural-tangents' (``neural_tangents.predict``), so code written for it runs
here unchanged::

    fn = no.predict.gradient_descent_mse(k_train_train, y_train, learning_rate=1., diag_reg=0.)
    fx_train, fx_test = fn(t=None, fx_train_0=0., fx_test_0=0., k_test_train=k_test_train)

* Gradient *flow* on ``L = 1/(2 |y|) ||f(X) - y||^2`` (``|y|`` = y_train.size): with
  ``r_0 = fx_train_0 - y`` the residual evolves as ``r(t) = exp(-eta t K / |y|) r_0`` and test
  outputs as ``f_test(t) = f_test_0 - K_te,tr K^-1 (I - exp(-eta t K / |y|)) r_0``. ``t`` counts
  steps (it is multiplied by the learning rate); ``t=None`` is infinite time, computed by a
  Cholesky solve.
* ``y_train`` may be (N,) or (N, k): the kernel acts on every output column (``K x I``, as
  neural-tangents' ``trace_axes=(-1,)``).
* ``fx_test_0=None`` returns only the training outputs, ``fx_train_0=None`` only the test ones.

Deliberate differences from neural-tangents, all opt-in:

* ``discrete=True`` gives the *discrete* iteration ``r_k = (I - eta K / |y|)^k r_0`` of
  gradient descent (neural-tangents has only the flow), and with ``normalization="sum"`` the
  loss ``1/2 ||f - y||^2`` of Theorem 2 (docs/theory.md section 5), for which
  ``r_k = (I - eta K)^k r_0`` and the rate is ``(1 - eta lambda_0)^k``.
* A learning rate above the discrete stability limit ``2 |y| / lambda_max`` (or
  ``2 / lambda_max`` for ``normalization="sum"``) gives a RuntimeWarning (the iteration then
  diverges); neural-tangents is silent.
* ``k_test_train`` may also be given when the predictor is built (a default for every call).
* ``trace_axes`` is not an argument: outputs are always the last axis.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import is_traced

__all__ = [
    "gradient_descent_mse",
    "gp_inference",
    "Gaussian",
    "max_learning_rate",
    "kernel_solve",
    "check_symmetric",
    "kernel_matvec",
    "KernelSolve",
]


class Gaussian(NamedTuple):
    """A Gaussian posterior: its mean and covariance (as neural-tangents' ``predict.Gaussian``)."""

    mean: Array
    covariance: Array


def _train_kernel(k_train_train: Any, name: str = "k_train_train") -> Array:
    K = jnp.asarray(k_train_train)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {K.shape}")
    if not is_traced(K) and not np.all(np.isfinite(np.asarray(K))):
        raise ValueError(f"{name} contains non-finite values")
    return 0.5 * (K + K.T)


def _targets(y_train: Any, N: int) -> Array:
    y = jnp.asarray(y_train)
    if y.ndim not in (1, 2) or y.shape[0] != N:
        raise ValueError(f"y_train must have shape ({N},) or ({N}, k) to match k_train_train, got {y.shape}")
    if not is_traced(y) and not np.all(np.isfinite(np.asarray(y))):
        raise ValueError("y_train contains non-finite values")
    return y


def _regularize(K: Array, diag_reg: float, absolute: bool) -> Array:
    if not is_traced(diag_reg) and not diag_reg >= 0:
        raise ValueError(f"diag_reg must be >= 0, got {diag_reg!r}")
    scale = 1.0 if absolute else jnp.mean(jnp.diag(K))
    return K + diag_reg * scale * jnp.eye(K.shape[0], dtype=K.dtype)


def _matvec(A: Array, b: Array, ydim: int) -> Array:
    """``A @ b`` along b's sample axis, with leading (time) axes and an optional output axis."""
    return jnp.einsum("ij,...jk->...ik", A, b) if ydim == 2 else jnp.einsum("ij,...j->...i", A, b)


def max_learning_rate(
    k_train_train: ArrayLike, y_size: int | None = None, normalization: Literal["size", "sum"] = "size"
) -> float:
    """The stability limit of discrete gradient descent on the MSE with kernel ``k_train_train``.

    Args:
        k_train_train: the (N, N) kernel.
        y_size: number of target entries (N times outputs; default N).
        normalization: "size" (loss divided by ``y_size``, neural-tangents) or "sum".

    Returns:
        ``2 / lambda_max`` times ``y_size`` for "size": above it the iteration diverges.

    Raises:
        ValueError: a non-square or non-finite kernel.
    """
    K = np.asarray(_train_kernel(k_train_train))
    lam_max = float(np.linalg.eigvalsh(K)[-1])
    norm = (y_size or K.shape[0]) if normalization == "size" else 1
    return 2.0 * norm / lam_max


def gradient_descent_mse(
    k_train_train: Float[ArrayLike, "N N"],
    y_train: Float[ArrayLike, "N ..."],
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    *,
    discrete: bool = False,
    normalization: Literal["size", "sum"] = "size",
    k_test_train: Float[ArrayLike, "M N"] | None = None,
) -> Callable[..., Any]:
    """Predict the outputs of gradient descent on the MSE with a fixed kernel (see the module).

    Pure JAX (works under ``jax.jit`` with the kernel as an argument); the learning-rate check
    needs concrete values and is skipped under tracing.

    Args:
        k_train_train: the (N, N) kernel on the training inputs (NTK for trained networks).
        y_train: targets (N,) or (N, k).
        learning_rate: the step size; times are in steps (``absolute time = eta t``).
        diag_reg: ridge added to the kernel's diagonal.
        diag_reg_absolute_scale: ``diag_reg`` in absolute units (True) or relative to the
            mean diagonal entry (False, default).
        discrete: the discrete iteration instead of the flow (``t`` must then be an integer
            number of steps, or None).
        normalization: "size" (loss divided by ``y_train.size``, neural-tangents) or "sum"
            (the loss ``1/2 ||f - y||^2`` of Theorem 2).
        k_test_train: default test-train kernel (M, N) for calls that do not pass one.

    Returns:
        ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` returning
        ``(fx_train, fx_test)``, or only ``fx_train`` when ``fx_test_0`` is None, or only
        ``fx_test`` when ``fx_train_0`` is None. An array ``t`` adds leading time axes.

    Raises:
        ValueError: shapes that do not match, non-finite entries, a non-positive learning rate
            or a negative ``diag_reg`` (and, from ``predict_fn``, test outputs asked for without
            a test-train kernel).

    Warns:
        RuntimeWarning: ``discrete=True`` with a learning rate above the stability limit.
    """
    K = _regularize(_train_kernel(k_train_train), diag_reg, diag_reg_absolute_scale)
    y = _targets(y_train, K.shape[0])
    if normalization not in ("size", "sum"):
        raise ValueError(f"normalization must be 'size' or 'sum', got {normalization!r}")
    if not is_traced(learning_rate) and not (float(learning_rate) > 0 and np.isfinite(float(learning_rate))):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    norm = y.size if normalization == "size" else 1
    ev, V = jnp.linalg.eigh(K)
    ev = jnp.maximum(ev, 0.0)  # the kernel is PSD; negative rounding would make exp() grow
    if discrete and not is_traced(ev, learning_rate):
        limit = 2.0 * norm / float(ev[-1])
        if float(learning_rate) > limit:
            warnings.warn(
                f"learning_rate {float(learning_rate):.3g} exceeds the stability limit {limit:.3g} of "
                "discrete gradient descent (2 / lambda_max, times y_train.size for normalization='size'): "
                "the predicted outputs diverge",
                RuntimeWarning,
                stacklevel=2,
            )
    default_kte = k_test_train

    def decay(t):
        """(I - e(K)) factors in the eigenbasis: residual multiplier for each eigenvalue, shape t.shape + (N,)."""
        t = jnp.asarray(t, K.dtype)[..., None]
        if discrete:
            return (1.0 - learning_rate * ev / norm) ** t
        return jnp.exp(-learning_rate * t * ev / norm)

    def predict_fn(
        t: ArrayLike | None = None,
        fx_train_0: ArrayLike | None = 0.0,
        fx_test_0: ArrayLike | None = None,
        k_test_train: ArrayLike | None = None,
    ) -> Any:
        """Outputs at time(s) ``t`` (steps; None = infinity); see :func:`gradient_descent_mse`."""
        kte = default_kte if k_test_train is None else k_test_train
        if t is not None and not is_traced(t):
            ta = np.asarray(t, np.float64)
            if not np.all(np.isfinite(ta)) or np.any(ta < 0):
                raise ValueError(f"t must be None (infinite time) or finite times >= 0, got {t!r}")
        if fx_test_0 is not None and kte is None:
            raise ValueError("fx_test_0 was given but no k_test_train: pass k_test_train (M, N) for test outputs")
        f0 = jnp.zeros_like(y, dtype=K.dtype) if fx_train_0 is None else jnp.broadcast_to(fx_train_0, y.shape)
        r0 = f0 - y  # (N, *k)
        z = _matvec(V.T, r0, y.ndim)  # eigen-coordinates (N, *k)
        extra = (None,) * (y.ndim - 1)
        if t is None:
            # the limit t -> infinity: the residual's component in the range of K is gone, the
            # one in its null space never moves (a singular kernel fits only what it can reach)
            tiny = jnp.finfo(K.dtype).eps * jnp.maximum(ev[-1], jnp.finfo(K.dtype).tiny) * K.shape[0]
            stays = jnp.where(ev > tiny, 0.0, 1.0)
            fx_train = y + _matvec(V, stays[(slice(None),) + extra] * z, y.ndim)
            g = jnp.where(ev > tiny, 1.0 / jnp.where(ev > tiny, ev, 1.0), 0.0)
            coef = g[(slice(None),) + extra] * z
        else:
            dec = decay(t)  # t.shape + (N,)
            dz = dec[(...,) + (slice(None),) + extra] * z
            fx_train = y + _matvec(V, dz, y.ndim)
            # K^-1 (I - decay), finite where ev -> 0 (limit: eta t / norm, or the discrete sum)
            safe = jnp.where(ev > 0, ev, 1.0)
            small = learning_rate * jnp.asarray(t, K.dtype)[..., None] / norm
            g = jnp.where(ev > 0, (1.0 - dec) / safe, small * jnp.ones_like(ev))
            coef = g[(...,) + (slice(None),) + extra] * z
        out_train = None if fx_train_0 is None else fx_train
        if fx_test_0 is None:
            return out_train
        kte_a = jnp.asarray(kte)
        if kte_a.ndim != 2 or kte_a.shape[1] != K.shape[0]:
            raise ValueError(f"k_test_train must have shape (M, {K.shape[0]}), got {kte_a.shape}")
        # alpha = V coef: (..., N, *k); f_test = f_test_0 - K_te alpha
        dtest = _matvec(kte_a, _matvec(V, coef, y.ndim), y.ndim)
        fx_test = jnp.asarray(fx_test_0, K.dtype) - dtest
        if fx_train_0 is None:
            return fx_test
        return out_train, fx_test

    return predict_fn


def gp_inference(
    k_train_train: Float[ArrayLike, "N N"],
    y_train: Float[ArrayLike, "N ..."],
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> Callable[..., Any]:
    """Exact GP regression (Bayesian inference with the NNGP, or with the NTK as a prior).

    As neural-tangents' ``predict.gp_inference`` for a single kernel: the train kernel is
    factored once (Cholesky) and the returned function evaluates the posterior.

    Args:
        k_train_train: the (N, N) prior covariance of the training outputs.
        y_train: targets (N,) or (N, k).
        diag_reg: observation noise variance added to the diagonal.
        diag_reg_absolute_scale: ``diag_reg`` in absolute units (True) or relative to the mean
            diagonal entry (False, default).

    Returns:
        ``predict_fn(k_test_train, k_test_test=None)``: the posterior mean (M, *k), or a
        :class:`Gaussian` (mean, covariance (M, M)) when ``k_test_test`` is given.

    Raises:
        ValueError: bad shapes, non-finite entries, or a kernel that is not positive definite
            (add ``diag_reg``).
    """
    K = _regularize(_train_kernel(k_train_train), diag_reg, diag_reg_absolute_scale)
    y = _targets(y_train, K.shape[0])
    C = jnp.linalg.cholesky(K)
    if not is_traced(C) and not np.all(np.isfinite(np.asarray(C))):
        raise ValueError(
            "k_train_train (plus diag_reg) is not positive definite: its Cholesky factorization "
            "failed; pass diag_reg > 0"
        )
    alpha = jnp.linalg.solve(C.T, jnp.linalg.solve(C, y))

    def predict_fn(k_test_train: ArrayLike, k_test_test: ArrayLike | None = None) -> Any:
        """Posterior mean (and covariance) at the test inputs; see :func:`gp_inference`."""
        kte = jnp.asarray(k_test_train)
        if kte.ndim != 2 or kte.shape[1] != K.shape[0]:
            raise ValueError(f"k_test_train must have shape (M, {K.shape[0]}), got {kte.shape}")
        mean = kte @ alpha
        if k_test_test is None:
            return mean
        B = jnp.linalg.solve(C, kte.T)
        return Gaussian(mean, jnp.asarray(k_test_test) - B.T @ B)

    return predict_fn


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
