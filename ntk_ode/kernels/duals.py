"""Certified dual activations inside the kernel solvers (docs/theory.md section 4).

On a time grid the solvers need ``Phi = E phi(u) phi(u')`` and ``dPhi = E phi'(u) phi'(u')`` for
every pair of nodes. :class:`Duals` evaluates them in one of three ways:

* closed forms, where the activation has them (relu family, erf, identity, quadratic);
* the Mehler series ``sum_k rho^k c_k(a) c_k(b)`` with Hermite coefficient tables ``c_k`` stored
  per input and node (:mod:`ntk_ode.gaussian`), so a grid point costs a short polynomial;
* robust tanh-sinh quadrature at every grid point (any variance; slow).

The certificates bound the relative error of the series (Parseval) or of the quadrature (a rule
at half the step) at given node variances; the engine's adaptivity (:mod:`.adapt`) uses them to
choose the number of terms, or to fall back to quadrature.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from .. import gaussian
from ..activations import Activation
from ..closed_duals import arccos_correlation

__all__ = [
    "QUAD_STEP",
    "Duals",
    "check_duals",
    "is_kinked",
    "mehler_bound",
    "mehler_bounds",
    "mehler_certificate",
    "mehler_screen",
    "mehler_grid",
    "quad_certificate",
    "round_terms",
    "trim_terms",
]

QUAD_STEP = 1.0 / 32.0  # tanh-sinh step of the quadrature duals inside the solvers


@dataclasses.dataclass(frozen=True)
class Duals:
    """Evaluates Phi and dPhi on a grid from variances and covariances (hashable by value, so
    the compiled solvers are reused across calls; docs/theory.md section 4). ``perturb`` adds ``perturb`` times the
    Cauchy-Schwarz scale ``sqrt(E f(u)^2 E f(v)^2)`` to every dual: used to measure how the
    kernels respond to dual errors."""

    act: Activation
    terms: int
    perturb: float = 0.0
    quad: bool = False  # robust quadrature at every grid point (large variance; slow)

    @property
    def per_input_batch(self) -> bool:
        """Whether solves must go one input / pair at a time (quadrature is memory-hungry)."""
        return self.quad

    @property
    def mehler(self) -> bool:
        """Whether the duals are Mehler series (neither closed forms nor quadrature)."""
        return not (self.closed or self.quad)

    @property
    def closed(self) -> bool:
        """Whether the activation's duals are closed forms."""
        return self.act.has_closed_form

    def basis(self, dtype: DTypeLike) -> tuple[jax.Array, jax.Array] | None:
        """The Hermite basis behind :meth:`tables` (None for closed forms and quadrature), to be
        built once outside a loop that recomputes the tables.

        Args:
            dtype: working dtype.

        Returns:
            :func:`ntk_ode.gaussian.hermite_basis` of ``terms``, or None.
        """
        if self.closed or self.quad:
            return None
        return gaussian.hermite_basis(self.terms, gaussian.hermite_order(self.terms), dtype)

    def tables(self, v: jax.Array, basis: tuple[jax.Array, jax.Array] | None = None) -> Any:
        """Hermite coefficient tables (phi, phi') for variances v (empty for closed forms).

        Args:
            v: variances (...,).
            basis: :meth:`basis` of v's dtype, when the caller reuses one.

        Returns:
            ``()`` or two arrays (..., terms).
        """
        if self.closed or self.quad:
            return ()
        basis = self.basis(jnp.asarray(v).dtype) if basis is None else basis
        return (
            gaussian.hermite_coefficients(self.act.fn, v, self.terms, basis=basis),
            gaussian.hermite_coefficients(self.act.dfn, v, self.terms, basis=basis),
        )

    def phi(
        self, v1: jax.Array, v2: jax.Array, S: jax.Array, tab1: Any, tab2: Any, symmetric: bool = False
    ) -> jax.Array:
        """E phi(u) phi(u') on the grid v1 x v2 with covariances S.

        Args:
            v1: first inputs' variances (M1,).
            v2: second inputs' variances (M2,).
            S: covariances (M1, M2).
            tab1: :meth:`tables` of v1.
            tab2: :meth:`tables` of v2.
            symmetric: v1 is v2 and S is symmetric (one input with itself): quadrature then
                evaluates the upper triangle only (read from S) and mirrors it.

        Returns:
            (M1, M2) expectations.
        """
        return self._grid_dual(0, v1, v2, S, tab1, tab2, symmetric)

    def dphi(
        self, v1: jax.Array, v2: jax.Array, S: jax.Array, tab1: Any, tab2: Any, symmetric: bool = False
    ) -> jax.Array:
        """E phi'(u) phi'(u') on the grid v1 x v2 with covariances S.

        Args:
            v1: first inputs' variances (M1,).
            v2: second inputs' variances (M2,).
            S: covariances (M1, M2).
            tab1: :meth:`tables` of v1.
            tab2: :meth:`tables` of v2.
            symmetric: v1 is v2 and S is symmetric (one input with itself): quadrature then
                evaluates the upper triangle only (read from S) and mirrors it.

        Returns:
            (M1, M2) expectations.
        """
        return self._grid_dual(1, v1, v2, S, tab1, tab2, symmetric)

    def variance_slope(self, v1: jax.Array, v2: jax.Array, S: jax.Array) -> jax.Array:
        """E phi''(u) phi(u') on the grid v1 x v2 with covariances S, by quadrature: twice the
        derivative of E phi(u) phi(u') in the variance of u (Price's theorem; Newton's
        derivative in the single-input problems, whose variances move with Sigma). phi'' is the
        derivative of phi' by autodiff (no Dirac masses at kinks of phi').

        Args:
            v1: first inputs' variances (M1,).
            v2: second inputs' variances (M2,).
            S: covariances (M1, M2).

        Returns:
            (M1, M2) expectations.
        """
        return self._quad(gaussian.derivative(self.act.dfn), v1, v2, S, self.act.fn)

    def _grid_dual(self, which, v1, v2, S, tab1, tab2, symmetric=False):
        """E f(u) f(u') on the grid, f = phi (which = 0) or phi' (1)."""
        closed = self.act.closed_form_dual if which == 0 else self.act.closed_form_ddual
        if self.closed:
            assert closed is not None
            val = closed(v1[:, None], v2[None, :], S)
        elif self.quad:
            f = self.act.fn if which == 0 else self.act.dfn
            val = self._quad_symmetric(f, v1, S) if symmetric else self._quad(f, v1, v2, S)
        else:
            val = mehler_grid(tab1[which], tab2[which], gaussian.correlation(v1[:, None], v2[None, :], S))
        return val + self._bump(closed, which, v1, v2, tab1, tab2)

    def _quad(self, f, v1, v2, S, g=None, pointwise=False):
        """E f(u) g(u') (g = f unless given) by the robust quadrature, on the grid v1 x v2 (or
        pointwise: v1, v2 and S of one shape)."""
        bp = self.act.breakpoints
        a, b = (v1, v2) if pointwise else (v1[:, None], v2[None, :])
        # a correlation within 8 ulps of +-1 is +-1 (an input with itself at one time, up to the
        # rounding of its covariance), as in the closed forms: kinked duals are sqrt(eps)-sensitive there
        c = arccos_correlation(a, b, S) * jnp.sqrt(a * b)
        return gaussian.expect_2d_quad(f, f if g is None else g, a, b, c, bp, bp, step=QUAD_STEP)[0]

    def _quad_symmetric(self, f, v, S):
        """:meth:`_quad` of f with itself on v x v, on the upper triangle of S, mirrored."""
        M = v.shape[0]
        i, j = np.triu_indices(M)
        full = np.zeros((M, M), int)
        full[i, j] = full[j, i] = np.arange(i.size)
        tri = self._quad(f, v[i], v[j], S[i, j], pointwise=True)
        return tri[full]

    def _bump(self, closed, which, v1, v2, tab1, tab2):
        if self.perturb == 0.0:
            return 0.0
        if self.quad:
            f = self.act.fn if which == 0 else self.act.dfn
            m1, m2 = (gaussian.expect_1d_quad(gaussian.squared(f), v, self.act.breakpoints)[0] for v in (v1, v2))
        elif self.closed:
            m1, m2 = closed(v1, v1, v1), closed(v2, v2, v2)
        else:
            m1, m2 = jnp.sum(tab1[which] ** 2, -1), jnp.sum(tab2[which] ** 2, -1)
        return self.perturb * jnp.sqrt(jnp.abs(m1[:, None] * m2[None, :]))


