"""Width x seed sweeps of the finite-width NTK against its infinite-width limit.

For each width the seeds go through one compiled function (``jax.lax.map`` in batches on one
device; vmapped and split over the devices when there are several);
the relative distance ``||Theta_n - K_inf||_F / ||K_inf||_F`` is recorded per seed, in total and
per block (U, W, v). Results are written atomically after every width to ``<out>.json``
(provenance, per-seed distances, the mean kernel per width, timings); a rerun with the same
config resumes, skipping the finished seeds of every width (the resume policy of
:mod:`ntk_ode.results`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import ArrayOrNumpy, positive_int
from .empirical import structured_blocks
from .kernels import kernel_fn
from .model import NeuralODE, Solver, check_depth, check_inputs, hyper_jit
from .results import atomic_write_json, check_resume, exclusive, fingerprint, provenance, read_json

__all__ = ["width_sweep", "fit_slope", "slope_standard_error", "seed_keys"]


def fit_slope(x: ArrayOrNumpy | Sequence[float], y: ArrayOrNumpy | Sequence[float]) -> float:
    """Least-squares slope of log y against log x.

    Args:
        x: positive abscissae.
        y: positive values.

    Returns:
        The fitted exponent a of y ~ x^a.

    Raises:
        ValueError: fewer than two points, or a non-positive value.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or x.shape != y.shape:
        raise ValueError(f"fit_slope needs at least two (x, y) points of equal shape, got {x.shape} and {y.shape}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("fit_slope needs positive x and y (it fits on log-log axes)")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def slope_standard_error(x: ArrayOrNumpy | Sequence[float], samples: ArrayOrNumpy) -> float:
    """Standard error of :func:`fit_slope` of the seed means, from the spread over seeds.

    The slope is ``sum_i c_i log m_i`` with ``m_i`` the mean of row ``i`` of ``samples`` and
    ``c_i = (log x_i - mean log x) / sum_j (log x_j - mean log x)^2``; each ``log m_i`` has
    variance ``s_i^2 / (n m_i^2)`` to first order (``s_i`` the seeds' standard deviation, ``n``
    the seed count), independently over ``i``, so the slope's standard error is
    ``sqrt(sum_i c_i^2 s_i^2 / (n m_i^2))``. It measures the seed noise only, not a departure
    of the means from a power law.

    Args:
        x: positive abscissae (the widths), shape (k,).
        samples: positive values, shape (k, n): n seeds per abscissa.

    Returns:
        The standard error; nan with fewer than two seeds.

    Raises:
        ValueError: shapes that do not match, fewer than two distinct abscissae, or a
            non-positive value.
    """
    x, samples = np.asarray(x, float), np.asarray(samples, float)
    if samples.ndim != 2 or samples.shape[0] != x.size or np.unique(x).size < 2:
        raise ValueError(
            f"slope_standard_error needs x of shape (k,), k >= 2 distinct, and samples of shape (k, n); "
            f"got {x.shape} and {samples.shape}"
        )
    if np.any(x <= 0) or np.any(samples <= 0):
        raise ValueError("slope_standard_error needs positive x and samples (log-log axes)")
    n = samples.shape[1]
    if n < 2:
        return float("nan")
    lx = np.log(x) - np.log(x).mean()
    c = lx / np.sum(lx**2)
    var_log_mean = samples.var(axis=1, ddof=1) / (n * samples.mean(axis=1) ** 2)
    return float(np.sqrt(np.sum(c**2 * var_log_mean)))


def seed_keys(seed: int, width: int, first: int, count: int) -> jax.Array:
    """PRNG keys of seeds ``first .. first + count - 1`` at ``width``.

    Seed ``s`` at width ``w`` is ``fold_in(fold_in(PRNGKey(seed), w), s)``: it does not depend on
    how many seeds are run, so a sweep extended to more seeds reuses the finished ones.

    Args:
        seed: the sweep's base seed.
        width: the width.
        first: index of the first seed.
        count: number of seeds.

    Returns:
        Keys of shape (count, 2) (raw uint32 keys).
    """
    base = jax.random.fold_in(jax.random.PRNGKey(seed), width)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(first, first + count))


def _one_seed(model, key, x, width, depth, solver):
    p = model.init(key, x.shape[1], width, x.dtype)
    bl, ok = structured_blocks(model, p, x, None, depth, solver, 32)
    return jnp.stack(bl), ok


