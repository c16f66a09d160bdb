"""The one core of the infinite-width engine (docs/theory.md section 3).

For inputs x, x' the two-time covariances solve

    Sigma(t, s) = Sigma00 + sigma_w^2 int_0^t int_0^s Phi(a, b) da db            (forward)
    K(t, s)     = K_TT    + sigma_w^2 int_t^T int_s^T dPhi(a, b) K(a, b) da db    (backward)
    Phi(t, s)   = E phi(u) phi(u'),  dPhi = E phi'(u) phi'(u'),
                  (u, u') ~ N(0, [[Sigma_x(t, t), Sigma(t, s)], [Sigma(t, s), Sigma_x'(s, s)]])

and  NTK = NNGP + sigma_w^2 int int Phi K dt ds + Sigma00 K(0, 0).

Both equations are Volterra equations on [0, T]^2, written on a grid (:mod:`.grids`) with
integration operators A (int_0^t), B (int_t^T) and weights w (int_0^T):

    Sigma = Sigma00 + sigma_w^2 A Phi(Sigma) A^T,     K = K_TT + sigma_w^2 B (dPhi o K) B^T,

and solved by Picard iteration on Chebyshev grids (which converges like (c T^2)^k / (k!)^2 for a
2-D Volterra operator). On a ResNet grid the operators are strictly triangular and the equations
are the exact recursion of K^L_inf, solved by substitution, layer by layer
(:func:`resnet_single_variances`, :func:`forward_substitution`, :func:`backward_substitution`):
O(L^2) duals in all.

Per-input variances Sigma_x(t, t) are found first by the single-input problems
(:func:`single_variances`); pairs then only see them as data (:func:`pair_kernels`) and are solved
in padded blocks spread over all local devices (:func:`solve_pairs`). Everything here is
traceable; the adaptive choices live in :mod:`.adapt`.

Hyperparameters are data: the compiled solvers take grids on [0, 1] (static, cached by value)
and ``(sigma_w, sigma_v, T)`` as traced scalars (:func:`hyperparameters`), scaling the grid's
operators by T inside the trace. A new sigma_w or T therefore reuses every compilation, and the
traced solvers (:func:`traced_singles`, :func:`traced_pairs`) serve the differentiable kernels
of :mod:`ntk_ode.hyper` as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from .duals import Duals
from .grids import Grid, scaled, shift

if TYPE_CHECKING:
    from ..model import NeuralODE

__all__ = [
    "MAX_ITER",
    "PAIR_GRID_BYTES",
    "PAIR_TABLE_BYTES",
    "SUBSTITUTION_MEHLER_NODES",
    "hyperparameters",
    "traced_pairs",
    "traced_singles",
    "newton",
    "pair_kernels",
    "picard",
    "raise_on_failure",
    "backward_substitution",
    "forward_substitution",
    "resnet_single_variances",
    "substitution",
    "single_covariances",
    "single_variances",
    "solve_pairs",
    "solve_singles",
]

MAX_ITER = 400
PAIR_TABLE_BYTES = 2**30  # coefficient tables gathered for one block of pairs
PAIR_GRID_BYTES = 2**29  # (M, M) arrays of one block of pairs (a deep ResNet grid: few pairs a block)


def picard(
    update: Callable[[jax.Array], jax.Array], init: jax.Array, tol: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Iterate X <- update(X) until max|dX| <= tol * max(1, max|X|) (traceable).

    Args:
        update: the map.
        init: the first iterate.
        tol: the relative stopping tolerance.

    Returns:
        ``(X, converged)``.
    """

    def cond(state):
        _, err, scale, it = state
        return (err > tol * scale) & (it < MAX_ITER) & jnp.isfinite(err)

    def body(state):
        X, _, _, it = state
        Xn = update(X)
        return Xn, jnp.max(jnp.abs(Xn - X)), jnp.maximum(1.0, jnp.max(jnp.abs(Xn))), it + 1

    big = jnp.asarray(jnp.finfo(init.dtype).max, init.dtype)
    X, err, scale, _ = jax.lax.while_loop(cond, body, (init, big, jnp.ones((), init.dtype), 0))
    return X, (err <= tol * scale) & jnp.all(jnp.isfinite(X))