def mehler_grid(c1: jax.Array | np.ndarray, c2: jax.Array | np.ndarray, rho: jax.Array | np.ndarray) -> jax.Array:
    """sum_k rho_ij^k c1[i, k] c2[j, k] by Horner's rule.

    Args:
        c1: coefficient tables (M1, K).
        c2: coefficient tables (M2, K).
        rho: correlations (M1, M2).

    Returns:
        (M1, M2) sums.
    """

    def body(acc, k):
        return acc * rho + c1[:, k][:, None] * c2[:, k][None, :], None

    acc, _ = jax.lax.scan(body, jnp.zeros_like(rho), jnp.arange(c1.shape[1] - 1, -1, -1))
    return acc


def trim_terms(duals: Duals, tabs: Sequence[jax.Array | np.ndarray], threshold: float = 1e-10) -> Duals:
    """Drop the Mehler terms whose coefficients stay below ``threshold`` of the largest (over the
    given coefficient tables, of every probed input and node): the dropped tail contributes
    < ~terms * threshold^2 relative to the kernel, even at rho = 1 (1e-10: < ~1e-17). The count
    kept is rounded up by :func:`round_terms`. The caller certifies the result.

    Args:
        duals: Mehler duals.
        tabs: their tables (phi, phi') at the probed variances, (..., terms) each.
        threshold: relative size of the coefficients dropped.

    Returns:
        Duals with fewer terms, or the same.
    """
    if duals.closed:
        return duals
    mags = np.max([np.max(np.abs(np.asarray(t)).reshape(-1, t.shape[-1]), axis=0) for t in tabs], axis=0)
    big = np.nonzero(mags > threshold * mags.max())[0]
    keep = int(min(duals.terms, round_terms(int(big.max()) + 2)))
    return Duals(duals.act, keep)


