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

from ._checks import is_traced, positive_int
from .kernels.gets import parse_get, select
from .linsolve import KernelSolve, check_symmetric, kernel_matvec, kernel_solve
from .nystrom import NystromSolve, engine_blocks, nystrom_solve

__all__ = [
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "gp_inference",
    "Gaussian",
    "max_learning_rate",
    "kernel_solve",
    "check_symmetric",
    "kernel_matvec",
    "KernelSolve",
    "nystrom_solve",
    "engine_blocks",
    "NystromSolve",
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


def _check_times(t: Any) -> None:
    """Refuse times that are not None (infinity) or finite and >= 0 (traced times pass)."""
    if t is not None and not is_traced(t):
        ta = np.asarray(t, np.float64)
        if not np.all(np.isfinite(ta)) or np.any(ta < 0):
            raise ValueError(f"t must be None (infinite time) or finite times >= 0, got {t!r}")


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
    tiny = jnp.finfo(K.dtype).eps * jnp.maximum(ev[-1], jnp.finfo(K.dtype).tiny) * K.shape[0]

    def predict_fn(
        t: ArrayLike | None = None,
        fx_train_0: ArrayLike | None = 0.0,
        fx_test_0: ArrayLike | None = None,
        k_test_train: ArrayLike | None = None,
    ) -> Any:
        """Outputs at time(s) ``t`` (steps; None = infinity); see :func:`gradient_descent_mse`."""
        kte = default_kte if k_test_train is None else k_test_train
        _check_times(t)
        if fx_test_0 is not None and kte is None:
            raise ValueError("fx_test_0 was given but no k_test_train: pass k_test_train (M, N) for test outputs")
        f0 = jnp.zeros_like(y, dtype=K.dtype) if fx_train_0 is None else jnp.broadcast_to(fx_train_0, y.shape)
        r0 = f0 - y  # (N, *k)
        z = _matvec(V.T, r0, y.ndim)  # eigen-coordinates (N, *k)
        extra = (None,) * (y.ndim - 1)
        # t = None: the limit t -> infinity, where the residual's component in the range of K is
        # gone and the one in its null space never moves (a singular kernel fits only what it can reach)
        dec, g = _flow_factors(ev, t, learning_rate / norm, tiny, discrete)  # t.shape + (N,)
        fx_train = y + _matvec(V, dec[(...,) + (slice(None),) + extra] * z, y.ndim)
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


def _flow_factors(ev: Array, t: Any, rate: Any, tiny: Any, discrete: bool = False) -> tuple[Array, Array]:
    """Gradient descent on the MSE in the kernel's eigenbasis, for eigenvalues ``ev``.

    Returns ``(decay, weights)``, each of shape t.shape + (N,): the residual's multiplier
    ``exp(-rate t ev)`` (or ``(1 - rate ev)^t`` for ``discrete``) and the eigen-weights of
    ``K^-1 (I - decay)`` (finite as ev -> 0: ``rate t``). ``t=None`` is infinite time: the decay
    is 0 on the eigenvalues above ``tiny`` and 1 on the others (the null space never moves),
    the weights are the pseudo-inverse's.
    """
    if t is None:
        big = ev > tiny
        return jnp.where(big, 0.0, 1.0), jnp.where(big, 1.0 / jnp.where(big, ev, 1.0), 0.0)
    tt = jnp.asarray(t, ev.dtype)[..., None]
    if discrete:
        decay = (1.0 - rate * ev) ** tt
        gone = 1.0 - decay
    else:
        decay = jnp.exp(-rate * tt * ev)
        gone = -jnp.expm1(-rate * tt * ev)
    safe = jnp.where(ev > 0, ev, 1.0)
    return decay, jnp.where(ev > 0, gone / safe, rate * tt * jnp.ones_like(ev))


def _test_kernels(kernel_fn: Callable, x_test: Any, x_train: Any, batch_size: int, cov: Any) -> tuple:
    """Test-train NNGP and NTK (M, N), and the test NNGP: (M, M), its diagonal (M,), or None.

    ``kernel_fn`` is called on ``batch_size`` test rows at a time (and on pairs of row blocks for
    the covariance), so no call forms more than a block of kernel.
    """
    M = x_test.shape[0]
    starts = list(range(0, M, batch_size))
    td = [kernel_fn(x_test[i : i + batch_size], x_train, ("nngp", "ntk")) for i in starts]
    k_td = {g: jnp.concatenate([jnp.asarray(getattr(k, g)) for k in td]) for g in ("nngp", "ntk")}
    if not cov:
        return k_td, None
    if cov == "diagonal":
        diag = [jnp.diag(jnp.asarray(kernel_fn(x_test[i : i + batch_size], None, "nngp"))) for i in starts]
        return k_td, jnp.concatenate(diag)
    upper: dict[tuple[int, int], Array] = {}
    for a, i in enumerate(starts):
        for b, j in enumerate(starts[a:], start=a):
            xj = None if j == i else x_test[j : j + batch_size]
            upper[a, b] = jnp.asarray(kernel_fn(x_test[i : i + batch_size], xj, "nngp"))
    n = len(starts)
    rows = [[upper[a, b] if b >= a else upper[b, a].T for b in range(n)] for a in range(n)]
    return k_td, jnp.block(rows)


def gradient_descent_mse_ensemble(
    kernel_fn: Callable,
    x_train: Float[ArrayLike, "N d"],
    y_train: Float[ArrayLike, "N ..."],
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    *,
    discrete: bool = False,
    batch_size: int = 256,
) -> Callable[..., Any]:
    """Mean and covariance of an infinite ensemble of infinitely wide networks trained on the MSE.

    neural-tangents' ``predict.gradient_descent_mse_ensemble`` (Lee et al. 2019, "Wide neural
    networks of any depth evolve as linear models"; docs/theory.md section 5). Gradient flow on
    ``1/(2 |y|) ||f(X) - y||^2`` from the random initialisation, marginalised over it. With
    ``Theta`` the NTK and ``K`` the NNGP on the training inputs ``X`` (``diag_reg`` added to the
    one that is inverted), ``e_t = exp(-eta t Theta / |y|)`` and
    ``A_t = Theta_xX Theta^-1 (I - e_t)``:

    * ``get="ntk"`` (every parameter trained): mean ``A_t y``, covariance
      ``K_xx' + A_t K A_t'^T - A_t K_Xx' - K_xX A_t'^T``;
    * ``get="nngp"`` (the Bayesian posterior, reached as ``t -> infinity``; at finite t the readout
      trained alone, ``Theta = K``): mean ``K_xX K^-1 (I - e_t) y``, covariance
      ``K_xx' - K_xX K^-1 (I - e_t^2) K_Xx'``.

    ``t=None`` is infinite time (pseudo-inverses where the kernel is singular); at t = 0 the mean
    is 0 and the covariance the NNGP. ``discrete=True`` puts the iteration of gradient descent
    with step ``eta``, ``e_t = (I - eta Theta / |y|)^t``, in place of the flow (the same formulas
    hold for the linearised network; ``e_t^2`` is then ``e_{2t}``).

    Args:
        kernel_fn: ``kernel_fn(x1, x2, get)`` returning kernels with ``nngp`` and ``ntk``
            attributes (:func:`ntk_ode.kernel_fn` of a model, or neural-tangents'
            ``kernel_fn``).
        x_train: training inputs (N, d).
        y_train: targets (N,) or (N, k) (each output column is independent: ``K x I``).
        learning_rate: the step size eta; ``t`` counts steps.
        diag_reg: ridge added to the inverted training kernel's diagonal.
        diag_reg_absolute_scale: ``diag_reg`` in absolute units (True) or relative to the mean
            diagonal entry (False, default).
        discrete: the discrete iteration instead of the flow (integer ``t``).
        batch_size: test inputs per ``kernel_fn`` call.

    Returns:
        ``predict_fn(t=None, x_test=None, get=None, compute_cov=False)``. ``t``: None, a time or
        an array of times (leading axes of the result). ``x_test``: test inputs (M, d), or None
        for the training inputs. ``get``: "nngp", "ntk", or a tuple of them (None: both, as a
        namedtuple). ``compute_cov``: False (the mean, (..., M, *k)), True (a
        :class:`Gaussian` with the (..., M, M) covariance, the same for every output column), or
        "diagonal" (a :class:`Gaussian` with the variances (..., M)).

    Raises:
        ValueError: bad shapes, non-finite entries, a non-positive learning rate or batch size,
            negative times or ``diag_reg`` (the latter from ``predict_fn``).
    """
    x_train = jnp.asarray(x_train)
    if x_train.ndim != 2:
        raise ValueError(f"x_train must have shape (N, d), got {x_train.shape}")
    y = _targets(y_train, x_train.shape[0])
    if not (float(learning_rate) > 0 and np.isfinite(float(learning_rate))):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    batch_size = positive_int("batch_size", batch_size)
    k_dd = kernel_fn(x_train, None, ("nngp", "ntk"))
    K = {g: _train_kernel(getattr(k_dd, g), f"kernel_fn(x_train, None).{g}") for g in ("nngp", "ntk")}
    eig = {}
    for g, k in K.items():
        ev, V = jnp.linalg.eigh(_regularize(k, diag_reg, diag_reg_absolute_scale))
        ev = jnp.maximum(ev, 0.0)
        eig[g] = (ev, V, jnp.finfo(ev.dtype).eps * jnp.maximum(ev[-1], jnp.finfo(ev.dtype).tiny) * ev.size)
    rate = float(learning_rate) / y.size

    def predict_fn(t: Any = None, x_test: Any = None, get: Any = None, compute_cov: Any = False) -> Any:
        """The ensemble at time(s) ``t`` on ``x_test``; see :func:`gradient_descent_mse_ensemble`."""
        names, single = parse_get(get, ("nngp", "ntk"))
        if compute_cov not in (False, True, "diagonal"):
            raise ValueError(f"compute_cov must be False, True or 'diagonal', got {compute_cov!r}")
        _check_times(t)
        if x_test is None:
            k_td = K
            k_tt = None if not compute_cov else (K["nngp"] if compute_cov is True else jnp.diag(K["nngp"]))
        else:
            xt = jnp.asarray(x_test)
            if xt.ndim != 2 or xt.shape[1] != x_train.shape[1]:
                raise ValueError(f"x_test must have shape (M, {x_train.shape[1]}), got {xt.shape}")
            k_td, k_tt = _test_kernels(kernel_fn, xt, x_train, int(batch_size), compute_cov)
        out: dict[str, Any] = {}
        for g in names:
            ev, V, tiny = eig[g]
            w = _flow_factors(ev, t, rate, tiny, discrete)[1]  # t.shape + (N,)
            A = jnp.einsum("mj,ji,...i,ki->...mk", k_td[g], V, w, V)  # (..., M, N)
            mean = jnp.einsum("...mk,k->...m", A, y) if y.ndim == 1 else jnp.einsum("...mk,kc->...mc", A, y)
            if not compute_cov:
                out[g] = mean
                continue
            assert k_tt is not None
            if g == "nngp":  # K_xx' - K_xX K^-1 (I - e^2) K_Xx'
                w2 = _flow_factors(ev, None if t is None else 2 * np.asarray(t, np.float64), rate, tiny, discrete)[1]
                B = jnp.einsum("mj,ji,...i,ki->...mk", k_td[g], V, w2, V)
                cov = k_tt - _cross(B, k_td["nngp"], compute_cov)
            else:  # K_xx' + A K A'^T - A K_Xx' - K_xX A'^T
                AK = jnp.einsum("...mk,kl->...ml", A, K["nngp"])
                cross = _cross(A, k_td["nngp"], compute_cov)
                cov = (
                    k_tt
                    + _cross(AK, A, compute_cov)
                    - cross
                    - (cross if compute_cov == "diagonal" else jnp.swapaxes(cross, -1, -2))
                )
            out[g] = Gaussian(mean, cov)
        return select(out, names, single)

    return predict_fn


def _cross(P: Array, Q: Array, compute_cov: Any) -> Array:
    """``P Q^T`` over the last axis (..., M, M), or its diagonal (..., M) for "diagonal"."""
    if compute_cov == "diagonal":
        return jnp.einsum("...mk,...mk->...m", P, jnp.broadcast_to(Q, P.shape))
    return jnp.einsum("...mk,...lk->...ml", P, Q)