def newton(
    update: Callable[[jax.Array], tuple[jax.Array, Any]],
    linear: Callable[[Any, jax.Array], jax.Array],
    init: jax.Array,
    tol: float | jax.Array,
) -> tuple[jax.Array, jax.Array, Any]:
    """Solve X = G(X) by Newton's method safeguarded by Picard steps (traceable), for maps
    whose evaluation dominates: one evaluation of G per iteration.

    ``update(X)`` returns ``(G(X), D)`` and ``linear(D, Y)`` is G's derivative at X applied to
    Y. A Newton step solves the linear equation Y = G(X) - X + linear(D, Y) by :func:`picard`
    (no evaluation of G) and proposes X + Y. The proposal is taken when its residual
    max|G - X| is smaller than the current one; otherwise the Picard step X -> G(X) is taken
    instead, which converges from anywhere. Stops when the next step has
    max|dX| <= tol * max(1, max|X|), the rule of :func:`picard`, and returns X plus that step. A
    derivative that leaves out part of G's makes the steps converge linearly rather than
    quadratically, to the same fixed point.

    Args:
        update: X -> (G(X), data of the derivative).
        linear: (data, Y) -> the derivative of G applied to Y.
        init: the first iterate.
        tol: the relative stopping tolerance.

    Returns:
        ``(X, converged, data)``: ``data`` is the derivative data of the last iterate evaluated,
        which differs from X by the last step (within the stopping rule), for callers that need
        quantities evaluated with it at the solution.
    """

    def newton_step(X, G, D):
        R = G - X
        return X + picard(lambda Y: R + linear(D, Y), R, tol)[0]

    def cond(state):
        *_, err, scale, it = state
        return (err > tol * scale) & (it < MAX_ITER) & jnp.isfinite(err)

    def body(state):
        X, G, D, r, P, is_picard, _, _, it = state
        GP, DP = update(P)
        rP = jnp.max(jnp.abs(GP - P))
        take = is_picard | (rP < r)  # a Picard proposal is always taken
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)  # noqa: E731
        X, G, D, r = pick((P, GP, DP, rP), (X, G, D, r))
        P = jnp.where(take, newton_step(X, G, D), G)
        return X, G, D, r, P, ~take, jnp.max(jnp.abs(P - X)), jnp.maximum(1.0, jnp.max(jnp.abs(P))), it + 1

    G0, D0 = update(init)
    r0 = jnp.max(jnp.abs(G0 - init))
    P0 = newton_step(init, G0, D0)
    one = jnp.ones((), init.dtype)
    state = (init, G0, D0, r0, P0, jnp.asarray(False), jnp.max(jnp.abs(P0 - init)), one, 1)
    _, _, D, _, P, _, err, scale, _ = jax.lax.while_loop(cond, body, state)
    return P, (err <= tol * scale) & jnp.all(jnp.isfinite(P)), D


def _tol(dtype):
    return 8 * float(jnp.finfo(dtype).eps)