def round_terms(k: int) -> int:
    """``k`` rounded up to a coarse ladder of term counts, four per octave (16, 20, 24, 28, 32,
    40, ..., 320, 384, 448, 512, ...): at most 25% more terms than needed, and so few distinct
    counts that a sweep over hyperparameters reuses the solvers compiled for each.

    Args:
        k: terms needed.

    Returns:
        The rung at or above ``k`` (at least 16).
    """
    k = max(int(k), 16)
    step = 2 ** (int(math.floor(math.log2(k))) - 2)
    return int(step * math.ceil(k / step))


def mehler_bounds(act: Activation, v: ArrayLike, terms: tuple) -> jax.Array:
    """Bounds on the relative error of the Mehler duals of ``act`` at the node variances ``v``,
    one per term count in ``terms``, all from the coefficient tables of the largest (traceable).

    Parseval: ``sum_k c_k(a)^2 = E f(sqrt(a) Z)^2``, so the truncated tail satisfies
    ``sum_{k>=K} c_k^2 = E f^2 - sum_{k<K} c_k^2``, and by Cauchy-Schwarz the Mehler error at
    any correlation is at most ``sqrt(tail_f(a) tail_f(b))``. ``E f^2`` comes from the robust
    quadrature (:func:`ntk_ode.gaussian.expect_1d_quad`), so an inaccurate coefficient table
    shows up here too. Relative to ``sqrt(E f(u)^2 E f(v)^2)``, max over phi and phi' and ``v``,
    in the dtype of ``v`` (plus 4 K eps for the rounding of the K-term sums).

    Args:
        act: the activation (without closed-form duals).
        v: node variances (any shape).
        terms: term counts.

    Returns:
        (len(terms),) bounds.
    """
    v = jnp.asarray(v)
    eps = jnp.finfo(v.dtype).eps
    counts = np.asarray(terms, int)
    worst = jnp.zeros(counts.size, v.dtype)
    for f in (act.fn, act.dfn):
        tab = gaussian.hermite_coefficients(f, v, int(counts.max()))
        m2, m2err = gaussian.expect_1d_quad(gaussian.squared(f), v, act.breakpoints)
        sq = tab**2
        partial = jnp.stack([jnp.sum(sq[..., :k], axis=-1) for k in counts], axis=-1)  # (..., len(terms))
        rel = (jnp.abs(m2[..., None] - partial) + m2err[..., None]) / jnp.maximum(
            m2[..., None], jnp.finfo(v.dtype).tiny
        ) + 4 * jnp.asarray(counts, v.dtype) * eps
        rel = jnp.where(m2[..., None] > 0, rel, 0.0).reshape(-1, counts.size)
        worst = jnp.maximum(worst, jnp.max(rel, axis=0))
    return worst


def mehler_bound(duals: Duals, v: ArrayLike) -> jax.Array:
    """:func:`mehler_bounds` of ``duals.terms`` (traceable; 0 for closed forms).

    Args:
        duals: Mehler duals.
        v: node variances (any shape).

    Returns:
        A scalar.
    """
    if duals.closed:
        return jnp.zeros((), jnp.asarray(v).dtype)
    return mehler_bounds(duals.act, v, (duals.terms,))[0]


