"""Infinite-width NNGP and NTK of the weight-tied Neural ODE and of its Euler ResNet.

docs/theory.md section 3. For inputs x, x' the two-time covariances solve

    Sigma(t, s) = Sigma00 + sigma_w^2 int_0^t int_0^s Phi(a, b) da db            (forward)
    K(t, s)     = K_TT    + sigma_w^2 int_t^T int_s^T dPhi(a, b) K(a, b) da db    (backward)
    Phi(t, s)   = E phi(u) phi(u'),  dPhi = E phi'(u) phi'(u'),
                  (u, u') ~ N(0, [[Sigma_x(t, t), Sigma(t, s)], [Sigma(t, s), Sigma_x'(s, s)]])

and  NTK = NNGP + sigma_w^2 int int Phi K dt ds + Sigma00 K(0, 0).

Method. Both equations are Volterra equations on [0, T]^2, written on a grid with integration
operators A (int_0^t), B (int_t^T) and weights w (int_0^T):

    Sigma = Sigma00 + sigma_w^2 A Phi(Sigma) A^T,     K = K_TT + sigma_w^2 B (dPhi o K) B^T,

and solved by Picard iteration (which converges like (c T^2)^k / (k!)^2 for a 2-D Volterra
operator). Two grids:

* ``depth=L``: t_l = l T / L, A = dt x (strictly lower ones), B = dt x (strictly upper ones), with
  the one-step shift of docs/theory.md section 3 (lambda at l+1 against phi at l). Here the grid equations *are*
  the exact recursion of the weight-tied ResNet's infinite-width kernel K^L_inf; the Picard
  iteration reaches their fixed point exactly (it is nilpotent).
* ``depth=None``: Chebyshev-Lobatto nodes in t with the spectral integration matrix
  (Clenshaw-Curtis weights): spectral collocation, error decaying geometrically in the number of
  nodes M for smooth activations. M is chosen adaptively (M and 2M compared on the diagonal
  and a few pairs) to meet ``rtol``; the estimate is returned on request.

Per-input variances Sigma_x(t, t) are found first by the N single-input problems (the
coupled fill (section 3: shells, not anti-diagonals) is handled by iterating the whole single-input grid to
its fixed point); pairs then only see them as data, and are solved in blocks of bounded size,
spread over all local devices. Duals: closed forms where the activation has them, otherwise the
Mehler series sum_k rho^k c_k(a) c_k(b) with Hermite coefficient tables c_k stored per input and
time node (:mod:`ntk_ode.gaussian`), so a grid point costs a short polynomial, not a quadrature.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import gaussian
from ._checks import check_depth, check_inputs
from .activations import Activation
from .tables import NormAngleKernel, build_norm_angle, chebyshev_coefficients, clenshaw, lobatto

__all__ = [
    "Kernel",
    "kernel_fn",
    "kernel_type",
    "norm_angle_kernel",
    "TABLE_MIN_PAIRS",
    "Grid",
    "chebyshev_grid",
    "resnet_grid",
    "richardson",
    "Duals",
    "single_variances",
    "pair_kernels",
]

Kernel = collections.namedtuple("Kernel", ["nngp", "ntk", "ntk_U", "ntk_W", "ntk_v"], defaults=(None, None, None))
Kernel.__doc__ = """Infinite-width kernels; ``ntk = ntk_U + ntk_W + ntk_v`` (the blocks of U, W and v)."""
GETS = ("nngp", "ntk", "ntk_U", "ntk_W", "ntk_v")


# ----------------------------------------------------------------------------- grids


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """Time nodes with forward/backward integration operators and quadrature weights."""

    t: np.ndarray
    A: np.ndarray  # (A f)_i ~ int_0^{t_i} f
    B: np.ndarray  # (B f)_i ~ int_{t_i}^T f
    w: np.ndarray  # sum_i w_i f_i ~ int_0^T f
    shift: bool  # discrete ResNet: backward and W-term use dPhi, Phi at the previous layer

    @property
    def size(self) -> int:
        """Number of input pairs."""
        return self.t.size


@functools.lru_cache(maxsize=64)
def chebyshev_grid(M: int, T: float) -> Grid:
    """M + 1 Chebyshev-Lobatto nodes on [0, T] with the spectral integration matrix."""
    j = np.arange(M + 1)
    x = -np.cos(np.pi * j / M)  # ascending in [-1, 1]
    V = np.polynomial.chebyshev.chebvander(x, M)  # V[j, k] = T_k(x_j)
    Vint = np.empty_like(V)
    for k in range(M + 1):
        e = np.zeros(M + 1)
        e[k] = 1.0
        Vint[:, k] = np.polynomial.chebyshev.chebval(x, np.polynomial.chebyshev.chebint(e, lbnd=-1.0))
    A = (T / 2.0) * np.linalg.solve(V.T, Vint.T).T  # Vint @ inv(V)
    A[0] = 0.0
    w = A[-1].copy()
    B = w[None, :] - A
    return Grid(t=T * (x + 1.0) / 2.0, A=A, B=B, w=w, shift=False)


@functools.lru_cache(maxsize=64)
def resnet_grid(L: int, T: float) -> Grid:
    """Layers l = 0..L of the weight-tied Euler ResNet (exact discrete operators)."""
    dt = T / L
    S = np.tril(np.ones((L + 1, L + 1)), -1)
    w = np.full(L + 1, dt)
    w[0] = 0.0
    return Grid(t=dt * np.arange(L + 1), A=dt * S, B=dt * S.T, w=w, shift=True)


def _shift(P):
    """P^{i,j} -> P^{i-1,j-1} (zero in row and column 0)."""
    return jnp.pad(P[:-1, :-1], ((1, 0), (1, 0)))


# ----------------------------------------------------------------------------- duals on a grid


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
    def closed(self) -> bool:
        """Whether the activation's duals are closed forms."""
        return self.act.has_closed_form

    def tables(self, v):
        """Hermite coefficient tables (phi, phi') for variances v (empty for closed forms).

        Args:
            v: variances (...,).

        Returns:
            ``()`` or two arrays (..., terms).
        """
        if self.closed or self.quad:
            return ()
        return (
            gaussian.hermite_coefficients(self.act.fn, v, self.terms),
            gaussian.hermite_coefficients(self.act.dfn, v, self.terms),
        )

    def phi(self, v1, v2, S, tab1, tab2):
        """E phi(u) phi(u') on the grid v1 x v2 with covariances S.

        Args:
            v1: first inputs' variances (M1,).
            v2: second inputs' variances (M2,).
            S: covariances (M1, M2).
            tab1: :meth:`tables` of v1.
            tab2: :meth:`tables` of v2.

        Returns:
            (M1, M2) expectations.
        """
        return self._grid_dual(0, v1, v2, S, tab1, tab2)

    def dphi(self, v1, v2, S, tab1, tab2):
        """E phi'(u) phi'(u') on the grid v1 x v2 with covariances S.

        Args:
            v1: first inputs' variances (M1,).
            v2: second inputs' variances (M2,).
            S: covariances (M1, M2).
            tab1: :meth:`tables` of v1.
            tab2: :meth:`tables` of v2.

        Returns:
            (M1, M2) expectations.
        """
        return self._grid_dual(1, v1, v2, S, tab1, tab2)

    def _grid_dual(self, which, v1, v2, S, tab1, tab2):
        """E f(u) f(u') on the grid, f = phi (which = 0) or phi' (1)."""
        closed = self.act.closed_form_dual if which == 0 else self.act.closed_form_ddual
        if self.closed:
            assert closed is not None
            val = closed(v1[:, None], v2[None, :], S)
        elif self.quad:
            val = self._quad(self.act.fn if which == 0 else self.act.dfn, v1, v2, S)
        else:
            val = _mehler_grid(tab1[which], tab2[which], gaussian.correlation(v1[:, None], v2[None, :], S))
        return val + self._bump(closed, which, v1, v2, tab1, tab2)

    def _quad(self, f, v1, v2, S):
        bp = self.act.breakpoints
        return gaussian.expect_2d_quad(f, f, v1[:, None], v2[None, :], S, bp, bp, step=_QUAD_STEP)[0]

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


