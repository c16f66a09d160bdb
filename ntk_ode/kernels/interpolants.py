"""Certified interpolants of the infinite-width kernels: in the angle, and in (norm, norm, angle).

After the input scaling, the kernels of a Neural ODE depend on two inputs only through their
norms a = |x|, b = |x'| and the angle theta between them (docs/theory.md section 14). A tensor
Chebyshev interpolant in (a, b, u), with u = 1 - 2 theta / pi (in which even kinked activations'
kernels are smooth, section 8), replaces the per-pair ODE solves of a large input set by one table
of solves and a cheap evaluation per pair. :func:`build_norm_angle` chooses the numbers of nodes
adaptively and certifies the interpolant against direct solves at random off-node points.

For inputs of one norm the kernels depend on the angle alone: :func:`zonal_interpolant`
tabulates them on Chebyshev nodes in u and :func:`zonal_values` evaluates the interpolant.

This module knows nothing about Neural ODEs: the solves come in as a function of inputs (or of
cosines), never through ``kernel_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "CoefficientKernel",
    "Evaluate",
    "NormAngleKernel",
    "ZonalFailed",
    "build_norm_angle",
    "chebyshev_coefficients",
    "clenshaw",
    "cosine_to_u",
    "cosines",
    "lobatto",
    "pair_inputs",
    "zonal_interpolant",
    "zonal_values",
]


def lobatto(Q: int) -> np.ndarray:
    """The Q + 1 Chebyshev-Lobatto points cos(pi k / Q) in [-1, 1] (Q = 0: the point 0).

    Args:
        Q: the polynomial degree.

    Returns:
        (Q + 1,) points, from 1 down to -1.
    """
    return np.cos(np.pi * np.arange(Q + 1) / Q) if Q > 0 else np.zeros(1)


def cosine_to_u(cos: ArrayLike) -> jax.Array:
    """u = 1 - 2 arccos(cos) / pi, with cosines within 4 ulps of +-1 snapped to +-1 (their rounding
    would otherwise move a kernel that varies like sqrt(1 - cos) by ~1e-8).

    Args:
        cos: cosines (any shape), clipped to [-1, 1].

    Returns:
        u, the shape of ``cos``.
    """
    c = jnp.clip(cos, -1.0, 1.0)
    tol = 4 * jnp.finfo(c.dtype).eps
    c = jnp.where(jnp.abs(c) >= 1 - tol, jnp.sign(c), c)
    return 1.0 - 2.0 * jnp.arccos(c) / jnp.pi


def clenshaw(coef: jax.Array | np.ndarray, u: ArrayLike) -> jax.Array:
    """The Chebyshev series sum_k coef[k] T_k(u) by Clenshaw's recurrence.

    ``coef[k]`` may be arrays (the series' coefficients are then arrays broadcast against u).
    The recurrence is unrolled (up to 130 terms fully), so that XLA fuses its elementwise steps:
    on a 2048 x 2048 block of 65 terms, 3x faster than a rolled loop on a CPU.

    Args:
        coef: (K, ...) coefficients.
        u: points in [-1, 1].

    Returns:
        The series at u.
    """
    zero = jnp.zeros(jnp.broadcast_shapes(jnp.shape(u), coef.shape[1:]), coef.dtype)

    def body(carry, c):
        b1, b2 = carry
        return (2.0 * u * b1 - b2 + c, b1), None

    (b1, b2), _ = jax.lax.scan(body, (zero, zero), coef[:0:-1], unroll=_unroll(coef.shape[0]))
    return jnp.asarray(u * b1 - b2 + coef[0])


def _unroll(terms: int) -> int | bool:
    return True if terms <= 130 else 16


def cosines(x1: jax.Array | np.ndarray, x2: jax.Array | np.ndarray) -> jax.Array:
    """The cosines ``x1_i . x2_j / (|x1_i| |x2_j|)`` of two input sets, from one matrix product
    (divided by the true norms, not by a nominal radius: kernels that vary like
    ``sqrt(1 - cos)`` near ``cos = 1`` would feel a norm off by one rounding).

    Args:
        x1: inputs (N1, d).
        x2: inputs (N2, d).

    Returns:
        (N1, N2) cosines.
    """
    n1, n2 = jnp.linalg.norm(x1, axis=1), jnp.linalg.norm(x2, axis=1)
    return (x1 @ x2.T) / (n1[:, None] * n2[None, :])


class CoefficientKernel:
    """Pytree protocol for kernels given by a coefficient array (the leaf) and static fields
    named in ``STATIC`` (subclasses take ``(coefficients, *static)`` in their constructor)."""

    STATIC: tuple = ()
    coefficients: jax.Array

    def tree_flatten(self) -> tuple[tuple[jax.Array], tuple]:
        """Pytree protocol: the coefficients are the leaf.

        Returns:
            ``((coefficients,), static fields)``.
        """
        return (self.coefficients,), tuple(getattr(self, f) for f in self.STATIC)

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: Sequence[jax.Array]) -> Any:
        """Pytree protocol.

        Args:
            aux: the static fields.
            children: ``(coefficients,)``.

        Returns:
            The kernel.
        """
        return cls(children[0], *aux)  # type: ignore[call-arg]  # subclasses take (coefficients, *static)


def _vander(y, Q: int):
    cols = [jnp.ones_like(y)]
    if Q >= 1:
        cols.append(y)
    for _ in range(2, Q + 1):
        cols.append(2.0 * y * cols[-1] - cols[-2])
    return jnp.stack(cols, axis=-1)


@jax.tree_util.register_pytree_node_class
class NormAngleKernel(CoefficientKernel):
    """A kernel ``k(|x|, |x'|, cos)`` as a tensor Chebyshev series, from :func:`build_norm_angle`.

    Calling it and :meth:`gram` are pure JAX (jit, vmap).

    Attributes:
        coefficients: (Qa + 1, Qa + 1, Qu + 1) Chebyshev coefficients in (a, b, u), the norms
            mapped from [rmin, rmax] to [-1, 1].
        rmin: the smallest norm covered.
        rmax: the largest norm covered.
        error: estimated bound on |k - true kernel| over the covered norms and all angles.
    """

    STATIC = ("rmin", "rmax", "error")

    def __init__(self, coefficients, rmin: float, rmax: float, error: float):
        self.coefficients = coefficients
        self.rmin, self.rmax, self.error = rmin, rmax, error

    def _y(self, r):
        if self.coefficients.shape[0] == 1:
            return jnp.zeros_like(r)
        return (2.0 * r - (self.rmin + self.rmax)) / (self.rmax - self.rmin)

    def __call__(self, norm1: ArrayLike, norm2: ArrayLike, cos: ArrayLike) -> jax.Array:
        """The kernel at norms and cosines (broadcast together).

        Args:
            norm1: first inputs' norms.
            norm2: second inputs' norms.
            cos: cosines of the angles.

        Returns:
            Kernel values, the broadcast shape.
        """
        c = self.coefficients
        n1, n2, u = jnp.broadcast_arrays(
            jnp.asarray(norm1, c.dtype), jnp.asarray(norm2, c.dtype), jnp.asarray(cos, c.dtype)
        )
        qa = c.shape[0] - 1
        a, b = _vander(self._y(n1), qa), _vander(self._y(n2), qa)
        per_u = jnp.einsum("...i,...j,ijk->k...", a, b, c)
        return clenshaw(per_u, cosine_to_u(u))

    def gram(self, x1: jax.Array | np.ndarray, x2: jax.Array | np.ndarray | None = None) -> jax.Array:
        """The kernel matrix of inputs whose norms lie in [rmin, rmax] (nonzero).

        Cost per entry: (Qu + 1) products of length Qa + 1 and a Clenshaw step.

        Args:
            x1: inputs (N1, d).
            x2: inputs (N2, d) or None.

        Returns:
            (N1, N2) kernel matrix.
        """
        x2 = x1 if x2 is None else x2
        c = self.coefficients
        n1, n2 = jnp.linalg.norm(x1, axis=1), jnp.linalg.norm(x2, axis=1)
        u = cosine_to_u(cosines(x1, x2))
        qa = c.shape[0] - 1
        a = _vander(self._y(n1), qa) @ c.reshape(qa + 1, -1)  # (N1, (Qa+1)(Qu+1))
        a = a.reshape(n1.shape[0], qa + 1, c.shape[2])
        b = _vander(self._y(n2), qa)

        def body(carry, k):
            b1, b2 = carry
            ck = a[:, :, k] @ b.T
            return (2.0 * u * b1 - b2 + ck, b1), None

        zero = jnp.zeros_like(u)
        steps = jnp.arange(c.shape[2] - 1, 0, -1)
        (b1, b2), _ = jax.lax.scan(body, (zero, zero), steps, unroll=_unroll(c.shape[2]))
        return u * b1 - b2 + a[:, :, 0] @ b.T


def chebyshev_coefficients(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Coefficients of the interpolant of values at Chebyshev-Lobatto points along ``axes``.

    Args:
        values: node values, ``values.shape[ax] = Q + 1`` at ``lobatto(Q)`` along each axis.
        axes: the axes to transform.

    Returns:
        Coefficients, the shape of ``values``.
    """
    out = np.asarray(values, float)
    for ax in axes:
        Q = out.shape[ax] - 1
        if Q == 0:
            continue
        inv = np.linalg.inv(np.polynomial.chebyshev.chebvander(lobatto(Q), Q))
        out = np.moveaxis(np.tensordot(inv, np.moveaxis(out, ax, 0), axes=1), 0, ax)
    return out


def pair_inputs(d: int, a: ArrayLike, b: ArrayLike, theta: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``a_i e1`` and ``b_j (cos theta_k e1 + sin theta_k e2)`` in R^d.

    Args:
        d: dimension (>= 2).
        a: first norms (Na,).
        b: second norms (Nb,).
        theta: angles (Nt,).

    Returns:
        ``x1 (Na, d)`` and ``x2 (Nb * Nt, d)`` ordered (b, theta).
    """
    a, b, theta = (np.atleast_1d(np.asarray(v, float)) for v in (a, b, theta))
    x1 = np.zeros((a.size, d))
    x1[:, 0] = a
    x2 = np.zeros((b.size, theta.size, d))
    x2[:, :, 0] = b[:, None] * np.cos(theta)[None, :]
    x2[:, :, 1] = b[:, None] * np.sin(theta)[None, :]
    return x1, x2.reshape(-1, d)


Evaluate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _table(evaluate: Evaluate, d: int, norms1, norms2, theta):
    """Values (G, len(norms1), len(norms2), len(theta)) and their error estimates (G,)."""
    x1, x2 = pair_inputs(d, norms1, norms2, theta)
    vals, err = evaluate(x1, x2)
    vals = np.asarray(vals)
    return vals.reshape(vals.shape[0], len(norms1), len(norms2), len(theta)), np.asarray(err)


def _tail(coefs: np.ndarray, axis: int) -> np.ndarray:
    """Per kernel: 4 times the sum of the magnitudes of the last quarter of the Chebyshev
    coefficients along ``axis`` (largest over the other axes), an estimate of the truncation
    error of the interpolant once the coefficients decay."""
    Q = coefs.shape[axis] - 1
    last = np.take(np.abs(coefs), np.arange(Q - Q // 4, Q + 1), axis=axis)
    per = np.moveaxis(last, axis, -1).reshape(coefs.shape[0], -1, last.shape[axis]).max(axis=1)
    return 4.0 * per.sum(axis=1)


def _theta(u):
    return np.pi * (1.0 - np.asarray(u)) / 2.0


def build_norm_angle(
    evaluate: Evaluate,
    d: int,
    rmin: float,
    rmax: float,
    *,
    rtol: float,
    checks: int = 64,
    max_pairs: int = 400_000,
    seed: int = 0,
) -> list[NormAngleKernel]:
    """Certified interpolants of G kernels over norms in [rmin, rmax] and all angles.

    1. Tables of (Qa + 1)^2 (Qu + 1) solves, from Qa = 16 (0 for one norm) and Qu = 32: along
       each axis the truncation error is estimated from the last quarter of the Chebyshev
       coefficients, and the degree of an axis whose estimate exceeds half of ``rtol`` of the
       kernel's scale doubles. 2. On all pairs of 8 random first inputs with ``checks`` random
       second ones and the 8 first ones again (identical and parallel pairs), the interpolant
       is compared with direct solves; if it misses ``rtol`` both degrees double once more.

    The error bound is the larger of 4 times the largest check miss and the sum of the two
    axes' truncation estimates, plus the solves' own estimates.

    Args:
        evaluate: ``evaluate(x1, x2) -> (values (G, N1, N2), errors (G,))``, the direct solves.
        d: input dimension (>= 2).
        rmin: smallest norm (> 0).
        rmax: largest norm (>= rmin).
        rtol: target accuracy relative to each kernel's largest value.
        checks: random second inputs of the check pairs.
        max_pairs: most solves in one table.
        seed: seed of the check points.

    Returns:
        One :class:`NormAngleKernel` per kernel.

    Raises:
        ValueError: bad arguments.
        RuntimeError: no table within ``max_pairs`` meets ``rtol`` (the message says how close).
    """
    if not (0 < rmin <= rmax and math.isfinite(rmax)):
        raise ValueError(f"need 0 < rmin <= rmax < inf, got rmin={rmin!r}, rmax={rmax!r}")
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    span = rmax - rmin
    qa, qu = (0 if span <= 1e-12 * rmax else 16), 32
    nodes_r = lambda q: (rmin + rmax) / 2 + span / 2 * lobatto(q) if q else np.array([rmin])
    size = lambda qa, qu: (qa + 1) ** 2 * (qu + 1)

    def table(qa, qu):
        vals, err = _table(evaluate, d, nodes_r(qa), nodes_r(qa), _theta(lobatto(qu)))
        scale = np.abs(vals).reshape(vals.shape[0], -1).max(axis=1)
        coefs = chebyshev_coefficients(vals, (1, 2, 3))
        gap_u = _tail(coefs, 3)
        gap_a = np.maximum(_tail(coefs, 1), _tail(coefs, 2)) if qa else np.zeros_like(gap_u)
        return coefs, err, scale, gap_a, gap_u

    coefs, err, scale, gap_a, gap_u = table(qa, qu)
    while True:
        grow_a, grow_u = np.any(gap_a > rtol * scale / 2), np.any(gap_u > rtol * scale / 2)
        if not (grow_a or grow_u):
            break
        qa2, qu2 = (2 * qa if grow_a else qa), (2 * qu if grow_u else qu)
        if size(qa2, qu2) > max_pairs:
            rel = float(np.max((gap_a + gap_u) / scale))  # estimated relative truncation error
            raise RuntimeError(
                f"build_norm_angle: rtol={rtol:g} needs more than max_pairs={max_pairs} solves "
                f"(estimated relative error {rel:.1e} with {qa + 1} norm and {qu + 1} angle nodes)"
            )
        qa, qu = qa2, qu2
        coefs, err, scale, gap_a, gap_u = table(qa, qu)

    # check pairs: every pair of 8 random first inputs with 8 + checks second ones (random norms
    # and angles, and the first inputs themselves: identical and parallel pairs)
    rng = np.random.default_rng(seed)
    e1, e2 = np.eye(d)[0], np.eye(d)[1]
    x1c = rng.uniform(rmin, rmax, (8, 1)) * e1
    th = _theta(rng.uniform(-1.0, 1.0, (checks, 1)))
    x2c = np.concatenate([x1c, rng.uniform(rmin, rmax, (checks, 1)) * (np.cos(th) * e1 + np.sin(th) * e2)])
    direct, check_err = evaluate(x1c, x2c)
    direct = np.asarray(direct)
    for attempt in range(2):
        kernels = [NormAngleKernel(jnp.asarray(c), float(rmin), float(rmax), 0.0) for c in coefs]
        miss = np.array([np.max(np.abs(np.asarray(k.gram(x1c, x2c)) - t)) for k, t in zip(kernels, direct)])
        if np.all(miss <= rtol * scale):
            bound = np.maximum(4.0 * miss, gap_a + gap_u) + np.asarray(err) + np.asarray(check_err)
            return [NormAngleKernel(k.coefficients, k.rmin, k.rmax, float(e)) for k, e in zip(kernels, bound)]
        qa, qu = 2 * qa, 2 * qu
        if attempt or size(qa, qu) > max_pairs:
            break
        coefs, err, scale, gap_a, gap_u = table(qa, qu)
    raise RuntimeError(
        f"build_norm_angle: the (norm, norm, angle) table missed rtol={rtol:g} at its check points "
        f"(relative miss {float(np.max(miss / scale)):.1e})"
    )


class ZonalFailed(RuntimeError):
    """The equal-norm (zonal) table did not reach its tolerance."""


def zonal_interpolant(
    evaluate: Callable[[np.ndarray], np.ndarray], tol: float, main: Sequence[int], max_nodes: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Tabulate kernels of equal-norm inputs as functions of the angle theta = arccos(cos) on
    Chebyshev-Lobatto nodes in u = 1 - 2 theta / pi, doubling the nodes from 17 until the
    previous table's interpolant matches the new values to ``tol`` of the kernels' scale. In theta
    rather than in the cosine, because kernels of non-smooth activations behave like
    (1 - cos)^(k/2) at the ends (relu's arc-cosine kernels), which is smooth in theta.

    Args:
        evaluate: ``evaluate(cos) -> (K, len(cos))`` kernel values at the node cosines.
        tol: relative target.
        main: the rows of the table that must meet ``tol``.
        max_nodes: most Chebyshev intervals.

    Returns:
        ``(table (K, Q + 1), error (K,))``: the node values (for :func:`zonal_values`) and the
        largest difference of the last two tables.

    Raises:
        ZonalFailed: ``max_nodes`` do not reach ``tol``.
    """
    prev, Q = None, 16
    while Q <= max_nodes:
        u = lobatto(Q)
        tab = np.asarray(evaluate(np.cos(np.pi * (1.0 - u) / 2.0)))
        if prev is not None:
            # the previous table's interpolant at the new nodes vs the new values
            err = np.max(np.abs(zonal_values(prev, u).T - tab), axis=1)
            if np.all(err[main] <= tol * np.max(np.abs(tab[main]), axis=1)):
                return tab, err
        prev, Q = tab, 2 * Q
    raise ZonalFailed(f"equal-norm kernel table did not reach rtol={tol:g} with {max_nodes + 1} nodes")


_clenshaw_jit = jax.jit(clenshaw)


def zonal_values(tab: np.ndarray, u: jax.Array | np.ndarray, chunk: int = 2**20) -> np.ndarray:
    """The interpolant of the Lobatto node values ``tab`` (K, Q + 1) at ``u`` (P,): its Chebyshev
    coefficients summed by Clenshaw's recurrence in fixed, padded chunks of pairs.

    Args:
        tab: node values from :func:`zonal_interpolant`.
        u: points in [-1, 1] (``1 - 2 arccos(cos) / pi``).
        chunk: points evaluated at once.

    Returns:
        (P, K) values.
    """
    coef = jnp.asarray(chebyshev_coefficients(tab, (1,)).T[:, None, :])  # (Q + 1, 1, K)
    size = min(chunk, u.size)
    out = []
    for i in range(0, u.size, size):
        part = u[i : i + size]
        padded = np.concatenate([part, np.zeros(size - part.size)])[:, None]
        out.append(np.asarray(_clenshaw_jit(coef, jnp.asarray(padded, coef.dtype)))[: part.size])
    return np.concatenate(out)