def single_covariances(
    duals: Duals, grid: Grid, sigma_w: jax.Array, s00: jax.Array, init: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Sigma(t, s) of one input with itself on a collocation (Chebyshev) grid (traceable, also in
    ``sigma_w``, ``s00`` and the grid's operators).

    Args:
        duals: how Phi is evaluated.
        grid: the time grid (not one solved by :func:`substitution`).
        sigma_w: hidden weight scale.
        s00: ``Sigma^{0,0}(x, x)`` (scalar).
        init: the first iterate (M, M), e.g. the solution with other duals on the same grid;
            None: Sigma00 everywhere. Only the number of iterations depends on it.

    Returns:
        Sigma (M, M) and the convergence flag.
    """
    A = jnp.asarray(grid.A, s00.dtype)
    c = sigma_w**2
    basis = duals.basis(s00.dtype)  # the tables move with v; their basis does not

    def update(S):  # (one input with itself: Phi and dPhi are symmetric)
        v = jnp.diagonal(S)
        tab = duals.tables(v, basis)
        return s00 + c * A @ duals.phi(v, v, S, tab, tab, symmetric=True) @ A.T

    init = jnp.full((grid.size, grid.size), s00) if init is None else jnp.asarray(init, s00.dtype)
    if duals.quad:
        # Newton: Phi(i, j) moves with Sigma(i, j) by dPhi (Price's theorem) and with the
        # variances Sigma(i, i), Sigma(j, j) by half of E phi'' phi (H) and its transpose
        def step(S):
            v = jnp.diagonal(S)
            return update(S), (duals.dphi(v, v, S, (), (), symmetric=True), 0.5 * duals.variance_slope(v, v, S))

        def linear(D, Y):
            dphi, h = D
            y = jnp.diagonal(Y)
            return c * A @ (dphi * Y + h * y[:, None] + h.T * y[None, :]) @ A.T

        S, ok, _ = newton(step, linear, init, _tol(s00.dtype))
        return S, ok
    return picard(update, init, _tol(s00.dtype))


def single_variances(duals: Duals, grid: Grid, sigma_w: jax.Array, s00: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The variances diag Sigma(t, t) of one input on ``grid`` (traceable, also in ``sigma_w``,
    ``s00`` and the grid's operators): :func:`resnet_single_variances` on grids solved by
    substitution, the diagonal of :func:`single_covariances` on the others.

    Args:
        duals: how Phi is evaluated.
        grid: the time grid.
        sigma_w: hidden weight scale.
        s00: ``Sigma^{0,0}(x, x)`` (scalar).

    Returns:
        The variances diag(Sigma) on the grid and the convergence flag.
    """
    if substitution(duals, grid):
        return resnet_single_variances(duals, grid, sigma_w, s00)
    S, ok = single_covariances(duals, grid, sigma_w, s00)
    return jnp.diagonal(S), ok


def pair_kernels(
    duals: Duals,
    grid: Grid,
    sigma_w: jax.Array,
    sigma_v: jax.Array,
    head: str,
    s00: jax.Array,
    v1: jax.Array,
    v2: jax.Array,
    tab1: Any,
    tab2: Any,
    ntk: bool = True,
    S: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """NNGP, NTK, its (U, W, v) blocks and convergence flag for one input pair (docs/theory.md
    section 3), given both inputs' variances on ``grid``. Traceable, also in ``sigma_w``,
    ``sigma_v``, ``s00`` and the grid's operators.

    For an input with itself the forward equation is the single-input problem: pass its
    solution as ``S`` (:func:`single_covariances`) and only the backward equation is solved, with
    Phi and dPhi evaluated as symmetric (on one triangle of the grid, with quadrature duals).

    Args:
        duals: how Phi and dPhi are evaluated.
        grid: the time grid.
        sigma_w: hidden weight scale.
        sigma_v: readout scale.
        head: "linear" or "phi".
        s00: ``Sigma^{0,0}(x, x')``.
        v1: the first input's variances on the grid.
        v2: the second input's variances.
        tab1: the first input's coefficient tables (``duals.tables(v1)``).
        tab2: the second input's tables.
        ntk: False skips the NTK's equation (its value and the U, W blocks are then nan).
        S: None, or the single-input Sigma (M, M) when both inputs are one and the same (then
            ``v1`` is ``v2``, its diagonal, and ``s00`` its ``Sigma00``); not on grids solved by
            :func:`substitution`.

    Returns:
        ``(nngp, ntk, blocks (3,), converged)``.

    Raises:
        ValueError: ``S`` given on a grid solved by substitution.
    """
    dt = s00.dtype
    B, w = (jnp.asarray(m, dt) for m in (grid.B, grid.w))
    c = sigma_w**2
    sub = substitution(duals, grid)
    same = S is not None
    dPhi = None
    if S is not None:
        if sub:
            raise ValueError("pair_kernels: S is for collocation grids, not grids solved by substitution")
        Phi, ok1 = duals.phi(v1, v2, S, tab1, tab2, symmetric=True), jnp.asarray(True)
    elif sub:
        S, Phi = forward_substitution(duals, grid, c, s00, v1, v2, tab1, tab2)
        ok1 = jnp.all(jnp.isfinite(S))
    else:
        A = jnp.asarray(grid.A, dt)
        forward = lambda Phi: s00 + c * A @ Phi @ A.T  # noqa: E731
        init = jnp.full((grid.size,) * 2, s00)
        if duals.quad:
            # Newton: d Phi / d Sigma = dPhi (the variances are data here). Phi and dPhi of the
            # last iterate evaluated serve the kernels: 2 dual grids less than evaluating them
            # again at the returned Sigma, which is within the stopping rule (8 eps) of it
            def step(S):
                Phi = duals.phi(v1, v2, S, tab1, tab2)
                return forward(Phi), (duals.dphi(v1, v2, S, tab1, tab2), Phi)

            S, ok1, (dPhi, Phi) = newton(step, lambda D, Y: c * A @ (D[0] * Y) @ A.T, init, _tol(dt))
        else:
            S, ok1 = picard(lambda S: forward(duals.phi(v1, v2, S, tab1, tab2)), init, _tol(dt))
            Phi = duals.phi(v1, v2, S, tab1, tab2)
    assert S is not None
    sv2 = sigma_v**2
    nngp = sv2 * (Phi[-1, -1] if head == "phi" else S[-1, -1])
    if not ntk:
        nan = jnp.asarray(jnp.nan, dt)
        return nngp, nan, jnp.stack([nan, nan, nngp]), ok1
    if dPhi is None:
        dPhi = duals.dphi(v1, v2, S, tab1, tab2, symmetric=same)
    KT = sv2 * dPhi[-1, -1] if head == "phi" else jnp.asarray(sv2, dt)
    if sub:
        k00, W = backward_substitution(grid, c, KT, Phi, dPhi)
        ok2 = jnp.isfinite(k00) & jnp.isfinite(W)
    else:
        P = shift(dPhi) if grid.shift else dPhi
        K, ok2 = picard(lambda K: KT + c * B @ (P * K) @ B.T, jnp.full((grid.size,) * 2, KT), _tol(dt))
        Pw = shift(Phi) if grid.shift else Phi
        k00, W = K[0, 0], c * w @ (Pw * K) @ w
    blocks = jnp.stack([s00 * k00, W, nngp])  # U, W, v
    return nngp, jnp.sum(blocks), blocks, ok1 & ok2


SUBSTITUTION_MEHLER_NODES = 129  # ResNet grids from this many layers on: substitution with Mehler duals too


def substitution(duals: Duals, grid: Grid) -> bool:
    """Whether ``grid`` is solved by substitution (:func:`forward_substitution`) rather than Picard.

    ResNet grids are, except with Mehler duals on shallow grids: a Mehler row costs a sequential
    pass over the terms, so substitution's 2 (L + 1) such passes lose to Picard's few sweeps of
    whole-grid passes there (tanh, L = 32, 100 inputs: 44 s against 24 s), and win from a few
    hundred layers on, where a Picard sweep costs O(L^3).

    Args:
        duals: the duals.
        grid: the grid.

    Returns:
        True for substitution.
    """
    return grid.shift and (not duals.mehler or grid.size >= SUBSTITUTION_MEHLER_NODES)


def _rows(tab: Any, i: jax.Array | int) -> Any:
    """Row ``i`` (kept as a (1, ...) slice) of each coefficient table."""
    return tuple(jax.lax.dynamic_slice_in_dim(t, i, 1, axis=0) for t in tab)


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
    """y[m] = sum_{k < m} x[k]."""
    return jnp.concatenate([jnp.zeros_like(x[:1]), jnp.cumsum(x)[:-1]])


def _step(grid: Grid, dtype: DTypeLike) -> jax.Array:
    """The layer step dt of a ResNet grid (its operators are dt times triangles of ones)."""
    return jnp.asarray(grid.t[1] - grid.t[0], dtype)


def resnet_single_variances(
    duals: Duals, grid: Grid, sigma_w: jax.Array, s00: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """:func:`single_variances` on a ResNet grid by forward substitution (docs/theory.md section 3).

    There ``Sigma(n, m) = s00 + sigma_w^2 dt^2 sum_{i < n, k < m} Phi(i, k)``: the entries with
    ``m <= n`` need Phi only at layers below n, so layer n's row (and, by symmetry, column) follows
    from the layers before it. One sweep over the L + 1 layers of O(L) work each, against Picard's
    O(L^3) per sweep; the result is the same fixed point (the recursion of K^L_inf).

    Args:
        duals: how Phi is evaluated.
        grid: a ResNet grid (``grid.shift``).
        sigma_w: hidden weight scale.
        s00: ``Sigma^{0,0}(x, x)`` (scalar).

    Returns:
        The variances diag(Sigma) and a flag that they are finite.
    """
    M = grid.size
    c = sigma_w**2 * _step(grid, s00.dtype) ** 2
    k = jnp.arange(M)
    basis = duals.basis(s00.dtype)
    v0 = jnp.full((M,), s00)

    def shell(carry, n):
        colsum, v, tab = carry  # colsum[k] = sum_{i < n} Phi(i, k) for k < n
        row = s00 + c * _exclusive_cumsum(jnp.where(k < n, colsum, 0.0))  # Sigma(n, m), m <= n
        vn = row[n]
        v = v.at[n].set(vn)
        tn = duals.tables(vn[None], basis)
        tab = tuple(jax.lax.dynamic_update_slice_in_dim(t, r, n, axis=0) for t, r in zip(tab, tn))
        known = k <= n  # the layers whose variances are known; the others are masked out
        phi = duals.phi(vn[None], jnp.where(known, v, vn), jnp.where(known, row, 0.0)[None], tn, tab)[0]
        phi = jnp.where(known, phi, 0.0)
        colsum = jnp.where(k < n, colsum + phi, jnp.where(k == n, jnp.sum(phi), 0.0))
        return (colsum, v, tab), None

    (_, v, _), _ = jax.lax.scan(shell, (jnp.zeros((M,), s00.dtype), v0, duals.tables(v0, basis)), k)
    return v, jnp.all(jnp.isfinite(v))


def forward_substitution(
    duals: Duals, grid: Grid, c: jax.Array, s00: jax.Array, v1: jax.Array, v2: jax.Array, tab1: Any, tab2: Any
) -> tuple[jax.Array, jax.Array]:
    """A pair's Sigma on a ResNet grid, row by row forward in the layers (docs/theory.md section 3):
    ``Sigma(n, .) = s00 + c dt^2 sum_{i < n} (exclusive cumulative sum of Phi(i, .))``, with both
    inputs' variances known. O(L^2) duals and no Picard sweeps, so deep recursions (L in the
    thousands, for Richardson extrapolation) stay cheap.

    Args:
        duals: how Phi is evaluated.
        grid: a ResNet grid (``grid.shift``).
        c: ``sigma_w^2``.
        s00: ``Sigma^{0,0}(x, x')``.
        v1: the first input's variances on the grid.
        v2: the second input's variances.
        tab1: the first input's coefficient tables.
        tab2: the second input's tables.

    Returns:
        ``(Sigma, Phi)``, (M, M) each.
    """
    h2 = c * _step(grid, s00.dtype) ** 2

    def row(colsum, n):  # colsum = sum_{i < n} Phi(i, .)
        sig = s00 + h2 * _exclusive_cumsum(colsum)
        phi = duals.phi(v1[n][None], v2, sig[None], _rows(tab1, n), tab2)[0]
        return colsum + phi, (sig, phi)

    _, (S, Phi) = jax.lax.scan(row, jnp.zeros((grid.size,), s00.dtype), jnp.arange(grid.size))
    return S, Phi


def backward_substitution(
    grid: Grid, c: jax.Array, KT: jax.Array, Phi: jax.Array, dPhi: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """K on a ResNet grid, row by row backward in the layers (docs/theory.md section 3), with the
    W block accumulated on the way: ``K(n, m) = KT + c dt^2 sum_{i > n, k > m} dPhi(i-1, k-1) K(i, k)``.

    Args:
        grid: a ResNet grid (``grid.shift``).
        c: ``sigma_w^2``.
        KT: ``K(T, T)``.
        Phi: Phi on the grid (M, M).
        dPhi: dPhi on the grid (M, M).

    Returns:
        ``(K(0, 0), W block)``.
    """
    dt = Phi.dtype
    h2 = c * _step(grid, dt) ** 2
    w = jnp.asarray(grid.w, dt)
    up = lambda X, n: jnp.where(n > 0, jnp.pad(X[jnp.maximum(n - 1, 0), :-1], (1, 0)), 0.0)  # row n of shift(X)

    def row(carry, n):  # acc = sum_{i > n} shift(dPhi)(i, .) K(i, .)
        acc, wsum = carry
        k = KT + h2 * (jnp.sum(acc) - jnp.cumsum(acc))  # K(n, m) = KT + h2 sum_{k > m} acc[k]
        return (acc + up(dPhi, n) * k, wsum + w[n] * jnp.dot(w * up(Phi, n), k)), k[0]

    M = grid.size
    (_, wsum), k0 = jax.lax.scan(row, (jnp.zeros((M,), dt), jnp.zeros((), dt)), jnp.arange(M), reverse=True)
    return k0[0], c * wsum


def hyperparameters(model: NeuralODE, dtype: DTypeLike) -> tuple[jax.Array, ...]:
    """The traced hyperparameters of the core: ``(sigma_w, sigma_v, T)`` as arrays of ``dtype``.

    They enter every compiled solver as data, never as constants: a new setting reuses the
    compilations of the last (sigma_u enters through the input covariances).

    Args:
        model: the Neural ODE.
        dtype: the working dtype.

    Returns:
        Three scalars.
    """
    return tuple(jnp.asarray(getattr(model, k), dtype) for k in ("sigma_w", "sigma_v", "T"))


def traced_singles(
    duals: Duals, unit: Grid, sigma_w: jax.Array, T: jax.Array, s00: jax.Array, init: jax.Array | None = None
) -> tuple[jax.Array, Any, jax.Array, jax.Array | None]:
    """The single-input problems of the inputs with self-covariances ``s00`` (traceable).

    Args:
        duals: the duals.
        unit: the time grid on [0, 1] (scaled to [0, T] here).
        sigma_w: hidden weight scale.
        T: the horizon.
        s00: self-covariances ``Sigma^{0,0}(x, x)`` (P,).
        init: None, or first iterates (P, M, M) (:func:`single_covariances`); not on grids
            solved by :func:`substitution`.

    Returns:
        ``(v (P, M), tables, ok (P,), Sigma (P, M, M))``; Sigma is None on grids solved by
        substitution.

    Raises:
        ValueError: ``init`` given on a grid solved by substitution.
    """
    grid = scaled(unit, T)
    if substitution(duals, grid):
        if init is not None:
            raise ValueError("traced_singles: init is for collocation grids, not grids solved by substitution")
        v, ok = jax.vmap(lambda s: resnet_single_variances(duals, grid, sigma_w, s))(s00)
        S = None
    else:
        S, ok = jax.vmap(lambda s, i: single_covariances(duals, grid, sigma_w, s, i))(s00, init)
        v = jnp.diagonal(S, axis1=-2, axis2=-1)
    return v, duals.tables(v), ok, S


def traced_pairs(
    duals: Duals,
    unit: Grid,
    head: str,
    want_ntk: bool,
    hyper: tuple[jax.Array, ...],
    s00: jax.Array,
    v1: jax.Array,
    v2: jax.Array,
    tab1: Any,
    tab2: Any,
    row: bool = False,
    S: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`pair_kernels` of a batch of pairs (traceable); ``row=True``: one first input against
    a batch of second inputs, its variances and tables shared rather than broadcast.

    Args:
        duals: the duals.
        unit: the time grid on [0, 1].
        head: "linear" or "phi".
        want_ntk: False skips the NTK's equation.
        hyper: ``(sigma_w, sigma_v, T)`` (:func:`hyperparameters`).
        s00: pair covariances (P,).
        v1: first inputs' variances (P, M), or (M,) with ``row``.
        v2: second inputs' variances (P, M).
        tab1: first inputs' tables (shared with ``row``).
        tab2: second inputs' tables.
        row: share the first input.
        S: None, or the single-input Sigma of each pair (P, M, M) when every pair is an input
            with itself (:func:`pair_kernels`).

    Returns:
        ``(nngp (P,), ntk (P,), blocks (P, 3), ok (P,))``.
    """
    sigma_w, sigma_v, T = hyper
    grid = scaled(unit, T)

    def one(s, a, b, ta, tb, Sp):
        return pair_kernels(duals, grid, sigma_w, sigma_v, head, s, a, b, ta, tb, ntk=want_ntk, S=Sp)

    first = None if row else 0
    return jax.vmap(one, in_axes=(0, first, 0, first, 0, 0))(s00, v1, v2, tab1, tab2, S)


_singles_jit = jax.jit(traced_singles, static_argnums=(0, 1))
_pairs_jit = jax.jit(traced_pairs, static_argnums=(0, 1, 2, 3), static_argnames=("row",))


def solve_singles(
    duals: Duals, unit: Grid, hyper: tuple[jax.Array, ...], s00: jax.Array, init: jax.Array | None = None
) -> tuple[jax.Array, Any, jax.Array, jax.Array | None]:
    """Variances, coefficient tables, convergence flags and covariances of the single-input
    problems (compiled once per duals, grid, shape and presence of ``init``; the
    hyperparameters are data).

    Args:
        duals: the duals.
        unit: the time grid on [0, 1].
        hyper: ``(sigma_w, sigma_v, T)`` (:func:`hyperparameters`).
        s00: self-covariances ``Sigma^{0,0}(x, x)`` (P,).
        init: None, or first iterates (P, M, M) (:func:`traced_singles`).

    Returns:
        ``(v (P, M), tables, ok (P,), Sigma (P, M, M) or None)``.
    """
    return _singles_jit(duals, unit, hyper[0], hyper[2], s00, init)


def _mesh_sharding():
    devs = jax.local_devices()
    if len(devs) < 2:
        return None, 1
    mesh = jax.sharding.Mesh(np.array(devs), ("pairs",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("pairs")), len(devs)


def solve_pairs(
    duals: Duals,
    unit: Grid,
    hyper: tuple[jax.Array, ...],
    head: str,
    s00: jax.Array,
    i1: np.ndarray,
    i2: np.ndarray,
    v: jax.Array,
    tabs: Any,
    block_size: int,
    progress: bool,
    shard: bool,
    want_ntk: bool = True,
    S: jax.Array | None = None,
) -> tuple[np.ndarray, ...]:
    """Solve the pairs of rows (i1[p], i2[p]) of ``v``, ``tabs`` with pair covariances s00[p],
    in padded blocks (spread over the local devices when ``shard``).

    Args:
        duals: the duals.
        unit: the time grid on [0, 1].
        hyper: ``(sigma_w, sigma_v, T)`` (:func:`hyperparameters`).
        head: "linear" or "phi".
        s00: pair covariances ``Sigma^{0,0}(x, x')`` (P,).
        i1: rows of the first inputs (P,).
        i2: rows of the second inputs (P,).
        v: single-input variances (rows, M).
        tabs: their coefficient tables.
        block_size: pairs per block.
        progress: a progress bar over the blocks.
        shard: spread each block over the local devices.
        want_ntk: False skips the NTK's equation.
        S: None, or the rows' single-input Sigma (rows, M, M) when every pair is an input with
            itself (i1 == i2; :func:`pair_kernels`).

    Returns:
        ``(nngp (P,), ntk (P,), blocks (P, 3), ok (P,))`` as numpy arrays.
    """
    P = s00.shape[0]
    sharding, ndev = _mesh_sharding() if shard else (None, 1)
    bs = 1 if duals.per_input_batch else block_size
    if tabs:  # both inputs' (phi, phi') tables are gathered per pair: a block holds at most ~1 GiB
        per_pair = 4 * tabs[0].shape[-2] * tabs[0].shape[-1] * tabs[0].dtype.itemsize
        bs = min(bs, max(1, PAIR_TABLE_BYTES // per_pair))
    bs = min(bs, max(1, PAIR_GRID_BYTES // (2 * unit.size**2 * s00.dtype.itemsize)))
    if P < bs:  # a few padded sizes, so that probes of different sizes reuse their compilations
        bs = min(bs, 2 ** math.ceil(math.log2(P)))
    bs = int(math.ceil(bs / ndev) * ndev)
    outs = []
    starts = range(0, P, bs)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"kernel pairs (grid {unit.size})", unit="block")
    for s in starts:
        idx = np.arange(s, s + bs)
        idx = np.minimum(idx, P - 1)  # pad the last block by repetition
        args = (s00[idx], v[i1[idx]], v[i2[idx]], tuple(t[i1[idx]] for t in tabs), tuple(t[i2[idx]] for t in tabs))
        own = None if S is None else S[i1[idx]]
        if sharding is not None:
            args, own = jax.device_put((args, own), sharding)
        out = _pairs_jit(duals, unit, head, bool(want_ntk), hyper, *args, S=own)
        if progress:  # a bar that follows the computation, not the dispatch (a sync, no transfer)
            jax.block_until_ready(out)
        outs.append(out)
    # the blocks stay on the device(s) until the end: one transfer of them all per call, not one
    # per block (and no device-side concatenation, which would compile per block count)
    host = jax.device_get(outs)
    return tuple(np.concatenate([np.asarray(a) for a in o])[:P] for o in zip(*host))


def raise_on_failure(ok: ArrayLike, nngp: ArrayLike, ntk: ArrayLike, model: NeuralODE, what: str) -> None:
    """Raise when a solve blew up or did not converge.

    Args:
        ok: convergence flags.
        nngp: NNGP values.
        ntk: NTK values.
        model: the model (named in the message).
        what: what was solved.

    Raises:
        FloatingPointError: a kernel is not finite.
        RuntimeError: the Picard iteration did not converge.
    """
    if not np.all(np.isfinite(nngp)) or not np.all(np.isfinite(ntk)):
        why = (
            "the covariance recursion blew up (a polynomial activation explodes in finite time at large sigma_w T)"
            if model.activation.polynomial
            else "the kernels grow like exp(c sigma_w T) and the solve overflowed or lost all accuracy; "
            "the exact ResNet kernel (depth=L) or a smaller sigma_w T may still be computable"
        )
        raise FloatingPointError(
            f"{what}: the infinite-width kernel is not finite (activation {model.activation.name!r}, "
            f"T={model.T}, sigma_w={model.sigma_w}): {why}"
        )
    if not np.all(ok):
        raise RuntimeError(
            f"{what}: the Picard iteration for the two-time covariances did not converge in "
            f"{MAX_ITER} sweeps (T * sigma_w = {model.T * model.sigma_w:g} too large?)"
        )