_QUAD_STEP = 1.0 / 32.0  # tanh-sinh step of the quadrature duals inside the solvers


def _mehler_grid(c1, c2, rho):
    """sum_k rho_ij^k c1[i, k] c2[j, k] by Horner's rule."""

    def body(acc, k):
        return acc * rho + c1[:, k][:, None] * c2[:, k][None, :], None

    acc, _ = jax.lax.scan(body, jnp.zeros_like(rho), jnp.arange(c1.shape[1] - 1, -1, -1))
    return acc


# ----------------------------------------------------------------------------- Picard solvers

_MAX_ITER = 400


def _picard(update, init, tol):
    """Iterate X <- update(X) until max|dX| <= tol * max(1, max|X|); returns (X, converged)."""

    def cond(state):
        _, err, scale, it = state
        return (err > tol * scale) & (it < _MAX_ITER) & jnp.isfinite(err)

    def body(state):
        X, _, _, it = state
        Xn = update(X)
        return Xn, jnp.max(jnp.abs(Xn - X)), jnp.maximum(1.0, jnp.max(jnp.abs(Xn))), it + 1

    big = jnp.asarray(jnp.finfo(init.dtype).max, init.dtype)
    X, err, scale, _ = jax.lax.while_loop(cond, body, (init, big, jnp.ones((), init.dtype), 0))
    return X, (err <= tol * scale) & jnp.all(jnp.isfinite(X))


def _tol(dtype):
    return 8 * float(jnp.finfo(dtype).eps)


def single_variances(duals: Duals, grid: Grid, sigma_w, s00):
    """Sigma(t, s) of one input with itself on ``grid`` (traceable, also in ``sigma_w``, ``s00``
    and the grid's operators).

    Args:
        duals: how Phi is evaluated.
        grid: the time grid.
        sigma_w: hidden weight scale.
        s00: ``Sigma^{0,0}(x, x)`` (scalar).

    Returns:
        The variances diag(Sigma) on the grid and the Picard convergence flag.
    """
    A = jnp.asarray(grid.A, s00.dtype)
    c = sigma_w**2

    def update(S):
        v = jnp.diagonal(S)
        tab = duals.tables(v)
        return s00 + c * A @ duals.phi(v, v, S, tab, tab) @ A.T

    S, ok = _picard(update, jnp.full((grid.size, grid.size), s00), _tol(s00.dtype))
    return jnp.diagonal(S), ok


def pair_kernels(duals: Duals, grid: Grid, sigma_w, sigma_v, head: str, s00, v1, v2, tab1, tab2, ntk: bool = True):
    """NNGP, NTK, its (U, W, v) blocks and convergence flag for one input pair (docs/theory.md
    section 3), given both inputs' variances on ``grid``. Traceable, also in ``sigma_w``,
    ``sigma_v``, ``s00`` and the grid's operators.

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

    Returns:
        ``(nngp, ntk, blocks (3,), converged)``.
    """
    dt = s00.dtype
    A, B, w = (jnp.asarray(m, dt) for m in (grid.A, grid.B, grid.w))
    c = sigma_w**2
    S, ok1 = _picard(
        lambda S: s00 + c * A @ duals.phi(v1, v2, S, tab1, tab2) @ A.T, jnp.full((grid.size,) * 2, s00), _tol(dt)
    )
    Phi = duals.phi(v1, v2, S, tab1, tab2)
    sv2 = sigma_v**2
    nngp = sv2 * (Phi[-1, -1] if head == "phi" else S[-1, -1])
    if not ntk:
        nan = jnp.asarray(jnp.nan, dt)
        return nngp, nan, jnp.stack([nan, nan, nngp]), ok1
    dPhi = duals.dphi(v1, v2, S, tab1, tab2)
    KT = sv2 * dPhi[-1, -1] if head == "phi" else jnp.asarray(sv2, dt)
    P = _shift(dPhi) if grid.shift else dPhi
    K, ok2 = _picard(lambda K: KT + c * B @ (P * K) @ B.T, jnp.full((grid.size,) * 2, KT), _tol(dt))
    Pw = _shift(Phi) if grid.shift else Phi
    blocks = jnp.stack([s00 * K[0, 0], c * w @ (Pw * K) @ w, nngp])  # U, W, v
    return nngp, jnp.sum(blocks), blocks, ok1 & ok2


# ----------------------------------------------------------------------------- drivers