def mehler_screen(act: Activation, v: ArrayLike, terms: Sequence[int]) -> np.ndarray:
    """:func:`mehler_bounds` at the node variances ``v`` for every count in ``terms``, in float64
    whatever the working precision (it measures truncation, not rounding): one table, so a
    ladder of counts is screened for the price of its largest rung.

    Args:
        act: the activation (closed forms: zeros).
        v: node variances (any shape).
        terms: term counts.

    Returns:
        The bounds, one per count.
    """
    terms = tuple(int(k) for k in terms)
    if act.has_closed_form:
        return np.zeros(len(terms))
    v = np.asarray(v, np.float64).reshape(-1)
    n = 2 ** math.ceil(math.log2(max(v.size, 1)))  # padded to a power of two: few compiled shapes
    with jax.enable_x64(True):
        padded = jnp.asarray(np.concatenate([v, np.full(n - v.size, v[-1])]), jnp.float64)
        return np.asarray(_mehler_bounds_jit(act, padded, terms))


def mehler_certificate(duals: Duals, v: ArrayLike) -> float:
    """:func:`mehler_bound` at the node variances ``v``, in float64 (:func:`mehler_screen`).

    Args:
        duals: the duals (0 is returned for closed forms).
        v: node variances (any shape).

    Returns:
        The bound.
    """
    return 0.0 if duals.closed else float(mehler_screen(duals.act, v, (duals.terms,))[0])


_mehler_bounds_jit = jax.jit(mehler_bounds, static_argnums=(0, 2))


def quad_certificate(duals: Duals, v: ArrayLike) -> float:
    """Relative error bound of the quadrature duals (step ``QUAD_STEP``): their difference to
    the rule at half the step (plus rounding), at a few of the node variances ``v`` (every
    third, and the largest), over correlations from -1 to 1 (at the near-kink correlations
    0.999 and 1 the rules are hardest).

    Args:
        duals: quadrature duals.
        v: node variances (any shape).

    Returns:
        The bound.
    """
    v = np.asarray(v).reshape(-1)
    v = np.unique(np.concatenate([np.sort(v)[:: max(1, v.size // 3)], [v.max()]]))
    a, b = (g.reshape(-1) for g in np.meshgrid(v, v, indexing="ij"))
    worst = 0.0
    bp = duals.act.breakpoints
    for f in (duals.act.fn, duals.act.dfn):
        m2a = np.asarray(gaussian.expect_1d_quad(gaussian.squared(f), a, bp)[0])
        m2b = np.asarray(gaussian.expect_1d_quad(gaussian.squared(f), b, bp)[0])
        for rho in (-1.0, -0.5, 0.0, 0.9, 0.999, 1.0):
            c = rho * np.sqrt(a * b)
            _, err = gaussian.expect_2d_quad(f, f, a, b, c, bp, bp, step=QUAD_STEP / 2)
            rel = np.asarray(err) / np.maximum(np.sqrt(np.abs(m2a * m2b)), 1e-300)
            worst = max(worst, float(np.max(rel)))
    return worst


def check_duals(act: Activation) -> None:
    """Refuse an activation whose duals can be neither closed forms nor quadratures.

    Args:
        act: the activation.

    Raises:
        ValueError: phi or phi' cannot be evaluated on JAX arrays, or is not finite on [-2, 2].
    """
    if act.has_closed_form:
        return
    try:
        z = jnp.linspace(-2.0, 2.0, 5)
        ok = bool(jnp.all(jnp.isfinite(act.fn(z)))) and bool(jnp.all(jnp.isfinite(act.dfn(z))))
    except Exception as e:  # noqa: BLE001 - any failure means quadrature is impossible
        raise ValueError(
            f"activation {act.name!r} has no closed-form duals and cannot be evaluated on JAX arrays "
            f"for quadrature: {e}"
        ) from e
    if not ok:
        raise ValueError(f"activation {act.name!r}: phi or phi' is not finite on [-2, 2]; no quadrature possible")


def is_kinked(act: Activation) -> bool:
    """Whether phi or phi' has kinks (dPhi is then not smooth along t = s of identical inputs).

    Args:
        act: the activation.

    Returns:
        True for kinked activations.
    """
    return bool(act.kinks) or not act.dphi_lipschitz
