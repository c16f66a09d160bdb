"""Width x seed sweeps of the finite-width NTK against its infinite-width limit.

For each width the seeds go through one compiled function (``jax.lax.map`` in batches on one
device; vmapped and split over the devices when there are several);
the relative distance ``||Theta_n - K_inf||_F / ||K_inf||_F`` is recorded per seed, in total and
per block (U, W, v). Results are written atomically after every width to ``<out>.json`` (config,
versions, timings, numbers) and ``<out>.npz`` (mean kernels); a rerun with the same config
resumes, skipping the widths already done.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .empirical import _structured_blocks_from
from .limits import kernel_fn
from .model import NeuralODE, Solver, check_depth, check_inputs

__all__ = ["width_sweep", "fit_slope", "versions", "atomic_write_json"]


def versions() -> dict:
    import diffrax
    import equinox
    import optax

    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("ntk_ode")
    except PackageNotFoundError:
        ours = "unknown"
    return {"ntk_ode": ours, "jax": jax.__version__, "diffrax": diffrax.__version__,
            "equinox": equinox.__version__, "optax": optax.__version__, "numpy": np.__version__}


def atomic_write_json(path, obj):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def fit_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def _one_seed(model, key, x, width, depth, solver):
    p = model.init(key, x.shape[1], width, x.dtype)
    bl, ok = _structured_blocks_from(model, p, x, None, depth, solver, 32)
    return jnp.stack(bl), ok


@eqx.filter_jit
def _blocks_over_seeds(model, keys, x, width, depth, solver, batch_size):
    return jax.lax.map(lambda k: _one_seed(model, k, x, width, depth, solver), keys, batch_size=batch_size)


@eqx.filter_jit
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


def width_sweep(
    model: NeuralODE,
    x,
    widths,
    n_seeds: int,
    *,
    depth=None,
    seed: int = 0,
    solver=None,
    out: str | None = None,
    batch_size: int | None = None,
    shard: bool = True,
    progress: bool = True,
):
    """Relative distance of the finite-width NTK to ``kernel_fn(model, depth)`` over widths.

    Returns a dict with ``widths``, per-seed distances ``dist`` (n_widths, n_seeds) and per block
    ``dist_U``, ``dist_W``, ``dist_v``, their means, the fitted log-log ``slope`` of the mean
    distance against width, and timings. With ``out`` (a path without extension), results are
    saved after each width and a rerun resumes. With several local devices (``shard=True``) the
    seeds of each width are split over them.
    """
    x = check_inputs(x, None)
    depth = check_depth(depth)
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be a non-empty list of positive integers, got {widths!r}")
    if int(n_seeds) != n_seeds or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}")
    solver = Solver.make(solver)
    config = {"activation": model.activation.name, "T": model.T, "sigma_w": model.sigma_w, "sigma_u": model.sigma_u,
              "sigma_v": model.sigma_v, "head": model.head, "input_scaling": model.input_scaling, "depth": depth,
              "widths": widths, "n_seeds": int(n_seeds), "seed": int(seed), "solver": solver.name,
              "x_sha": _digest(np.asarray(x))}
    state = _load(out, config)
    if "K_inf" not in state:
        t0 = time.perf_counter()
        k = kernel_fn(model, depth=depth)(x, get=("ntk", "ntk_U", "ntk_W", "ntk_v"))
        state["K_inf"] = [np.asarray(a).tolist() for a in (k.ntk, k.ntk_U, k.ntk_W, k.ntk_v)]
        state["time_kernel_s"] = time.perf_counter() - t0
        state["done"] = {}
    K = [np.asarray(a) for a in state["K_inf"]]
    todo = [w for w in widths if str(w) not in state["done"]]
    it = todo
    if progress and todo:
        from tqdm.auto import tqdm

        it = tqdm(todo, desc="width sweep", unit="width")
    for w in it:
        t0 = time.perf_counter()
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), w), n_seeds)
        bl, ok = _seed_blocks(model, keys, x, w, depth, solver, batch_size, shard)
        if not bool(jnp.all(ok)):
            raise RuntimeError(f"width_sweep: an ODE solve failed at width {w}")
        bl = np.asarray(bl)  # (seeds, 3, N, N)
        tot = bl.sum(axis=1)
        rel = lambda A, B: np.linalg.norm(A - B, axis=(-2, -1)) / np.linalg.norm(B)
        state["done"][str(w)] = {
            "dist": rel(tot, K[0]).tolist(),
            "dist_U": rel(bl[:, 0], K[1]).tolist(),
            "dist_W": rel(bl[:, 1], K[2]).tolist(),
            "dist_v": rel(bl[:, 2], K[3]).tolist(),
            "mean_ntk": tot.mean(0).tolist(),
            "time_s": time.perf_counter() - t0,
        }
        _save(out, config, state)
    res = {k: np.array([state["done"][str(w)][k] for w in widths]) for k in ("dist", "dist_U", "dist_W", "dist_v")}
    means = {f"mean_{k}": v.mean(axis=1) for k, v in res.items()}
    return {"config": config, "widths": np.array(widths), **res, **means,
            "slope": fit_slope(widths, means["mean_dist"]), "K_inf": K[0],
            "time_kernel_s": state["time_kernel_s"],
            "time_s": np.array([state["done"][str(w)]["time_s"] for w in widths]), "versions": versions()}


def _digest(a) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _load(out, config) -> dict:
    if out is None or not os.path.exists(out + ".json"):
        return {}
    try:
        with open(out + ".json") as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{out}.json exists but is not a readable results file ({e}); move it away") from e
    if saved.get("config") != config:
        raise ValueError(f"{out}.json holds a sweep with another config; use another out path")
    return saved.get("state", {})


def _save(out, config, state):
    if out is None:
        return
    atomic_write_json(out + ".json", {"config": config, "state": state, "versions": versions()})