def _s00(model, x1, x2):
    return model.input_scale(x1.shape[-1]) ** 2 * jnp.sum(x1 * x2, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _singles_jit(duals, grid, sigma_w, s00):
    v, ok = jax.vmap(lambda s: single_variances(duals, grid, sigma_w, s))(s00)
    return v, duals.tables(v), ok


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _pairs_jit(duals, grid, model, want_ntk, s00, v1, v2, tab1, tab2):
    def one(s, a, b, ta, tb):
        return pair_kernels(duals, grid, model.sigma_w, model.sigma_v, model.head, s, a, b, ta, tb, ntk=want_ntk)

    return jax.vmap(one)(s00, v1, v2, tab1, tab2)


def _mesh_sharding():
    devs = jax.local_devices()
    if len(devs) < 2:
        return None, 1
    mesh = jax.sharding.Mesh(np.array(devs), ("pairs",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("pairs")), len(devs)


def _solve_pairs(duals, grid, model, s00, i1, i2, v, tabs, block_size, progress, shard, want_ntk=True):
    """Solve the pairs of rows (i1[p], i2[p]) of ``v``, ``tabs`` with pair covariances s00[p],
    in padded blocks."""
    P = s00.shape[0]
    sharding, ndev = _mesh_sharding() if shard else (None, 1)
    bs = 1 if duals.per_input_batch else block_size
    if P < bs:  # a few padded sizes, so that probes of different sizes reuse their compilations
        bs = min(bs, 2 ** math.ceil(math.log2(P)))
    bs = int(math.ceil(bs / ndev) * ndev)
    outs = []
    starts = range(0, P, bs)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"kernel pairs (grid {grid.size})", unit="block")
    for s in starts:
        idx = np.arange(s, s + bs)
        idx = np.minimum(idx, P - 1)  # pad the last block by repetition
        args = (s00[idx], v[i1[idx]], v[i2[idx]], tuple(t[i1[idx]] for t in tabs), tuple(t[i2[idx]] for t in tabs))
        if sharding is not None:
            args = jax.device_put(args, sharding)
        nngp, ntk, blocks, ok = _pairs_jit(duals, grid, model, bool(want_ntk), *args)
        n_real = min(bs, P - s)
        outs.append(tuple(np.asarray(a)[:n_real] for a in (nngp, ntk, blocks, ok)))
    return tuple(np.concatenate(o) for o in zip(*outs))


def _check_x(x, name, d=None):
    if isinstance(x, jax.core.Tracer):
        raise ValueError(f"{name}: kernel_fn evaluates eagerly; call it outside jit")
    return check_inputs(x, d, name, expected_by="x1 has")


def _check_get(get):
    single = isinstance(get, str)
    names = (get,) if single else tuple(get)
    bad = [g for g in names if g not in GETS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"get must be one of {GETS} or a tuple of distinct ones, got {get!r}")
    return names, single


@functools.cache
def kernel_type(names: tuple):
    """The namedtuple returned for ``get=names``: exactly those fields, in that order (as in
    neural-tangents), so ``nngp, ntk = kfn(x1, None, ("nngp", "ntk"))`` unpacks. ``names`` equal
    to all five gives :class:`Kernel` itself."""
    if tuple(names) == GETS:
        return Kernel
    t = collections.namedtuple("Kernel", names)  # type: ignore[misc]
    t.__doc__ = f"Infinite-width kernels {', '.join(names)} (a selection of :class:`Kernel`'s fields)."
    return t


def _raise_on_failure(ok, nngp, ntk, model, what):
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
            f"{_MAX_ITER} sweeps (T * sigma_w = {model.T * model.sigma_w:g} too large?)"
        )


