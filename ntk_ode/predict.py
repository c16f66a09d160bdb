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
from .linsolve import KernelSolve, check_symmetric, kernel_matvec, kernel_solve

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
