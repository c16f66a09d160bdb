"""Kernel regression past N^2 memory: predict.nystrom_solve on a synthetic teacher task.

N inputs on the sphere of radius sqrt(d) in d dimensions with teacher targets (ntk_ode.data.teacher)
or, with --mnist DIR, MNIST's training images (IDX files) with the digit parity as target; M
centres; the NTK of the weight-tied ResNet of depth L (erf) from the zonal interpolant. Prints and
writes JSON: time to build the interpolant, the solve's time, iterations and residual, peak
memory, and the test error on held-out points.

    python benchmarks/nystrom.py [--n 200000] [--m 5000] [--d 784] [--depth 8] [--mnist DIR]
                                 [--cache-gib 0.5] [--cache-dir DIR | --recompute]

K_nM's row blocks stay in memory up to --cache-gib; the rest go to an unlinked temporary file in
--cache-dir (default: the system's temporary folder), or with --recompute are recomputed at every
CG iteration.
"""

import argparse
import json
import os
import resource
import tempfile
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import ntk_ode as no  # noqa: E402
from ntk_ode.data import teacher  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--m", type=int, default=5000)
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--ridge", type=float, default=1e-3, help="relative to N (the ridge is ridge * N)")
    ap.add_argument("--mnist", default=None, help="a folder with MNIST's IDX files")
    ap.add_argument("--cache-gib", type=float, default=0.5, help="keep K_nM's blocks in memory up to this size")
    ap.add_argument("--cache-dir", default=tempfile.gettempdir(), help="a folder for the blocks beyond --cache-gib")
    ap.add_argument("--recompute", action="store_true", help="recompute the blocks beyond --cache-gib instead")
    ap.add_argument("--out", default="benchmarks/results/nystrom.json")
    a = ap.parse_args()
    if a.mnist:
        from ntk_ode.data import mnist, to_sphere

        x_all, labels = mnist(a.mnist, "train")
        x_all = to_sphere(np.asarray(x_all, float)) * np.sqrt(x_all.shape[1])
        y_all = np.where(np.asarray(labels) % 2 == 0, 1.0, -1.0)
        n = min(a.n, x_all.shape[0] - a.test)
        x, y, x_te, y_te = x_all[:n], y_all[:n], x_all[n : n + a.test], y_all[n : n + a.test]
    else:
        x_all, y_all = teacher(a.n + a.test, a.d, seed=0, noise=0.1)
        x_all = x_all * np.sqrt(a.d)
        x, y, x_te, y_te = x_all[: a.n], y_all[: a.n], x_all[a.n :], y_all[a.n :]
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the data's own peak
    model = no.NeuralODE("erf")
    t0 = time.perf_counter()
    block, err = no.predict.engine_blocks(model, x_all, depth=a.depth)
    t_table = time.perf_counter() - t0
    t0 = time.perf_counter()
    cache = int(a.cache_gib * 2**30)
    cache_dir = None if a.recompute else a.cache_dir
    r = no.predict.nystrom_solve(
        block, x, y, centres=a.m, ridge=a.ridge * len(y), exact_max=0, cache_bytes=cache, cache_dir=cache_dir
    )
    t_solve = time.perf_counter() - t0
    f = block(x_te, x[r.centres]) @ r.alpha
    row = {
        "N": len(y),
        "M": a.m,
        "d": x.shape[1],
        "depth": a.depth,
        "data": "MNIST parity" if a.mnist else "teacher",
        "time_interpolant_s": t_table,
        "time_solve_s": t_solve,
        "iterations": r.iterations,
        "K_nM_gib": len(y) * a.m * 8 / 2**30,
        "blocks": r.storage,
        "cache_dir": cache_dir,
        "relative_residual": float(r.residuals[-1]),
        "interpolant_error": err,
        "test_mse": float(np.mean((f - y_te) ** 2)),
        "test_mse_of_zero": float(np.mean(y_te**2)),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_rss_of_the_data_gib": rss_data,
    }
    for k, v in row.items():
        print(f"{k:20s} {v}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"rows": [row], "jax": jax.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