class _Problem:
    """All inputs of one kfn call: per-input variances on a grid and the pairs to solve.

    The single-input problems depend on an input only through its self-covariance
    ``Sigma^{0,0}(x, x)``: they are solved once per distinct value (``rows``), and only for the
    inputs asked for (the grid and dual probes touch a few inputs, not all of them).
    """

    def __init__(self, model, duals, x1, x2, symmetric, want_ntk=True):
        self.model, self.duals = model, duals
        self.x1, self.x2 = x1, x1 if symmetric else x2
        self.X = x1 if symmetric else jnp.concatenate([x1, x2])
        self.N1 = x1.shape[0]
        self.N2 = x1.shape[0] if symmetric else x2.shape[0]
        off = 0 if symmetric else self.N1
        if symmetric:
            i1, i2 = np.triu_indices(self.N1)
        else:
            i1, i2 = (a.ravel() for a in np.meshgrid(np.arange(self.N1), np.arange(self.N2), indexing="ij"))
        self.i1, self.i2_local, self.i2 = i1, i2, i2 + off
        self.symmetric = symmetric
        # the kernels checked and reported: the NNGP, and the NTK unless only the NNGP is asked
        self.want_ntk = want_ntk
        self.main = [0, 1] if want_ntk else [0]
        self.input_s00 = np.asarray(_s00(model, self.X, self.X))
        values, self.slot = np.unique(self.input_s00, return_inverse=True)
        self.s00_values = jnp.asarray(values, self.X.dtype)
        self._singles: dict = {}
        self._cos = None

    def rows(self, inputs):
        """The rows of :meth:`singles` holding ``inputs`` (indices into X)."""
        return np.unique(self.slot[np.asarray(inputs, int)])

    def extreme_inputs(self):
        """The inputs of largest and smallest self-covariance."""
        return [int(np.argmax(self.input_s00)), int(np.argmin(self.input_s00))]

    def singles(self, grid, inputs=None):
        """Variances and coefficient tables on ``grid``, one row per distinct self-covariance
        (``rows(inputs)``). The rows of ``inputs`` (None: all) are solved, once per grid and
        duals; rows not asked for yet hold zeros."""
        key = (grid, self.duals)
        rows = np.arange(self.s00_values.shape[0]) if inputs is None else self.rows(inputs)
        entry = self._singles.get(key)
        todo = rows if entry is None else rows[~entry[2][rows]]
        if todo.size:
            v, tabs = self._solve_singles(grid, todo)
            if entry is None:
                U = self.s00_values.shape[0]
                zeros = lambda a: jnp.zeros((U,) + a.shape[1:], a.dtype)
                entry = (zeros(v), tuple(zeros(t) for t in tabs), np.zeros(U, bool))
            entry = (entry[0].at[todo].set(v), tuple(t.at[todo].set(n) for t, n in zip(entry[1], tabs)), entry[2])
            entry[2][todo] = True
            self._singles[key] = entry
        assert entry is not None, "singles: no inputs asked for"
        return entry[0], entry[1]

    def drop_singles(self, grid):
        """Forget the single-input solutions on ``grid`` (memory of large ResNet grids)."""
        for key in [k for k in self._singles if k[0] is grid]:
            del self._singles[key]

    def _solve_singles(self, grid, rows):
        s00 = self.s00_values
        if self.duals.per_input_batch:
            parts = [_singles_jit(self.duals, grid, self.model.sigma_w, s00[r : r + 1]) for r in rows]
            v, tabs, ok = (jnp.concatenate([p[0] for p in parts]), (), jnp.concatenate([p[2] for p in parts]))
        else:
            # padded to a few sizes, so that probes and full solves reuse their compilations
            n = rows.size
            size = 2 ** math.ceil(math.log2(n)) if n <= 256 else 256 * math.ceil(n / 256)
            padded = np.concatenate([rows, np.full(size - n, rows[-1])])
            v, tabs, ok = _singles_jit(self.duals, grid, self.model.sigma_w, s00[padded])
            v, tabs, ok = v[:n], tuple(t[:n] for t in tabs), ok[:n]
        nan = ~np.isfinite(np.asarray(v)).all()
        if nan or not np.all(np.asarray(ok)):
            _raise_on_failure(np.asarray(ok), np.asarray(v), np.asarray(v), self.model, "single-input problems")
        return v, tabs

    def solve(self, grid, sel=None, block_size=256, progress=False, shard=True):
        """Every kernel (columns in ``GETS`` order; the NTK's columns nan unless ``want_ntk``)
        of the pairs ``sel`` (None: all)."""
        i1, i2 = (self.i1, self.i2) if sel is None else (self.i1[sel], self.i2[sel])
        v, tabs = self.singles(grid, None if sel is None else np.concatenate([i1, i2]))
        s00 = _s00(self.model, self.X[i1], self.X[i2])
        nngp, ntk, blocks, ok = _solve_pairs(
            self.duals,
            grid,
            self.model,
            s00,
            self.slot[i1],
            self.slot[i2],
            v,
            tabs,
            block_size,
            progress,
            shard,
            self.want_ntk,
        )
        _raise_on_failure(ok, nngp, ntk if self.want_ntk else nngp, self.model, "kernel_fn")
        return np.concatenate([nngp[:, None], ntk[:, None], blocks], axis=1)  # (P, 5) in GETS order

    def pair_cosines(self):
        """cos(x, x') of every pair, from one matrix product (never a (pairs, d) gather)."""
        if self._cos is None:
            x1, x2 = (np.asarray(x, np.float64) for x in (self.x1, self.x2))
            n1, n2 = (np.maximum(np.linalg.norm(x, axis=1), 1e-300) for x in (x1, x2))
            self._cos = np.clip(((x1 @ x2.T) / n1[:, None] / n2[None, :])[self.i1, self.i2_local], -1.0, 1.0)
        return self._cos

    def assemble(self, vals):
        out = np.zeros((self.N1, self.N2), vals.dtype)
        out[self.i1, self.i2_local] = vals
        if self.symmetric:
            out[self.i2_local, self.i1] = vals
        return out


# Mehler terms tried when the duals cannot be certified with fewer. The coefficient tables cost
# K (2 K + 64) per input and node; past 640 terms the quadrature duals are the cheaper way.
_TERMS_LADDER = (192, 384, 640)


def _trim_terms(duals: Duals, problem: _Problem, grid: Grid, inputs, threshold: float = 1e-10):
    """Drop the Mehler terms whose coefficients stay below ``threshold`` of the largest (over the
    probed ``inputs`` and every node): the dropped tail contributes < ~terms * threshold^2
    relative to the kernel, even at rho = 1 (1e-10: < ~1e-17). The caller certifies the result."""
    if duals.closed:
        return duals
    _, tabs = problem.singles(grid, inputs)
    rows = problem.rows(inputs)
    mags = np.max([np.max(np.abs(np.asarray(t[rows])).reshape(-1, t.shape[-1]), axis=0) for t in tabs], axis=0)
    big = np.nonzero(mags > threshold * mags.max())[0]
    keep = int(min(duals.terms, 8 * math.ceil((big.max() + 2) / 8)))
    return Duals(duals.act, keep)


def _mehler_certificate(duals: Duals, problem: _Problem, grid: Grid, inputs) -> float:
    """Bound on the relative error of the Mehler duals at every grid point of ``inputs``.

    Parseval: ``sum_k c_k(a)^2 = E f(sqrt(a) Z)^2``, so the truncated tail satisfies
    ``sum_{k>=K} c_k^2 = E f^2 - sum_{k<K} c_k^2``, and by Cauchy-Schwarz the Mehler error at
    any correlation is at most ``sqrt(tail_f(a) tail_f(b))``. ``E f^2`` comes from the robust
    quadrature (:func:`ntk_ode.gaussian.expect_1d_quad`), so an inaccurate coefficient table
    shows up here too. Returned relative to ``sqrt(E f(u)^2 E f(v)^2)``, max over phi and phi'.
    """
    if duals.closed:
        return 0.0
    v, _ = problem.singles(grid, inputs)
    # in float64 whatever the working precision: this measures truncation, not rounding
    with jax.enable_x64(True):
        v = jnp.asarray(np.asarray(v, np.float64)[problem.rows(inputs)].reshape(-1), jnp.float64)
        worst = 0.0
        eps = float(np.finfo(np.float64).eps)
        for f in (duals.act.fn, duals.act.dfn):
            tab = np.asarray(gaussian.hermite_coefficients(f, v, duals.terms))
            m2, m2err = (np.asarray(t) for t in gaussian.expect_1d_quad(gaussian.squared(f), v, duals.act.breakpoints))
            partial = np.sum(tab**2, axis=-1)
            rel = (np.abs(m2 - partial) + m2err) / np.maximum(m2, 1e-300) + 4 * tab.shape[-1] * eps
            worst = max(worst, float(np.max(np.where(m2 > 0, rel, 0.0))))
    return worst


