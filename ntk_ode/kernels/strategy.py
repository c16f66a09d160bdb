"""How a kernel call is evaluated: the one selection rule and the strategies it selects.

* ``"direct"``: every pair solved on the adaptively chosen grid with certified duals;
* ``"zonal"``: inputs of one norm: the pairs' kernels interpolated in the angle from one table of
  solves (:func:`ntk_ode.kernels.interpolants.zonal_interpolant`);
* ``"table"``: inputs of several norms, many pairs: the (norm, norm, angle) interpolant
  (:func:`ntk_ode.kernels.interpolants.build_norm_angle`) over direct solves.

:func:`choose` is the rule; :func:`pair_kernels` runs the direct and zonal strategies (they share
the choice of duals and grid), :func:`norm_angle_tables` and :func:`table_kernels` the table.
Each returns values with their estimated maximum absolute errors; none calls ``kernel_fn``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._checks import check_inputs
from .adapt import TERMS_LADDER, certify, choose_grid, choose_terms, dual_sensitivity, first_grid, richardson_pairs
from .core import raise_on_failure, solve_pairs
from .duals import Duals, is_kinked, mehler_screen
from .gets import GETS
from .grids import Grid
from .interpolants import NormAngleKernel, ZonalFailed, build_norm_angle, zonal_interpolant, zonal_values
from .problem import Problem, identical_pairs, probe_pairs

if TYPE_CHECKING:
    from ..activations import Activation
    from ..model import NeuralODE

__all__ = [
    "STAND_IN_BOUND",
    "TABLE_MIN_PAIRS",
    "Result",
    "choose",
    "norm_angle_tables",
    "pair_kernels",
    "same_norm",
    "stand_in",
    "table_kernels",
]

# Pairs of inputs of several norms above which kernel_fn(table="auto") interpolates in
# (norm, norm, angle) instead of solving every pair (the table costs ~10^4 solves).
TABLE_MIN_PAIRS = 200_000


def same_norm(norms: ArrayLike) -> bool:
    """Whether all inputs have one norm (to 1e-12 relative).

    Args:
        norms: input norms.

    Returns:
        True for one norm.
    """
    norms = np.asarray(norms)
    return bool(np.ptp(norms) <= 1e-12 * max(norms.max(), 1e-300))


def choose(
    norms: ArrayLike,
    pairs: int,
    *,
    depth: int | None,
    nodes: int | None,
    activation: Activation,
    equal_norm: bool | str = "auto",
    table: bool | str = "auto",
    kinked_zonal: bool = False,
) -> tuple[str, ...]:
    """The strategies to try, in order (a later one is the fallback when an automatic earlier
    one cannot meet rtol). The one rule of :func:`ntk_ode.kernel_fn` and of the tiles of
    :func:`ntk_ode.tiles.kernel_to_disk`.

    Args:
        norms: the norms of all inputs.
        pairs: the number of pairs asked for.
        depth: None or L.
        nodes: fixed Chebyshev intervals, or None.
        activation: the activation.
        equal_norm: "auto", True (require the zonal path) or False (never).
        table: "auto", True (require the table) or False (never).
        kinked_zonal: whether the caller's zonal interpolant solves its nodes directly (so
            handles the kink along t = s of near-identical inputs of kinked activations, as
            :func:`ntk_ode.harmonics.zonal_kernel` does); kernel_fn's shared-grid zonal table
            does not.

    Returns:
        E.g. ``("table", "direct")``, ``("zonal",)`` or ``("direct",)``.

    Raises:
        ValueError: ``equal_norm=True`` for inputs of several norms.
    """
    norms = np.asarray(norms)
    same = same_norm(norms)
    if equal_norm is True and not same:
        raise ValueError("equal_norm=True but the inputs do not all have the same norm")
    if not same and (table is True or (table == "auto" and pairs > TABLE_MIN_PAIRS)) and norms.min() > 0:
        return ("table",) if table is True else ("table", "direct")
    # kinked activations, the ODE: identical inputs give dPhi a kink along t = s, which
    # collocation resolves only algebraically; the zonal table (whose angle-0 node is such a
    # pair) is not used for them unless asked for
    kinked = depth is None and nodes is None and is_kinked(activation) and not kinked_zonal
    if equal_norm is True:
        return ("zonal",)
    if equal_norm == "auto" and same and norms.min() > 0 and pairs > 64 and not kinked:
        return ("zonal", "direct")
    return ("direct",)


class Result:
    """Kernel values of a strategy with their error estimates and what limited them.

    Attributes:
        values: ``{name: (N1, N2) array}``.
        errors: ``{name: estimated max abs error}``.
        unmet: None, or a message saying by how much rtol was missed.
    """

    def __init__(self, values: dict, errors: dict, unmet: str | None = None):
        self.values, self.errors, self.unmet = values, errors, unmet


def _zonal(problem: Problem, grid, tol, block_size, shard, max_nodes):
    """Equal norms: the kernels interpolated in the angle from solves of the first input with
    itself rotated (only its single problem is solved). Returns (values (P, 5), error (5,))."""
    model = problem.model
    v, tabs = problem.singles(grid, [0])
    scale2 = problem.input_s00[0]
    row = problem.slot[0]

    def evaluate(cos):
        idx = np.full(cos.size, row)
        s00 = jnp.asarray(scale2 * cos, v.dtype)
        nngp, ntk, blocks, ok = solve_pairs(
            problem.duals,
            grid,
            problem.hyper,
            model.head,
            s00,
            idx,
            idx,
            v,
            tabs,
            block_size,
            False,
            shard,
            problem.want_ntk,
        )
        raise_on_failure(ok, nngp, ntk if problem.want_ntk else nngp, model, "kernel_fn (equal-norm table)")
        return np.concatenate([nngp[None], ntk[None], blocks.T], axis=0)  # (5, Q + 1)

    tab, err = zonal_interpolant(evaluate, tol, problem.main, max_nodes)
    u = 1.0 - 2.0 * np.arccos(problem.pair_cosines()) / np.pi
    return zonal_values(tab, u), err


def _stage_logger(progress: bool):
    """A logger of the engine's stages (INFO on the "ntk_ode" logger), or a no-op."""
    if not progress:
        return lambda msg: None
    import logging
    import time

    log, t0 = logging.getLogger("ntk_ode"), time.perf_counter()

    def say(msg: str) -> None:
        line = f"kernel_fn [{time.perf_counter() - t0:.1f} s]: {msg}"
        if log.handlers:
            log.info(line)
        else:  # no logging set up (a script): the same stream as the progress bars
            import sys

            print(line, file=sys.stderr, flush=True)

    return say


