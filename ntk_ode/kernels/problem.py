"""Pair bookkeeping of one kernel call: inputs, single-input solutions, pairs, assembly.

Pairs (x, x') interact only through the per-input variances (docs/theory.md section 3), so a
:class:`Problem` solves the single-input problems once per distinct self-covariance and grid,
then the pairs in blocks (:func:`ntk_ode.kernels.core.solve_pairs`), and assembles the (N1, N2)
arrays. It also picks the pairs on which accuracy is probed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .core import hyperparameters, raise_on_failure, solve_pairs, solve_singles, substitution
from .duals import Duals
from .grids import Grid

if TYPE_CHECKING:
    from ..model import NeuralODE

__all__ = [
    "NEAR_DUPLICATE",
    "SINGLE_COVARIANCE_BYTES",
    "Problem",
    "Singles",
    "equal_inputs",
    "identical_pairs",
    "input_covariance",
    "probe_pairs",
]


SINGLE_COVARIANCE_BYTES = 2**26  # the single-input Sigma (rows, M, M) is kept up to this size


def input_covariance(model: NeuralODE, x1: jax.Array, x2: jax.Array) -> jax.Array:
    """``Sigma^{0,0}(x, x') = input_scale^2 x . x'`` row by row.

    Args:
        model: supplies the input scaling.
        x1: inputs (..., d).
        x2: inputs (..., d).

    Returns:
        The covariances (...,).
    """
    return model.input_scale(x1.shape[-1]) ** 2 * jnp.sum(x1 * x2, axis=-1)


class Singles(NamedTuple):
    """The single-input solutions on one grid with one duals, one row per distinct
    self-covariance (:meth:`Problem.solved`); rows not solved yet hold zeros.

    Attributes:
        v: node variances (rows, M).
        tables: coefficient tables (rows, M, terms) each, or ``()``.
        done: (rows,) numpy mask of the rows solved.
        S: the covariances Sigma (rows, M, M), or None when not kept (grids solved by
            substitution, or more than ``SINGLE_COVARIANCE_BYTES`` for all rows).
    """

    v: jax.Array
    tables: tuple
    done: np.ndarray
    S: jax.Array | None


class Problem:
    """All inputs of one kfn call: per-input variances on a grid and the pairs to solve.

    Grids here are on [0, 1] (``chebyshev_grid(M, 1.0)``, ``resnet_grid(L, 1.0)``): the solvers
    scale them by the model's T, which they take as data with sigma_w and sigma_v.

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
        self.input_s00 = np.asarray(input_covariance(model, self.X, self.X))
        values, self.slot = np.unique(self.input_s00, return_inverse=True)
        self.s00_values = jnp.asarray(values, self.X.dtype)
        self.hyper = hyperparameters(model, self.X.dtype)  # traced by the solvers, never constants
        self._singles: dict = {}
        self._cos = None

    def rows(self, inputs: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows of :meth:`singles` holding ``inputs``.

        Args:
            inputs: indices into X.

        Returns:
            Sorted distinct rows.
        """
        return np.unique(self.slot[np.asarray(inputs, int)])

    def extreme_inputs(self) -> list[int]:
        """The inputs of largest and smallest self-covariance.

        Returns:
            Two indices into X.
        """
        return [int(np.argmax(self.input_s00)), int(np.argmin(self.input_s00))]

    def solved(
        self, grid: Grid, inputs: Sequence[int] | np.ndarray | None = None, duals: Duals | None = None
    ) -> Singles:
        """The single-input solutions on ``grid`` with ``duals`` (None: ``self.duals``), with the
        rows of ``inputs`` (None: all) solved, once per grid and duals.

        With quadrature duals the solves start from the solution with other duals on the same
        grid when one is kept (the stand-in series of the grid choice): a few Newton steps
        instead of a solve from Sigma00.

        Args:
            grid: the time grid.
            inputs: indices into X, or None for all.
            duals: the duals, or None for ``self.duals``.

        Returns:
            The :class:`Singles` (one row per distinct self-covariance, ``rows(inputs)``).
        """
        duals = self.duals if duals is None else duals
        key = (grid, duals)
        rows = np.arange(self.s00_values.shape[0]) if inputs is None else self.rows(inputs)
        entry = self._singles.get(key)
        todo = rows if entry is None else rows[~entry.done[rows]]
        if todo.size:
            v, tabs, S = self._solve_singles(grid, duals, todo, self._warm_start(grid, duals, todo))
            if entry is None:
                U = self.s00_values.shape[0]
                zeros = lambda a: jnp.zeros((U,) + a.shape[1:], a.dtype)  # noqa: E731
                keep = S is not None and U * S[0].size * S.dtype.itemsize <= SINGLE_COVARIANCE_BYTES
                entry = Singles(zeros(v), tuple(zeros(t) for t in tabs), np.zeros(U, bool), zeros(S) if keep else None)
            entry = Singles(
                entry.v.at[todo].set(v),
                tuple(t.at[todo].set(n) for t, n in zip(entry.tables, tabs)),
                entry.done,
                None if entry.S is None else entry.S.at[todo].set(S),
            )
            entry.done[todo] = True
            self._singles[key] = entry
        assert entry is not None, "solved: no inputs asked for"
        return entry

    def singles(
        self, grid: Grid, inputs: Sequence[int] | np.ndarray | None = None, duals: Duals | None = None
    ) -> tuple[jax.Array, Any]:
        """Variances and coefficient tables of :meth:`solved`.

        Args:
            grid: the time grid.
            inputs: indices into X, or None for all.
            duals: the duals, or None for ``self.duals``.

        Returns:
            ``(v (rows, M), tables)``.
        """
        entry = self.solved(grid, inputs, duals)
        return entry.v, entry.tables

    def _warm_start(self, grid, duals, rows):
        """First iterates for quadrature-dual solves of ``rows`` on ``grid``: a kept solution on
        the same grid that has them all (with quadrature duals first, then the most Mehler
        terms), else None."""
        if not duals.quad or substitution(duals, grid):  # (cheap duals: a second
            return None  # compilation would cost more than it saves; substitution: no iteration)
        kept = [
            ((d.quad, d.terms), e.S)
            for (g, d), e in self._singles.items()
            if g is grid and e.S is not None and e.done[rows].all()
        ]
        return max(kept, key=lambda k: k[0])[1][rows] if kept else None

    def probed_variances(
        self, grid: Grid, inputs: Sequence[int] | np.ndarray, duals: Duals | None = None
    ) -> np.ndarray:
        """The node variances of ``inputs`` on ``grid``.

        Args:
            grid: the time grid.
            inputs: indices into X.
            duals: the duals, or None for ``self.duals``.

        Returns:
            (distinct inputs, M) numpy array.
        """
        v, _ = self.singles(grid, inputs, duals)
        return np.asarray(v)[self.rows(inputs)]

    def probed_tables(self, grid: Grid, inputs: Sequence[int] | np.ndarray, duals: Duals | None = None) -> tuple:
        """The coefficient tables of ``inputs`` on ``grid``.

        Args:
            grid: the time grid.
            inputs: indices into X.
            duals: the duals, or None for ``self.duals``.

        Returns:
            Numpy tables (distinct inputs, M, terms), or ``()`` for closed forms.
        """
        _, tabs = self.singles(grid, inputs, duals)
        rows = self.rows(inputs)
        return tuple(np.asarray(t[rows]) for t in tabs)

    def drop_singles(self, grid: Grid) -> None:
        """Forget the single-input solutions on ``grid`` (memory of large ResNet grids).

        Args:
            grid: the time grid.
        """
        for key in [k for k in self._singles if k[0] is grid]:
            del self._singles[key]

    def _solve_singles(self, grid, duals, rows, init=None):
        s00 = self.s00_values
        if duals.per_input_batch:
            parts = [
                solve_singles(duals, grid, self.hyper, s00[r : r + 1], None if init is None else init[k : k + 1])
                for k, r in enumerate(rows)
            ]
            v, ok = jnp.concatenate([p[0] for p in parts]), jnp.concatenate([p[2] for p in parts])
            own = [p[3] for p in parts if p[3] is not None]
            tabs, S = (), jnp.concatenate(own) if own else None
        else:
            # padded to a few sizes, so that probes and full solves reuse their compilations
            n = rows.size
            size = 2 ** math.ceil(math.log2(n)) if n <= 256 else 256 * math.ceil(n / 256)
            pad = np.concatenate([np.arange(n), np.full(size - n, n - 1)])
            v, tabs, ok, S = solve_singles(duals, grid, self.hyper, s00[rows[pad]], None if init is None else init[pad])
            v, tabs, ok = v[:n], tuple(t[:n] for t in tabs), ok[:n]
            S = None if S is None else S[:n]
        nan = ~np.isfinite(np.asarray(v)).all()
        if nan or not np.all(np.asarray(ok)):
            raise_on_failure(np.asarray(ok), np.asarray(v), np.asarray(v), self.model, "single-input problems")
        return v, tabs, S

    def solve(
        self,
        grid: Grid,
        sel: np.ndarray | None = None,
        block_size: int = 256,
        progress: bool = False,
        shard: bool = True,
    ) -> np.ndarray:
        """Every kernel of the pairs ``sel``.

        Args:
            grid: the time grid.
            sel: pair indices, or None for all.
            block_size: pairs per block.
            progress: a progress bar over the blocks.
            shard: spread blocks over the local devices.

        Returns:
            (P, 5) values, columns in ``GETS`` order (the NTK's nan unless ``want_ntk``).

        Raises:
            FloatingPointError: a kernel is not finite.
            RuntimeError: a Picard iteration did not converge.
        """
        same = self._reused_pairs(grid, sel)
        if same is None:
            i1, i2 = (self.i1, self.i2) if sel is None else (self.i1[sel], self.i2[sel])
            v, tabs = self.singles(grid, None if sel is None else np.concatenate([i1, i2]))
            s00 = input_covariance(self.model, self.X[i1], self.X[i2])
            return self._pairs(grid, s00, self.slot[i1], self.slot[i2], v, tabs, block_size, progress, shard)
        sel = np.arange(self.i1.size) if sel is None else np.asarray(sel, int)
        out = np.empty((sel.size, 5), np.asarray(self.X).dtype)
        if not same.all():
            out[~same] = self.solve(grid, sel[~same], block_size, progress, shard)
        # an input with itself: its single-input Sigma, once per distinct self-covariance
        rows, back = np.unique(self.slot[self.i1[sel[same]]], return_inverse=True)
        e = self.solved(grid, self.i1[sel[same]])
        out[same] = self._pairs(
            grid, self.s00_values[rows], rows, rows, e.v, e.tables, block_size, progress, shard, e.S
        )[back]
        return out

    def _pairs(self, grid, s00, r1, r2, v, tabs, block_size, progress, shard, S=None):
        """:func:`ntk_ode.kernels.core.solve_pairs` of the rows (r1, r2), checked, as (P, 5)."""
        nngp, ntk, blocks, ok = solve_pairs(
            self.duals, grid, self.hyper, self.model.head, s00, r1, r2, v, tabs, block_size, progress, shard,
            self.want_ntk, S,
        )  # fmt: skip
        raise_on_failure(ok, nngp, ntk if self.want_ntk else nngp, self.model, "kernel_fn")
        return np.concatenate([nngp[:, None], ntk[:, None], blocks], axis=1)  # (P, 5) in GETS order

    def _reused_pairs(self, grid: Grid, sel: np.ndarray | None) -> np.ndarray | None:
        """A mask of the pairs of ``sel`` (None: all) solved from their single-input Sigma, or
        None when there are none. With quadrature duals a pair's forward solve costs ~7 Newton
        steps of ~7e4 evaluations per grid point; for an input with itself it is the single-input
        problem, solved already: those pairs reuse its Sigma, when it is kept (with cheaper duals a
        second compiled solver would cost more than it saves)."""
        if not self.duals.quad:
            return None
        sel = np.arange(self.i1.size) if sel is None else np.asarray(sel, int)
        same = equal_inputs(self, sel)
        if not same.any() or self.solved(grid, self.i1[sel[same]]).S is None:
            return None
        return same

    def pair_cosines(self) -> np.ndarray:
        """cos(x, x') of every pair, from one matrix product (never a (pairs, d) gather).

        Returns:
            (P,) cosines in [-1, 1].
        """
        if self._cos is None:
            x1, x2 = (np.asarray(x, np.float64) for x in (self.x1, self.x2))
            n1, n2 = (np.maximum(np.linalg.norm(x, axis=1), 1e-300) for x in (x1, x2))
            self._cos = np.clip(((x1 @ x2.T) / n1[:, None] / n2[None, :])[self.i1, self.i2_local], -1.0, 1.0)
        return self._cos

    def assemble(self, vals: np.ndarray) -> np.ndarray:
        """The (N1, N2) array of per-pair values.

        Args:
            vals: (P,) values of the pairs.

        Returns:
            (N1, N2) array (mirrored for one input set).
        """
        out = np.zeros((self.N1, self.N2), vals.dtype)
        out[self.i1, self.i2_local] = vals
        if self.symmetric:
            out[self.i2_local, self.i1] = vals
        return out


NEAR_DUPLICATE = 1e-3  # 1 - cos below which a pair's dPhi has a (near-)kink too sharp to collocate


def identical_pairs(problem: Problem) -> np.ndarray:
    """Indices of the pairs whose inputs are equal or nearly so (1 - cos <= 1e-3, and the same
    norm to 1e-3): there dPhi(t, s) has a kink (or a near-kink of width ~sqrt(1 - cos)) along
    t = s that collocation resolves only algebraically.

    Args:
        problem: the pairs.

    Returns:
        Pair indices.
    """
    X = np.asarray(problem.X)
    ids = _row_ids(X)
    a, b = problem.i1, problem.i2
    nrm = np.linalg.norm(np.asarray(X, float), axis=1)
    near = (1.0 - problem.pair_cosines() <= NEAR_DUPLICATE) & (
        np.abs(nrm[a] - nrm[b]) <= NEAR_DUPLICATE * np.maximum(nrm[a], nrm[b])
    )
    return np.nonzero((ids[a] == ids[b]) | near)[0]


def _row_ids(X: np.ndarray) -> np.ndarray:
    """One id per distinct row of X (equal rows, without a (pairs, d) gather)."""
    return np.unique(X, axis=0, return_inverse=True)[1].reshape(-1)


def equal_inputs(problem: Problem, sel: np.ndarray) -> np.ndarray:
    """Whether the two inputs of each pair ``sel`` are equal (not merely near-duplicates).

    Args:
        problem: the pairs.
        sel: pair indices.

    Returns:
        A boolean mask, the shape of ``sel``.
    """
    ids = _row_ids(np.asarray(problem.X))
    return ids[problem.i1[sel]] == ids[problem.i2[sel]]


def probe_pairs(problem: Problem, n: int = 8, exclude: Sequence[int] | np.ndarray = ()) -> np.ndarray:
    """Pairs on which accuracy is measured: the first diagonal entries, random pairs, and the
    most correlated and most anti-correlated distinct pairs (near-duplicate and antipodal inputs
    are where the duals and the time grid are hardest).

    Args:
        problem: the pairs.
        n: diagonal and random pairs, each.
        exclude: pairs not to probe (unless nothing else is left).

    Returns:
        Pair indices.
    """
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