def _choose_terms(duals0: Duals, problem: _Problem, grid: Grid, inputs, target: float):
    """Fewest Mehler terms (trimmed) whose certified dual error is below ``target``; the most
    terms tried and their certificate otherwise. Returns (duals, relative dual error bound)."""
    if duals0.closed:
        return duals0, 0.0
    ladder = [duals0.terms] + [k for k in _TERMS_LADDER if k > duals0.terms]
    for terms in ladder:
        duals = Duals(duals0.act, terms)
        problem.duals = duals
        delta = _mehler_certificate(duals, problem, grid, inputs)
        if delta <= target:
            # trim as far as the target allows (tail ~ terms * threshold^2), else to 1e-10
            for threshold in (max(1e-10, 0.5 * math.sqrt(target / terms)), 1e-10):
                trimmed = _trim_terms(duals, problem, grid, inputs, threshold)
                if trimmed.terms < duals.terms:
                    problem.duals = trimmed
                    delta_t = _mehler_certificate(trimmed, problem, grid, inputs)
                    if delta_t <= target:
                        return trimmed, delta_t
                    problem.duals = duals
            return duals, delta
    # the series cannot be certified (large variance, kinks): robust quadrature at every point
    quad = Duals(duals0.act, duals0.terms, quad=True)
    problem.duals = quad
    delta_q = _quad_certificate(quad, problem, grid, inputs)
    if delta_q < delta:
        return quad, delta_q
    problem.duals = duals
    return duals, delta


def _first_grid(model, depth, nodes) -> Grid:
    if depth is not None:
        return resnet_grid(depth, model.T)
    return chebyshev_grid(int(nodes) if nodes is not None else _NODE_LADDER[0], model.T)


def _certify(duals: Duals, problem: _Problem, grid: Grid, inputs) -> float:
    """Relative error bound of the duals on ``grid`` (0 for closed forms)."""
    if duals.quad:
        return _quad_certificate(duals, problem, grid, inputs)
    return _mehler_certificate(duals, problem, grid, inputs)


