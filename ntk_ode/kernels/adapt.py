"""Adaptivity and certification of the engine: Mehler terms, Chebyshev nodes, Richardson.

Each choice is made on a few probe pairs (:func:`ntk_ode.kernels.problem.probe_pairs`) and comes
with an error estimate (docs/theory.md, "Error estimates of kernel_fn"):

* :func:`choose_terms`: the fewest Mehler terms whose Parseval certificate meets the target, or
  quadrature duals when no series can;
* :func:`choose_grid`: Chebyshev nodes M from a ladder, until two rungs agree;
* :func:`dual_sensitivity`: how far the kernels move per unit relative dual error;
* :func:`richardson_pairs`: identical pairs of kinked activations, by Richardson extrapolation of
  the exact ResNet kernels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .duals import Duals, mehler_certificate, mehler_screen, quad_certificate, trim_terms
from .grids import Grid, chebyshev_grid, resnet_grid
from .problem import Problem, equal_inputs

__all__ = [
    "NODE_LADDER",
    "RICHARDSON_LS",
    "RICHARDSON_SAFETY",
    "TERMS_LADDER",
    "certify",
    "choose_grid",
    "choose_terms",
    "dual_sensitivity",
    "first_grid",
    "pick_duals",
    "richardson",
    "richardson_pairs",
]

# Mehler terms tried when the duals cannot be certified with fewer. A rung costs K (K + 1024)
# per table of an input and node, and K per dual at a grid point (a 2-D quadrature costs ~7e4):
# the series is the cheap certified dual up to the variances where 4096 terms converge (tanh:
# ~60; softplus: ~200; docs/theory.md section 4); beyond, the quadrature duals take over.
TERMS_LADDER = (192, 384, 640, 1024, 1536, 2048, 3072, 4096)
NODE_LADDER = (12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
_SAFETY = 4.0  # error of rung M <= |K(M) - K(M')| / (1 - (M / M')) for convergence of order >= 1
# depths of the Richardson extrapolation of kinked activations' identical pairs; the ResNet grids
# are solved by substitution (O(L^2) duals), so even L = 8192 takes seconds (Sigma, Phi and dPhi
# of a pair: 1.6 GiB there)
RICHARDSON_LS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
RICHARDSON_SAFETY = 4.0


def certify(duals: Duals, problem: Problem, grid: Grid, inputs: np.ndarray) -> float:
    """Relative error bound of the duals at the node variances of ``inputs`` on ``grid``.

    Args:
        duals: the duals (the variances are those of their own solution).
        problem: the pairs.
        grid: the time grid.
        inputs: the probed inputs.

    Returns:
        The bound (0 for closed forms).
    """
    if duals.closed:
        return 0.0
    v = problem.probed_variances(grid, inputs, duals)
    return quad_certificate(duals, v) if duals.quad else mehler_certificate(duals, v)


def pick_duals(
    duals0: Duals,
    certify_fn: Callable[[Duals], float],
    target: float,
    screen: Callable[[Sequence[int]], np.ndarray] | None = None,
) -> tuple[Duals, float]:
    """The engine's ladder of duals: ``duals0.terms`` Mehler terms, then the larger counts of
    ``TERMS_LADDER``, the first whose bound ``certify_fn(duals)`` is at most ``target``; else
    the quadrature duals when their bound is smaller; else the last series.

    Args:
        duals0: the first duals tried (closed forms: returned with bound 0).
        certify_fn: ``duals -> relative error bound`` where the caller's variances live.
        target: the relative dual error wanted.
        screen: optional ``counts -> predicted bounds`` (:func:`ntk_ode.kernels.duals.mehler_screen`
            at variances near the caller's): rungs predicted to miss the target are skipped
            without a certificate of their own.

    Returns:
        ``(duals, bound)``.
    """
    if duals0.closed:
        return duals0, 0.0
    ladder = [duals0.terms] + [k for k in TERMS_LADDER if k > duals0.terms]
    predicted = list(screen(ladder)) if screen is not None else [None] * len(ladder)
    duals, delta = duals0, math.inf
    for terms, guess in zip(ladder, predicted):
        duals = Duals(duals0.act, terms)
        if guess is not None and guess > target:
            delta = float(guess)
            continue
        delta = certify_fn(duals)
        if delta <= target:
            return duals, delta
    # the series cannot be certified (large variance, kinks): robust quadrature at every point
    quad = Duals(duals0.act, duals0.terms, quad=True)
    delta_q = certify_fn(quad)
    return (quad, delta_q) if delta_q < delta else (duals, delta)


def choose_terms(duals0: Duals, problem: Problem, grid: Grid, inputs: np.ndarray, target: float) -> tuple[Duals, float]:
    """Fewest Mehler terms (trimmed) whose certified dual error is below ``target``; quadrature
    duals when no series up to ``TERMS_LADDER[-1]`` terms can; the better of the two otherwise.
    The single-input solutions of every rung solved are kept in ``problem``; ``problem.duals``
    is left as it is.

    Args:
        duals0: the first duals tried.
        problem: the pairs.
        grid: the grid whose node variances are certified.
        inputs: the probed inputs.
        target: the relative dual error wanted.

    Returns:
        ``(duals, relative dual error bound)``; for quadrature duals the bound is at the node
        variances of the first rung's solution, to be certified again where they are solved.
    """

    def certify_on_problem(duals):
        return certify(duals, problem, grid, inputs)

    if duals0.closed:
        return duals0, 0.0
    # the Mehler rungs are certified at the node variances of one solve (the first rung's), not
    # one solve per rung; the choice is then certified again at its own solution
    v0 = problem.probed_variances(grid, inputs, duals0)

    def certify_at_v0(duals):
        # quadrature too at v0, without its own solve: the caller certifies it again at the
        # variances it solves for (strategy.pair_kernels)
        return quad_certificate(duals, v0) if duals.quad else mehler_certificate(duals, v0)

    duals, delta = pick_duals(duals0, certify_at_v0, target, screen=lambda ks: mehler_screen(duals0.act, v0, ks))
    if not duals.quad and duals.terms != duals0.terms:
        delta = certify_on_problem(duals)
        if delta > target:  # the variances moved with the duals: the ladder from here, screened there
            v1 = problem.probed_variances(grid, inputs, duals)
            duals, delta = pick_duals(
                duals, certify_on_problem, target, screen=lambda ks: mehler_screen(duals.act, v1, ks)
            )
    if duals.closed or duals.quad or delta > target:
        return duals, delta
    # trim as far as the target allows (tail ~ terms * threshold^2), else to 1e-10
    for threshold in (max(1e-10, 0.5 * math.sqrt(target / duals.terms)), 1e-10):
        trimmed = trim_terms(duals, problem.probed_tables(grid, inputs, duals), threshold)
        if trimmed.terms < duals.terms:
            delta_t = certify_on_problem(trimmed)
            if delta_t <= target:
                return trimmed, delta_t
    return duals, delta


def first_grid(depth: int | None, nodes: int | None) -> Grid:
    """The grid (on [0, 1]) the duals are chosen on: the ResNet's, the fixed one, or the ladder's first.

    Args:
        depth: None or L.
        nodes: fixed Chebyshev intervals, or None.

    Returns:
        The grid.
    """
    if depth is not None:
        return resnet_grid(depth, 1.0)
    return chebyshev_grid(int(nodes) if nodes is not None else NODE_LADDER[0], 1.0)


def dual_sensitivity(problem: Problem, grid: Grid, pick: np.ndarray, base: np.ndarray, eta: float = 1e-6) -> np.ndarray:
    """How much each kernel moves per unit relative dual error: the probe pairs solved with
    every dual raised by ``eta`` times its Cauchy-Schwarz scale, divided by ``eta``.

    Args:
        problem: the pairs.
        grid: the time grid.
        pick: the probe pairs.
        base: their unperturbed kernels (P, 5).
        eta: the relative perturbation.

    Returns:
        Per kernel (5,), the largest change per unit relative dual error.
    """
    duals = problem.duals
    problem.duals = dataclasses.replace(duals, perturb=eta)
    try:
        up = problem.solve(grid, sel=pick, shard=False)
    finally:
        problem.duals = duals
    return np.max(np.abs(up - base), axis=0) / eta


def richardson(values: Sequence[Any], Ls: Sequence[int]) -> Any:
    """Richardson extrapolation of values(L) ~ K + c1/L + c2/L^2 + ... over L doubling each step.

    Args:
        values: kernels (or numbers) at the depths ``Ls``.
        Ls: depths doubling at each step.

    Returns:
        The extrapolated value (eliminating the 1/L .. 1/L^(m-1) terms of m values).

    Raises:
        ValueError: the depths do not double.
    """
    depths = np.asarray(Ls, float)
    if np.any(np.abs(depths[1:] / depths[:-1] - 2.0) > 1e-12):
        raise ValueError("Ls must double at each step, e.g. 8, 16, 32, ...")
    table = [np.asarray(v, float) for v in values]
    for j in range(1, len(table)):
        f = 2.0**j
        table = [(f * table[i + 1] - table[i]) / (f - 1.0) for i in range(len(table) - 1)]
    return table[0]


def richardson_pairs(
    problem: Problem, sel: np.ndarray, tol: float, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Kernels of the pairs ``sel`` by Richardson extrapolation of the exact ResNet kernels
    K^L_inf (L = 16, 32, ..., 8192; error c1/L + c2/L^2 + ...), adding levels until the estimate
    meets rtol (docs/theory.md section 7). For equal inputs the estimate of the extrapolant of
    levels 0..n is 4x its difference to that of levels 1..n (the two best entries of the
    Richardson table). Near-duplicates are pre-asymptotic until L exceeds ~1 / angle (their
    near-kink is resolved only there), so their estimate is at least 4x the change of the
    extrapolant from n - 1 to n levels as well.

    Args:
        problem: the pairs.
        sel: the pairs to extrapolate.
        tol: relative target.
        progress: progress bars over the pair blocks.

    Returns:
        ``(values (P, 5), estimated max abs error (5,))``.
    """
    near = ~equal_inputs(problem, sel)[:, None]
    vals: list[np.ndarray] = []
    cur = est = prev = None
    for L in RICHARDSON_LS:
        grid = resnet_grid(L, 1.0)
        vals.append(problem.solve(grid, sel=sel, block_size=max(1, 2**24 // (L + 1) ** 2), progress=progress))
        problem.drop_singles(grid)
        if len(vals) >= 3:
            Ls = RICHARDSON_LS[: len(vals)]
            cur = richardson(vals, Ls)
            gap = np.abs(cur - richardson(vals[1:], Ls[1:]))
            if prev is not None:
                gap = np.where(near, np.maximum(gap, np.abs(cur - prev)), gap)
            est = RICHARDSON_SAFETY * np.max(gap, axis=0)
            done = np.all(est[problem.main] <= tol * np.max(np.abs(cur[:, problem.main]), axis=0))
            if done and (prev is not None or not near.any()):
                break
            prev = cur
    assert cur is not None and est is not None  # RICHARDSON_LS has more than three depths
    return cur, est


def choose_grid(
    problem: Problem,
    depth: int | None,
    nodes: int | None,
    tol: float,
    pick: np.ndarray,
    n_gets: int = 5,
    report: Callable[[str], None] | None = None,
    max_nodes: int | None = None,
) -> tuple[Grid, np.ndarray]:
    """The grid to use (on [0, 1]) and an error estimate of its time discretisation (max abs,
    per kernel).

    Args:
        problem: the pairs.
        depth: None or L (exact: error 0).
        nodes: fixed Chebyshev intervals (error unknown: nan), or None for the ladder.
        tol: relative target.
        pick: the probe pairs.
        n_gets: the number of kernel columns.
        report: optional ``str -> None`` told each rung of the ladder as it is solved.
        max_nodes: the last rung of the ladder (None: all of ``NODE_LADDER``).

    Returns:
        ``(grid, error (n_gets,))``.
    """
    if depth is not None:
        return resnet_grid(depth, 1.0), np.zeros(n_gets)
    if nodes is not None:
        return chebyshev_grid(int(nodes), 1.0), np.full(n_gets, np.nan)
    prev = None
    ladder = [M for M in NODE_LADDER if max_nodes is None or M <= max_nodes]
    for M in ladder:
        cur = problem.solve(chebyshev_grid(M, 1.0), sel=pick, shard=False)
        if prev is not None:
            diff = np.max(np.abs(cur - prev[1]), axis=0)
            if report is not None:
                change = np.max(diff[problem.main] / np.max(np.abs(cur[:, problem.main]), axis=0))
                report(f"time grid: {prev[0]} -> {M} Chebyshev intervals change the kernels by {change:.1e} (relative)")
            if np.all(_SAFETY * diff[problem.main] <= tol * np.max(np.abs(cur[:, problem.main]), axis=0)):
                return chebyshev_grid(prev[0], 1.0), _SAFETY * diff
        prev = (M, cur)
    # not converged: keep the finest grid; its error from the last two differences, assuming
    # at least first-order convergence in M (the ratio of consecutive rungs is 4/3)
    ratio = ladder[-1] / ladder[-2]
    assert prev is not None
    return chebyshev_grid(prev[0], 1.0), diff / (ratio - 1.0)