@hyper_jit
def _blocks_over_seeds(model, keys, x, width, depth, solver, batch_size):
    return jax.lax.map(lambda k: _one_seed(model, k, x, width, depth, solver), keys, batch_size=batch_size)


@hyper_jit
def _blocks_over_seeds_vmapped(model, keys, x, width, depth, solver):
    return jax.vmap(lambda k: _one_seed(model, k, x, width, depth, solver))(keys)


def _seed_blocks(model, keys, x, width, depth, solver, batch_size, shard):
    """All seeds at one width: through lax.map on one device, or vmapped with the seeds split
    over all local devices (padded to a multiple of the device count) when there are several."""
    devs = jax.local_devices()
    if not shard or len(devs) < 2:
        return _blocks_over_seeds(model, keys, x, width, depth, solver, batch_size)
    S = keys.shape[0]
    idx = np.minimum(np.arange(-(-S // len(devs)) * len(devs)), S - 1)
    mesh = jax.sharding.Mesh(np.array(devs), ("seeds",))
    keys = jax.device_put(keys[idx], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds")))
    bl, ok = _blocks_over_seeds_vmapped(model, keys, x, width, depth, solver)
    return bl[:S], ok[:S]


def _seeds_over_processes(model, keys, x, width, depth, solver, batch_size, shard):
    """All seeds at one width, dealt round-robin over the processes of ``jax.distributed``
    (:func:`ntk_ode.distributed.split`) and gathered back in seed order on every process."""
    P, p = jax.process_count(), jax.process_index()
    if P == 1:
        return _seed_blocks(model, keys, x, width, depth, solver, batch_size, shard)
    from jax.experimental import multihost_utils

    S = keys.shape[0]
    per = -(-S // P)
    mine = np.arange(p, S, P)
    idx = np.concatenate([mine, np.full(per - mine.size, mine[-1] if mine.size else 0)]).astype(int)
    bl, ok = _seed_blocks(model, keys[idx], x, width, depth, solver, batch_size, shard)
    bl_all = np.asarray(multihost_utils.process_allgather(np.asarray(bl)))  # (P, per, 3, N, N)
    ok_all = np.asarray(multihost_utils.process_allgather(np.asarray(ok)))
    order = [(k % P, k // P) for k in range(S)]
    return np.stack([bl_all[q, j] for q, j in order]), np.array([ok_all[q, j] for q, j in order])


def _rel(A, B):
    return np.linalg.norm(A - B, axis=(-2, -1)) / np.linalg.norm(B)


def width_sweep(
    model: NeuralODE,
    x: ArrayOrNumpy,
    widths: Sequence[int],
    n_seeds: int,
    *,
    depth: int | None = None,
    seed: int = 0,
    solver: Solver | str | None = None,
    out: str | None = None,
    batch_size: int | None = None,
    shard: bool = True,
    progress: bool = True,
) -> dict:
    """Relative distance of the finite-width NTK to ``kernel_fn(model, depth)`` over widths.

    Runs eagerly (it writes files and shows progress); each width's seeds go through one
    compiled, vmapped function.

    Args:
        model: the Neural ODE.
        x: inputs (N, d).
        widths: widths to sample.
        n_seeds: initializations per width (seed ``s`` at width ``w``: :func:`seed_keys`).
        depth: None (the ODE) or L (the tied ResNet).
        seed: base seed.
        solver: ODE solver (name, Solver or None).
        out: path prefix; ``<out>.json`` is written after every width. A rerun with the same
            config resumes; more widths or more seeds extend the finished run; any other change
            is refused (:class:`~ntk_ode.results.ResumeError`).
        batch_size: seeds per ``lax.map`` batch on one device.
        shard: split seeds over the local devices when there are several. Under
            ``jax.distributed`` the seeds are also dealt over the processes (round-robin) and
            gathered back; every process returns the same result and process 0 writes ``out``.
        progress: show a progress bar.

    Returns:
        A dict with ``widths``, per-seed distances ``dist`` (n_widths, n_seeds) and per block
        ``dist_U``, ``dist_W``, ``dist_v``, their means ``mean_*``, the fitted log-log ``slope``
        of the mean distance against width and its standard error over seeds ``slope_se``
        (:func:`slope_standard_error`; nan for a single width), ``K_inf``, timings and
        provenance (``config``, ``versions``).

    Raises:
        ValueError: bad arguments.
        ResumeError: ``out`` holds a sweep of another configuration or is not a sweep file.
        LockedError: another process is writing ``out``.
        RuntimeError: an ODE solve failed.
        FloatingPointError: a finite-width NTK is not finite.
    """
    x = check_inputs(x, None)
    depth = check_depth(depth)
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be a non-empty list of positive integers, got {widths!r}")
    n_seeds = positive_int("n_seeds", n_seeds)
    n_seeds = int(n_seeds)
    solver = Solver.make(solver)
    config = {
        **model.config(),
        "depth": depth,
        "widths": widths,
        "n_seeds": n_seeds,
        "seed": int(seed),
        "solver": dataclasses.asdict(solver),
        "x_fingerprint": fingerprint(x),
        "x_dtype": str(x.dtype),
    }
    with contextlib.ExitStack() as stack:
        if out is not None and jax.process_index() == 0:  # process 0 writes for all
            stack.enter_context(exclusive(out + ".json"))
        return _sweep(model, x, widths, n_seeds, depth, seed, solver, out, batch_size, shard, progress, config)


def _sweep(model, x, widths, n_seeds, depth, seed, solver, out, batch_size, shard, progress, config) -> dict:
    state = _load(out, config)
    if "K_inf" not in state:
        t0 = time.perf_counter()
        k = kernel_fn(model, depth=depth)(x, get=("ntk", "ntk_U", "ntk_W", "ntk_v"))
        state["K_inf"] = [np.asarray(a).tolist() for a in k]
        state["time_kernel_s"] = time.perf_counter() - t0
        state["done"] = {}
    K = [np.asarray(a) for a in state["K_inf"]]
    todo = [w for w in widths if len(state["done"].get(str(w), {}).get("dist", [])) < n_seeds]
    it = todo
    if progress and todo:
        from tqdm.auto import tqdm

        it = tqdm(todo, desc="width sweep", unit="width")
    for w in it:
        t0 = time.perf_counter()
        prev = state["done"].get(str(w), {})
        have = len(prev.get("dist", []))
        keys = seed_keys(seed, w, have, n_seeds - have)
        bl, ok = _seeds_over_processes(model, keys, x, w, depth, solver, batch_size, shard)
        if not bool(jnp.all(ok)):
            raise RuntimeError(f"width_sweep: an ODE solve failed at width {w}")
        bl = np.asarray(bl)  # (new seeds, 3, N, N)
        if not np.all(np.isfinite(bl)):
            raise FloatingPointError(f"width_sweep: a finite-width NTK at width {w} is not finite (blow-up)")
        tot = bl.sum(axis=1)
        row = {
            "dist": _rel(tot, K[0]),
            "dist_U": _rel(bl[:, 0], K[1]),
            "dist_W": _rel(bl[:, 1], K[2]),
            "dist_v": _rel(bl[:, 2], K[3]),
        }
        sum_ntk = tot.sum(0) + (np.asarray(prev["mean_ntk"]) * have if have else 0.0)
        state["done"][str(w)] = {
            **{k: list(prev.get(k, [])) + v.tolist() for k, v in row.items()},
            "mean_ntk": (sum_ntk / n_seeds).tolist(),
            "time_s": prev.get("time_s", 0.0) + time.perf_counter() - t0,
        }
        _save(out, config, state)
    res = {
        k: np.array([state["done"][str(w)][k][:n_seeds] for w in widths])
        for k in ("dist", "dist_U", "dist_W", "dist_v")
    }
    means = {f"mean_{k}": v.mean(axis=1) for k, v in res.items()}
    several = len(set(widths)) > 1
    slope = fit_slope(widths, means["mean_dist"]) if several else float("nan")
    slope_se = slope_standard_error(widths, res["dist"]) if several else float("nan")
    return {
        **provenance(config),
        "widths": np.array(widths),
        **res,
        **means,
        "slope": slope,
        "slope_se": slope_se,
        "K_inf": K[0],
        "time_kernel_s": state["time_kernel_s"],
        "time_s": np.array([state["done"][str(w)]["time_s"] for w in widths]),
    }


def _load(out: str | None, config: dict) -> dict:
    if out is None or not os.path.exists(out + ".json"):
        return {}
    saved = read_json(out + ".json", required=("config", "state"))
    check_resume(out + ".json", saved["config"], config, extendable=("widths", "n_seeds"))
    return saved["state"]  # seeds beyond n_seeds are kept on disk and left out of the results


def _save(out: str | None, config: dict, state: dict) -> None:
    if out is None or jax.process_index() != 0:
        return
    atomic_write_json(out + ".json", {**provenance(config), "state": state})