def _quad_certificate(duals: Duals, problem: _Problem, grid: Grid, inputs) -> float:
    """Relative error bound of the quadrature duals (step ``_QUAD_STEP``): their difference to
    the rule at half the step (plus rounding), at the inputs' node variances, over correlations
    from -1 to 1 (at the near-kink correlations 0.999 and 1 the rules are hardest)."""
    v, _ = problem.singles(grid, inputs)
    v = np.asarray(v)[problem.rows(inputs)].reshape(-1)
    v = np.unique(np.concatenate([np.sort(v)[:: max(1, v.size // 3)], [v.max()]]))
    a, b = (g.reshape(-1) for g in np.meshgrid(v, v, indexing="ij"))
    worst = 0.0
    bp = duals.act.breakpoints
    for f in (duals.act.fn, duals.act.dfn):
        m2a = np.asarray(gaussian.expect_1d_quad(gaussian.squared(f), a, bp)[0])
        m2b = np.asarray(gaussian.expect_1d_quad(gaussian.squared(f), b, bp)[0])
        for rho in (-1.0, -0.5, 0.0, 0.9, 0.999, 1.0):
            c = rho * np.sqrt(a * b)
            _, err = gaussian.expect_2d_quad(f, f, a, b, c, bp, bp, step=_QUAD_STEP / 2)
            rel = np.asarray(err) / np.maximum(np.sqrt(np.abs(m2a * m2b)), 1e-300)
            worst = max(worst, float(np.max(rel)))
    return worst


def _dual_sensitivity(problem: _Problem, grid: Grid, pick, base, eta: float = 1e-6):
    """How much each kernel moves per unit relative dual error: the probe pairs solved with
    every dual raised by ``eta`` times its Cauchy-Schwarz scale, divided by ``eta``."""
    duals = problem.duals
    problem.duals = dataclasses.replace(duals, perturb=eta)
    try:
        up = problem.solve(grid, sel=pick, shard=False)
    finally:
        problem.duals = duals
    return np.max(np.abs(up - base), axis=0) / eta


def richardson(values, Ls):
    """Richardson extrapolation of values(L) ~ K + c1/L + c2/L^2 + ... over L doubling each step.

    Args:
        values: kernels (or numbers) at the depths ``Ls``.
        Ls: depths doubling at each step.

    Returns:
        The extrapolated value (eliminating the 1/L .. 1/L^(m-1) terms of m values).

    Raises:
        ValueError: the depths do not double.
    """
    Ls = np.asarray(Ls, float)
    if np.any(np.abs(Ls[1:] / Ls[:-1] - 2.0) > 1e-12):
        raise ValueError("Ls must double at each step, e.g. 8, 16, 32, ...")
    table = [np.asarray(v, float) for v in values]
    for j in range(1, len(table)):
        f = 2.0**j
        table = [(f * table[i + 1] - table[i]) / (f - 1.0) for i in range(len(table) - 1)]
    return table[0]


def kernel_fn(
    model,
    depth: int | None = None,
    *,
    rtol: float | None = None,
    nodes: int | None = None,
    block_size: int = 256,
    terms: int = gaussian.DEFAULT_TERMS,
    equal_norm: str | bool = "auto",
    table: str | bool = "auto",
    shard: bool = True,
    progress: bool = False,
):
    """The infinite-width kernels of ``model`` (``depth=None``: Neural ODE; ``depth=L``: ResNet).

    Returns ``kfn(x1, x2=None, get=("nngp", "ntk"), with_error=False)`` in the neural-tangents
    convention: ``get`` a string returns that (N1, N2) array, a tuple returns a namedtuple of
    exactly those fields in that order (:func:`kernel_type`), which unpacks. Besides "nngp" and
    "ntk", the NTK's blocks "ntk_U", "ntk_W", "ntk_v" can be asked for. ``with_error=True`` also
    returns the estimated maximum absolute errors in the same form: time grid (0 for the exact
    ``depth=L`` recursions), certified dual errors, table interpolation, rounding
    (docs/theory.md, "Error estimates of kernel_fn"); with ``nodes`` fixed the time-grid part is
    unknown and the estimate is nan. When the estimate exceeds ``rtol`` a RuntimeWarning says so.
    Evaluates eagerly (adaptive choices on the host): not for use under ``jax.jit``.

    Args:
        rtol: target relative accuracy for ``depth=None`` (default 1e-8 in float64, 1e-5 in
            float32); drives the adaptive number of Chebyshev nodes and the equal-norm table.
        nodes: fix the number of Chebyshev intervals M instead (no adaptivity).
        block_size: input pairs solved at once (memory ~ block_size * M^2).
        terms: Mehler terms for activations without closed-form duals.
        equal_norm: "auto" uses the zonal fast path when every input has the same norm; False
            never; True requires it.
        table: for inputs of several norms, "auto" uses the certified (norm, norm, angle)
            interpolant (:func:`norm_angle_kernel`, docs/theory.md section 14) above
            ``TABLE_MIN_PAIRS`` pairs, falling back to direct solves if it cannot meet rtol;
            True always uses it (and raises if it cannot); False never.
        shard: spread pair blocks over all local devices.
        progress: show a progress bar over pair blocks (also those of the table's solves).

    Returns:
        ``kfn(x1, x2=None, get=("nngp", "ntk"), with_error=False)``.

    Raises:
        ValueError: bad options (here) or inputs (from ``kfn``).
        RuntimeError: ``equal_norm=True`` or ``table=True`` and the table cannot meet rtol.

    Warns:
        RuntimeWarning: the error estimate exceeds ``rtol``.
    """
    depth = check_depth(depth)
    if equal_norm not in ("auto", True, False):
        raise ValueError(f"equal_norm must be 'auto', True or False, got {equal_norm!r}")
    if table not in ("auto", True, False):
        raise ValueError(f"table must be 'auto', True or False, got {table!r}")
    if nodes is not None and (int(nodes) != nodes or nodes < 2):
        raise ValueError(f"nodes must be an integer >= 2, got {nodes!r}")
    if int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if rtol is not None and (isinstance(rtol, bool) or not (0 < float(rtol) < 1)):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if isinstance(terms, bool) or int(terms) != terms or terms < 8:
        raise ValueError(f"terms must be an integer >= 8, got {terms!r}")
    duals0 = Duals(model.activation, int(terms))

    def kfn(x1, x2=None, get=("nngp", "ntk"), with_error=False):
        names, single = _check_get(get)
        x1 = _check_x(x1, "x1")
        symmetric = x2 is None
        x2c = x1 if symmetric else _check_x(x2, "x2", x1.shape[1])
        eps = float(jnp.finfo(x1.dtype).eps)
        tol = rtol if rtol is not None else (1e-8 if eps < 1e-10 else 1e-5)
        _check_duals(model.activation)
        problem = _Problem(model, duals0, x1, x2c, symmetric, want_ntk=names != ("nngp",))
        norms = np.linalg.norm(np.asarray(problem.X), axis=1)
        same = bool(np.ptp(norms) <= 1e-12 * max(norms.max(), 1e-300))
        if equal_norm is True and not same:
            raise ValueError("equal_norm=True but the inputs do not all have the same norm")
        pairs = problem.i1.size
        if not same and (table is True or (table == "auto" and pairs > TABLE_MIN_PAIRS)) and norms.min() > 0:
            try:
                return _table_kernels(model, depth, tol, nodes, terms, x1, x2c, names, single, with_error, progress)
            except RuntimeError:
                if table is True:
                    raise
        # kinked activations, the ODE: identical inputs give dPhi a kink along t = s, which
        # collocation resolves only algebraically; those pairs are extrapolated from the exact
        # depth-L recursions instead (Richardson), and the zonal table (whose angle-0 node is
        # such a pair) is not used unless asked for
        kinked = depth is None and nodes is None and _is_kinked(model.activation)
        use_zonal = (equal_norm is True) or (equal_norm == "auto" and same and problem.i1.size > 64 and not kinked)
        probe = _probe_pairs(problem)  # the inputs whose variances the duals are certified on
        inputs = np.unique(np.concatenate([problem.i1[probe], problem.i2[probe], problem.extreme_inputs()]))
        # the duals first (on the first grid: it sees the whole range of variances), then the time
        # grid with those duals, then the duals' certificate again on the chosen grid
        grid0 = _first_grid(model, depth, nodes)
        problem.duals, delta = _choose_terms(duals0, problem, grid0, inputs, max(1e-3 * tol, 1e3 * eps))
        # kinked activations, the ODE: identical inputs give dPhi a kink along t = s, which
        # collocation resolves only algebraically; those pairs are extrapolated from the exact
        # depth-L recursions instead (Richardson) and left out of the collocation probe. Not with
        # quadrature duals (deep recursions unaffordable): the probe then sees them and the
        # estimate says how far collocation got. The zonal table (whose angle-0 node is such a
        # pair) is not used for kinked activations unless asked for.
        same_input = _identical_pairs(problem) if kinked and not problem.duals.quad else np.zeros(0, int)
        pick = _probe_pairs(problem, exclude=same_input)
        grid, err = _choose_grid(model, problem, depth, nodes, tol, pick)
        if grid is not grid0:
            delta = max(delta, _certify(problem.duals, problem, grid, inputs))
        dual_err = None  # per unit kernel scale, or absolute when measured
        if delta > 0:
            # a measured response to dual errors; skipped (two compilations less) when even a
            # generous growth factor exp(2 sigma_w T) leaves the dual part 1e3 below rtol
            crude = 4.0 * delta * math.exp(2.0 * model.sigma_w * model.T)
            if 1e3 * crude > tol:
                ref = problem.solve(grid, sel=pick, shard=False)
                dual_err = 4.0 * delta * _dual_sensitivity(problem, grid, pick, ref)
        vals = None
        if use_zonal:
            try:
                vals, zerr = _zonal(
                    model, problem, grid, tol, block_size, shard, max_nodes=512 if equal_norm is True else 256
                )
                err = err + zerr
            except _ZonalFailed as exc:
                if equal_norm is True:
                    raise RuntimeError(f"{exc}; use equal_norm=False") from exc
        if vals is None:
            vals = problem.solve(grid, block_size=block_size, progress=progress, shard=shard)
        if same_input.size:
            rvals, rerr = _richardson_pairs(problem, same_input, tol, progress)
            vals[same_input] = rvals
            err = np.maximum(err, rerr) if not use_zonal else err + rerr
        scale = np.max(np.abs(vals), axis=0)
        err = err + 64 * eps * scale  # rounding and the Picard stopping rule
        if delta > 0:
            err = err + (crude * scale if dual_err is None else dual_err)
        col = {g: GETS.index(g) for g in names}
        k = {g: jnp.asarray(problem.assemble(vals[:, i])) for g, i in col.items()}  # only those asked for
        e = {g: float(err[i]) for g, i in col.items()}
        main = problem.main
        big = np.max(np.abs(vals[:, main]), axis=0)
        if np.any(err[main] > tol * big):
            where = "duals" if delta > 1e-3 * tol else "time grid"
            warnings.warn(
                f"kernel_fn: rtol={tol:g} not met: estimated max abs error "
                f"{', '.join(f'{GETS[i]} {err[i]:.2e}' for i in main)} "
                f"(relative {np.max(err[main] / np.maximum(big, 1e-300)):.1e}; limited by the {where}: "
                f"relative dual error bound {delta:.1e}, activation {model.activation.name!r})",
                RuntimeWarning,
                stacklevel=2,
            )
        select = lambda kk: kk[names[0]] if single else kernel_type(names)(*(kk[g] for g in names))
        return (select(k), select(e)) if with_error else select(k)

    return kfn


# Pairs of inputs of several norms above which kernel_fn(table="auto") interpolates in
# (norm, norm, angle) instead of solving every pair (the table costs ~10^4 solves).
TABLE_MIN_PAIRS = 200_000


def norm_angle_kernel(
    model,
    d: int,
    rmin: float,
    rmax: float,
    *,
    depth: int | None = None,
    get=("nngp", "ntk"),
    rtol: float = 1e-10,
    nodes: int | None = None,
    terms: int = gaussian.DEFAULT_TERMS,
    progress: bool = False,
) -> NormAngleKernel | list[NormAngleKernel]:
    """The kernels of inputs with norms in [rmin, rmax] as certified functions of
    (|x|, |x'|, cos) (docs/theory.md section 14): :func:`ntk_ode.tables.build_norm_angle` over
    direct solves of :func:`kernel_fn` (no table inside), one :class:`NormAngleKernel` per name.

    Args:
        model: the Neural ODE.
        d: input dimension.
        rmin: smallest input norm (> 0).
        rmax: largest input norm.
        depth: None for the ODE, L for the ResNet.
        get: a kernel name or a tuple of names (from ``GETS``).
        rtol: target accuracy relative to each kernel's largest value.
        nodes: fixed Chebyshev intervals of the direct solves (None: adaptive).
        terms: Mehler terms of the direct solves.
        progress: progress bars over the pair blocks of each table's solves.

    Returns:
        A :class:`NormAngleKernel` (``get`` a string) or a list of them.

    Raises:
        ValueError: bad arguments.
        RuntimeError: the table cannot meet rtol.
    """
    names, single = _check_get(get)
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    # the node solves aim at 1e-8 in float64; in float32 (x64 off) at rtol itself, as kernel_fn does
    inner = min(rtol, 1e-8) if jnp.result_type(float) == jnp.float64 else rtol
    direct = kernel_fn(
        model, depth, rtol=inner, nodes=nodes, terms=terms, equal_norm=False, table=False, progress=progress
    )

    def evaluate(x1, x2):
        k, e = direct(x1, x2, get=names, with_error=True)
        return np.stack([np.asarray(getattr(k, n)) for n in names]), np.array([getattr(e, n) for n in names])

    out = build_norm_angle(evaluate, int(d), float(rmin), float(rmax), rtol=rtol)
    return out[0] if single else out


_gram_jit = jax.jit(lambda k, a, b: k.gram(a, b))


def _table_kernels(model, depth, tol, nodes, terms, x1, x2, names, single, with_error, progress):
    """kernel_fn's answer from the (norm, norm, angle) table, in row blocks of bounded memory."""
    norms = np.concatenate([np.linalg.norm(np.asarray(x1), axis=1), np.linalg.norm(np.asarray(x2), axis=1)])
    rmin, rmax = float(norms.min()), float(norms.max())
    kernels = norm_angle_kernel(
        model, x1.shape[1], rmin, rmax, depth=depth, get=names, rtol=tol, nodes=nodes, terms=terms, progress=progress
    )
    assert isinstance(kernels, list)
    rows = max(1, 2**22 // max(1, x2.shape[0]))
    vals, errs = [], []
    for k in kernels:
        parts = [_gram_jit(k, x1[i : i + rows], x2) for i in range(0, x1.shape[0], rows)]
        vals.append(jnp.concatenate(parts))
        errs.append(float(k.error) + 64 * float(jnp.finfo(x1.dtype).eps) * float(jnp.max(jnp.abs(vals[-1]))))
    if max(e / max(float(jnp.max(jnp.abs(v))), 1e-300) for e, v in zip(errs, vals)) > tol:
        warnings.warn(
            f"kernel_fn: rtol={tol:g} not met by the (norm, norm, angle) table: errors {errs}",
            RuntimeWarning,
            stacklevel=3,
        )
    k = kernel_type(names)(*vals)
    e = kernel_type(names)(*errs)
    select = lambda kk: kk[0] if single else kk
    return (select(k), select(e)) if with_error else select(k)


def _check_duals(act: Activation):
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


def _is_kinked(act: Activation) -> bool:
    return bool(act.kinks) or not act.dphi_lipschitz


_NEAR_DUPLICATE = 1e-3  # 1 - cos below which a pair's dPhi has a (near-)kink too sharp to collocate


def _identical_pairs(problem: _Problem):
    """Indices of the pairs whose inputs are equal or nearly so (1 - cos <= 1e-3, and the same
    norm to 1e-3): there dPhi(t, s) has a kink (or a near-kink of width ~sqrt(1 - cos)) along
    t = s that collocation resolves only algebraically."""
    X = np.asarray(problem.X)
    _, ids = np.unique(X, axis=0, return_inverse=True)  # equal rows, without a (pairs, d) gather
    ids = ids.reshape(-1)
    a, b = problem.i1, problem.i2
    nrm = np.linalg.norm(np.asarray(X, float), axis=1)
    near = (1.0 - problem.pair_cosines() <= _NEAR_DUPLICATE) & (
        np.abs(nrm[a] - nrm[b]) <= _NEAR_DUPLICATE * np.maximum(nrm[a], nrm[b])
    )
    return np.nonzero((ids[a] == ids[b]) | near)[0]


_RICHARDSON_LS = (16, 32, 64, 128, 256, 512, 1024)


def _richardson_pairs(problem: _Problem, sel, tol, progress=False):
    """Kernels of the pairs ``sel`` by Richardson extrapolation of the exact ResNet kernels
    K^L_inf (L = 16, 32, ...; error c1/L + c2/L^2 + ...), adding levels until 4x the change of
    the extrapolant is below rtol. Returns (values (P, 5), estimated max abs error (5,))."""
    vals, prev, est = [], None, None
    Ls = []
    for L in _RICHARDSON_LS:
        grid = resnet_grid(L, problem.model.T)
        vals.append(problem.solve(grid, sel=sel, block_size=max(1, 2**20 // (L + 1) ** 2), progress=progress))
        Ls.append(L)
        problem.drop_singles(grid)
        if len(vals) >= 3:
            cur = richardson(vals, Ls)
            if prev is not None:
                est = 4.0 * np.max(np.abs(cur - prev), axis=0)
                if np.all(est[problem.main] <= tol * np.max(np.abs(cur[:, problem.main]), axis=0)):
                    return cur, est
            prev = cur
    return prev, est


def _probe_pairs(problem: _Problem, n: int = 8, exclude=()):
    """Pairs on which accuracy is measured: the first diagonal entries, random pairs, and the
    most correlated and most anti-correlated distinct pairs (near-duplicate and antipodal inputs
    are where the duals and the time grid are hardest)."""
    rng = np.random.default_rng(0)
    keep = np.ones(problem.i1.size, bool)
    keep[np.asarray(exclude, int)] = False
    if not keep.any():  # only identical pairs: probe them anyway
        keep[:] = True
    diag = np.nonzero((problem.i1 == problem.i2) & keep)[0]
    allowed = np.nonzero(keep)[0]
    extra: list = []
    off = np.nonzero((problem.i1 != problem.i2) & keep)[0]
    if off.size:
        cos = problem.pair_cosines()[off]
        extra = [off[np.argpartition(cos, 1)[:2]], off[np.argpartition(-cos, 1)[:2]]] if off.size > 2 else [off]
    rand = rng.choice(allowed, size=min(n, allowed.size), replace=False)
    return np.unique(np.concatenate([diag[:n], rand, *extra]).astype(int))


_NODE_LADDER = (12, 16, 24, 32, 48, 64, 96, 128)
_SAFETY = 4.0  # error of rung M <= |K(M) - K(M')| / (1 - (M / M')) for convergence of order >= 1


def _choose_grid(model, problem: _Problem, depth, nodes, tol, pick):
    """The grid to use and an error estimate of its time discretisation (max abs, per kernel)."""
    if depth is not None:
        return resnet_grid(depth, model.T), np.zeros(len(GETS))
    if nodes is not None:
        return chebyshev_grid(int(nodes), model.T), np.full(len(GETS), np.nan)
    prev = None
    # quadrature duals cost ~1e5 evaluations per grid point: stop the ladder at 32 nodes
    ladder = [M for M in _NODE_LADDER if M <= 32] if problem.duals.quad else _NODE_LADDER
    for M in ladder:
        cur = problem.solve(chebyshev_grid(M, model.T), sel=pick, shard=False)
        if prev is not None:
            diff = np.max(np.abs(cur - prev[1]), axis=0)
            if np.all(_SAFETY * diff[problem.main] <= tol * np.max(np.abs(cur[:, problem.main]), axis=0)):
                return chebyshev_grid(prev[0], model.T), _SAFETY * diff
        prev = (M, cur)
    # not converged: keep the finest grid; its error from the last two differences, assuming
    # at least first-order convergence in M (the ratio of consecutive rungs is 4/3)
    ratio = ladder[-1] / ladder[-2]
    assert prev is not None
    return chebyshev_grid(prev[0], model.T), diff / (ratio - 1.0)


class _ZonalFailed(RuntimeError):
    pass


def _zonal(model, problem: _Problem, grid: Grid, tol, block_size, shard, max_nodes=512):
    """Equal norms: tabulate every kernel as a function of the angle theta = arccos(cos(x, x')) on
    Chebyshev nodes in theta, then interpolate. In theta rather than in the cosine, because
    kernels of non-smooth activations behave like (1 - cos)^(k/2) at the ends (relu's arc-cosine
    kernels), which is smooth in theta. Only the first input's single problem is solved."""
    u_of = lambda c: 1.0 - 2.0 * np.arccos(c) / np.pi  # theta in [0, pi] -> u in [-1, 1]
    v, tabs = problem.singles(grid, [0])
    scale2 = problem.input_s00[0]
    prev, Q = None, 16
    main = problem.main
    while Q <= max_nodes:
        u = lobatto(Q)
        nodes = np.cos(np.pi * (1.0 - u) / 2.0)
        row = np.full(Q + 1, problem.slot[0])
        s00 = jnp.asarray(scale2 * nodes, v.dtype)
        nngp, ntk, blocks, ok = _solve_pairs(
            problem.duals, grid, model, s00, row, row, v, tabs, block_size, False, shard, problem.want_ntk
        )
        _raise_on_failure(ok, nngp, ntk if problem.want_ntk else nngp, model, "kernel_fn (equal-norm table)")
        tab = np.concatenate([nngp[None], ntk[None], blocks.T], axis=0)  # (5, Q + 1)
        if prev is not None:
            # the previous table's interpolant at the new nodes vs the new values
            err = np.max(np.abs(_zonal_values(prev, u).T - tab), axis=1)
            if np.all(err[main] <= tol * np.max(np.abs(tab[main]), axis=1)):
                return _zonal_values(tab, u_of(problem.pair_cosines())), err
        prev, Q = tab, 2 * Q
    raise _ZonalFailed(f"equal-norm kernel table did not reach rtol={tol:g} with {max_nodes + 1} nodes")


_clenshaw_jit = jax.jit(clenshaw)


def _zonal_values(tab, u, chunk: int = 2**20):
    """The interpolant of the Lobatto node values ``tab`` (K, Q + 1) at ``u`` (P,): its Chebyshev
    coefficients summed by Clenshaw's recurrence in fixed, padded chunks of pairs. (P, K)."""
    coef = jnp.asarray(chebyshev_coefficients(tab, (1,)).T[:, None, :])  # (Q + 1, 1, K)
    size = min(chunk, u.size)
    out = []
    for i in range(0, u.size, size):
        part = u[i : i + size]
        padded = np.concatenate([part, np.zeros(size - part.size)])[:, None]
        out.append(np.asarray(_clenshaw_jit(coef, jnp.asarray(padded, coef.dtype)))[: part.size])
    return np.concatenate(out)