def _note_slow_duals(model, problem, duals0, grid, inputs) -> None:
    """One line (a warning on the "ntk_ode" logger) when no Mehler series is certified: the
    quadrature duals then cost minutes per pair, and the line names the cause and the remedies.
    The variances quoted are ``duals0``'s solution (kept from the choice of the duals: no solve)."""
    import logging

    v = float(np.max(problem.probed_variances(grid, inputs, duals0)))
    s00 = float(np.max(problem.input_s00))
    logging.getLogger("ntk_ode").warning(
        "kernel_fn: the node variances reach about %.3g (largest input variance input_scale^2 |x|^2 = %.3g, "
        "sigma_w T = %.3g), beyond the %d-term Mehler series of %r: the duals fall back to quadrature at "
        "every grid point, which can take minutes per pair. Normalise the inputs (or set input_scaling), "
        "lower sigma_w T, or loosen rtol.",
        v,
        s00,
        model.sigma_w * model.T,
        TERMS_LADDER[-1],
        model.activation.name,
    )


def pair_kernels(
    model: NeuralODE,
    duals0: Duals,
    problem: Problem,
    *,
    depth: int | None,
    nodes: int | None,
    tol: float,
    zonal: bool | str,
    block_size: int = 256,
    shard: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The direct (and zonal) strategy: duals certified on probe pairs, then the time grid, then
    every pair solved (or the zonal table interpolated), with the error estimate.

    Args:
        model: the Neural ODE.
        duals0: the first duals tried.
        problem: the pairs.
        depth: None or L.
        nodes: fixed Chebyshev intervals, or None.
        tol: relative target.
        zonal: False (solve every pair), "auto" (the zonal table, falling back to solves) or
            True (the zonal table, or RuntimeError).
        block_size: pairs per block.
        shard: spread blocks over the local devices.
        progress: progress bars.

    Returns:
        ``(values (P, 5), error (5,), delta)``: the kernels in ``GETS`` order, their estimated
        max abs errors, and the relative dual error bound.

    Raises:
        RuntimeError: ``zonal=True`` and the table cannot meet rtol.
    """
    eps = float(jnp.finfo(problem.X.dtype).eps)
    kinked = depth is None and nodes is None and is_kinked(model.activation)
    probe = probe_pairs(problem)  # the inputs whose variances the duals are certified on
    inputs = np.unique(np.concatenate([problem.i1[probe], problem.i2[probe], problem.extreme_inputs()]))
    # the duals first (on the first grid: it sees the whole range of variances), then the time
    # grid with those duals, then the duals' certificate again on the chosen grid
    grid0 = first_grid(depth, nodes)
    say = _stage_logger(progress)
    say(f"certifying the duals on {inputs.size} probe inputs (largest variance first)")
    problem.duals, delta = choose_terms(duals0, problem, grid0, inputs, max(1e-3 * tol, 1e3 * eps))
    d = problem.duals
    if d.quad:
        _note_slow_duals(model, problem, duals0, grid0, inputs)
    say(
        f"duals: {'closed forms' if d.closed else 'quadrature (slow)' if d.quad else f'{d.terms} Mehler terms'}"
        f" (relative bound {delta:.1e}); choosing the time grid"
    )
    # kinked activations, the ODE: identical inputs give dPhi a kink along t = s, which
    # collocation resolves only algebraically; those pairs are extrapolated from the exact
    # depth-L recursions instead (Richardson) and left out of the collocation probe. Not with
    # quadrature duals (deep recursions unaffordable): the probe then sees them and the
    # estimate says how far collocation got.
    same_input = identical_pairs(problem) if kinked and not problem.duals.quad else np.zeros(0, int)
    pick = probe_pairs(problem, exclude=same_input)
    only_same = same_input.size == problem.i1.size  # no pair left for collocation
    if only_same:
        grid, err = grid0, np.zeros(len(GETS))
        say(f"time grid: none (all {problem.i1.size} pairs are extrapolated from ResNet depths)")
    else:
        # quadrature duals cost ~7e4 evaluations per grid point: the ladder stops at 32 nodes
        with stand_in(problem, grid0, inputs):
            grid, err = choose_grid(
                problem, depth, nodes, tol, pick, len(GETS), report=say, max_nodes=32 if d.quad else None
            )
        say(f"time grid: {grid.size} nodes; solving {problem.i1.size} pairs")
    if grid is not grid0 or d.quad:  # (quadrature was chosen at the first rung's variances)
        delta = max(delta, certify(problem.duals, problem, grid, inputs))
    dual_err = None  # per unit kernel scale, or absolute when measured
    crude = 0.0
    if delta > 0:
        # a measured response to dual errors; skipped (two compilations less) when even a
        # generous growth factor exp(2 sigma_w T) leaves the dual part 1e3 below rtol
        crude = 4.0 * delta * math.exp(2.0 * model.sigma_w * model.T)
        if 1e3 * crude > tol:
            with stand_in(problem, grid0, inputs):
                ref = problem.solve(grid, sel=pick, shard=False)
                dual_err = 4.0 * delta * dual_sensitivity(problem, grid, pick, ref)
    vals = None
    if zonal and not only_same:
        try:
            vals, zerr = _zonal(problem, grid, tol, block_size, shard, max_nodes=512 if zonal is True else 256)
            err = err + zerr
        except ZonalFailed as exc:
            if zonal is True:
                raise RuntimeError(f"{exc}; use equal_norm=False") from exc
    use_zonal = vals is not None
    if vals is None:
        vals = (
            np.zeros((problem.i1.size, len(GETS)), np.asarray(problem.X).dtype)
            if only_same
            else problem.solve(grid, block_size=block_size, progress=progress, shard=shard)
        )
    if same_input.size:
        rvals, rerr = richardson_pairs(problem, same_input, tol, progress)
        vals[same_input] = rvals
        err = np.maximum(err, rerr) if not use_zonal else err + rerr
    scale = np.max(np.abs(vals), axis=0)
    err = err + 64 * eps * scale  # rounding and the Picard stopping rule
    if delta > 0:
        err = err + (crude * scale if dual_err is None else dual_err)
    return vals, err, delta


# The largest relative error (Parseval bound) of Mehler duals standing in for quadrature. The
# change of the kernels between two time grids is far smaller than the kernels' own response to
# the duals' error, so that error must nearly cancel between the grids, and cancels less the larger
# it is. Measured against quadrature on the same grids (softplus, sigma_w T = 6, one input, 24 -> 32
# intervals: quadrature 9.9e-10 relative): series with bounds 8e-4, 2.6e-4, 3.2e-5, 1.7e-6 (640 to
# 4096 terms) measured 1.7e-10, 3.7e-10, 7.5e-10, 9.6e-10, i.e. 5.8x, 2.7x, 1.3x and 1.03x too
# small (gelu, two inputs: 6e-4 -> 6%, 3e-5 -> 0.2%). Below 1e-4 the change is understated by
# at most ~2x there (1536 terms, 8.4e-5: 1.65x), which the factor 4 of the grid estimate
# (adapt.choose_grid) still covers. docs/benchmarks.md has the table.
STAND_IN_BOUND = 1e-4


@contextlib.contextmanager
def stand_in(problem: Problem, grid: Grid, inputs: np.ndarray) -> Iterator[None]:
    """Within the block, Mehler duals of ``TERMS_LADDER[-1]`` terms stand in for quadrature duals
    (when their Parseval bound at the probed variances of their own solution is below
    ``STAND_IN_BOUND``); otherwise nothing changes.

    Used where only a response of the kernels is measured, not the kernels themselves: their
    change between two time grids, and their change per unit relative dual error. The series'
    error nearly cancels in such a response, the more so the smaller it is: below
    ``STAND_IN_BOUND`` the measured change between grids was within ~2x of quadrature's
    (docs/theory.md section 6), at ~4x less per grid point (gelu, 33 nodes at variances up to
    643, coefficient tables included: 0.19 s against 0.73 s per grid).

    Args:
        problem: the pairs (``problem.duals`` is swapped in the block).
        grid: the grid whose probed node variances bound the stand-in's error.
        inputs: the probed inputs.

    Yields:
        Nothing.
    """
    duals = problem.duals
    if not duals.quad:
        yield
        return
    series = Duals(duals.act, TERMS_LADDER[-1])
    try:
        bound = mehler_screen(series.act, problem.probed_variances(grid, inputs, series), (series.terms,))[0]
    except (FloatingPointError, RuntimeError):  # the series' own solve failed: no stand-in
        bound = math.inf
    if bound <= STAND_IN_BOUND:
        problem.duals = series
    try:
        yield
    finally:
        problem.duals = duals


def direct_result(
    model: NeuralODE, duals0: Duals, problem: Problem, names: Sequence[str], *, tol: float, **options: Any
) -> Result:
    """:func:`pair_kernels` assembled into (N1, N2) arrays of the kernels ``names``.

    Args:
        model: the Neural ODE.
        duals0: the first duals tried.
        problem: the pairs.
        names: the kernels wanted.
        tol: relative target.
        **options: of :func:`pair_kernels`.

    Returns:
        The :class:`Result`.
    """
    vals, err, delta = pair_kernels(model, duals0, problem, tol=tol, **options)
    col = {g: GETS.index(g) for g in names}
    values = {g: jnp.asarray(problem.assemble(vals[:, i])) for g, i in col.items()}  # only those asked for
    errors = {g: float(err[i]) for g, i in col.items()}
    main = problem.main
    big = np.max(np.abs(vals[:, main]), axis=0)
    unmet = None
    if np.any(err[main] > tol * big):
        where = "duals" if delta > 1e-3 * tol else "time grid"
        unmet = (
            f"kernel_fn: rtol={tol:g} not met: estimated max abs error "
            f"{', '.join(f'{GETS[i]} {err[i]:.2e}' for i in main)} "
            f"(relative {np.max(err[main] / np.maximum(big, 1e-300)):.1e}; limited by the {where}: "
            f"relative dual error bound {delta:.1e}, activation {model.activation.name!r})"
        )
    return Result(values, errors, unmet)


def norm_angle_tables(
    model: NeuralODE,
    d: int,
    rmin: float,
    rmax: float,
    names: Sequence[str],
    *,
    depth: int | None,
    rtol: float,
    nodes: int | None,
    terms: int,
    progress: bool = False,
) -> list[NormAngleKernel]:
    """One certified (norm, norm, angle) interpolant per kernel of ``names``, built over direct
    solves (:func:`direct_result` on the table's inputs, never a table inside).

    Args:
        model: the Neural ODE.
        d: input dimension.
        rmin: smallest norm.
        rmax: largest norm.
        names: kernel names.
        depth: None or L.
        rtol: relative target of the table.
        nodes: fixed Chebyshev intervals of the solves, or None.
        terms: Mehler terms of the solves.
        progress: progress bars over the solves' pair blocks.

    Returns:
        The interpolants.

    Raises:
        RuntimeError: the table cannot meet rtol.
    """
    # the node solves aim at 1e-8 in float64; in float32 (x64 off) at rtol itself
    inner = min(rtol, 1e-8) if jnp.result_type(float) == jnp.float64 else rtol
    duals0 = Duals(model.activation, int(terms))

    def evaluate(x1, x2):
        x1, x2 = check_inputs(x1, None, "x1"), check_inputs(x2, None, "x2")
        problem = Problem(model, duals0, x1, x2, False, want_ntk=names != ("nngp",))
        r = direct_result(
            model, duals0, problem, names, tol=inner, depth=depth, nodes=nodes, zonal=False, progress=progress
        )
        if r.unmet is not None:
            warnings.warn(r.unmet, RuntimeWarning, stacklevel=4)
        return np.stack([np.asarray(r.values[n]) for n in names]), np.array([r.errors[n] for n in names])

    return build_norm_angle(evaluate, int(d), float(rmin), float(rmax), rtol=rtol)


_gram_jit = jax.jit(lambda k, a, b: k.gram(a, b))


def table_kernels(
    model: NeuralODE,
    x1: jax.Array | np.ndarray,
    x2: jax.Array | np.ndarray,
    names: Sequence[str],
    *,
    depth: int | None,
    tol: float,
    nodes: int | None,
    terms: int,
    progress: bool,
) -> Result:
    """The table strategy: the (norm, norm, angle) interpolants evaluated in row blocks of
    bounded memory.

    Args:
        model: the Neural ODE.
        x1: inputs (N1, d).
        x2: inputs (N2, d).
        names: kernel names.
        depth: None or L.
        tol: relative target.
        nodes: fixed Chebyshev intervals of the solves, or None.
        terms: Mehler terms of the solves.
        progress: progress bars.

    Returns:
        The :class:`Result`.

    Raises:
        RuntimeError: the table cannot meet rtol.
    """
    norms = np.concatenate([np.linalg.norm(np.asarray(x1), axis=1), np.linalg.norm(np.asarray(x2), axis=1)])
    rmin, rmax = float(norms.min()), float(norms.max())
    kernels = norm_angle_tables(
        model, x1.shape[1], rmin, rmax, names, depth=depth, rtol=tol, nodes=nodes, terms=terms, progress=progress
    )
    rows = max(1, 2**22 // max(1, x2.shape[0]))
    vals, errs = [], []
    for k in kernels:
        parts = [_gram_jit(k, x1[i : i + rows], x2) for i in range(0, x1.shape[0], rows)]
        vals.append(jnp.concatenate(parts))
        errs.append(float(k.error) + 64 * float(jnp.finfo(x1.dtype).eps) * float(jnp.max(jnp.abs(vals[-1]))))
    unmet = None
    if max(e / max(float(jnp.max(jnp.abs(v))), 1e-300) for e, v in zip(errs, vals)) > tol:
        unmet = f"kernel_fn: rtol={tol:g} not met by the (norm, norm, angle) table: errors {errs}"
    return Result(dict(zip(names, vals)), dict(zip(names, errs)), unmet)
