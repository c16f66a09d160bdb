"""Continuous adjoint vs backprop through the solver: gradient error vs time, per solver; and
backprop's per-example gradients (one vmapped reverse pass per example) against ``jacrev`` of the
batched forward map, as N grows.

python benchmarks/gradients.py [--quick] [--out benchmarks/results/gradients.json]
"""

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ntk_ode as no  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/gradients.json")
    a = ap.parse_args()
    n, N = (64, 8) if a.quick else (256, 16)
    model = no.NeuralODE("softplus", T=1.0)
    p = model.init(jax.random.PRNGKey(0), d=10, width=n)
    x = np.random.default_rng(0).standard_normal((N, 10))
    ref = no.grad(model, p, x, solver=no.Solver(rtol=1e-13, atol=1e-13, max_steps=100000))
    norm = float(jnp.sqrt(sum(jnp.sum(ref[k] ** 2) for k in "UWv")))
    rows = []
    for solver in ("dopri5", "tsit5", "dopri8"):
        for tol in (1e-4, 1e-7, 1e-10):
            for method in ("adjoint", "backprop"):
                s = no.Solver(solver, rtol=tol, atol=tol, max_steps=100000)
                f = lambda: no.grad(model, p, x, method=method, solver=s)
                g = f()
                t = time.perf_counter()
                g = jax.block_until_ready(f())
                t = time.perf_counter() - t
                err = float(jnp.sqrt(sum(jnp.sum((g[k] - ref[k]) ** 2) for k in "UWv"))) / norm
                rows.append({"solver": solver, "tol": tol, "method": method, "rel_error": err, "time_s": t})
                print(f"{solver:7s} tol={tol:.0e} {method:9s} rel.error {err:.2e}  {t:7.3f} s", flush=True)
    scaling = per_example_scaling(model, n, (8, 32) if a.quick else (16, 64, 256))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"n": n, "N": N, "rows": rows, "per_example": scaling, "jax": jax.__version__}, fh, indent=1)


def timed(f):
    jax.block_until_ready(f())  # compile
    t = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, time.perf_counter() - t


def per_example_scaling(model, n, sizes):
    """Per-example backprop gradients at several N: ``no.grad(method="backprop")`` against
    ``jacrev`` of the batched forward map (dopri5, rtol = atol = 1e-7)."""
    solver = no.Solver("dopri5", rtol=1e-7, atol=1e-7, max_steps=100000)
    p = model.init(jax.random.PRNGKey(0), d=10, width=n)
    jac = jax.jit(lambda p, x: jax.jacrev(lambda q: model.forward(q, x, None, solver), has_aux=True)(p)[0])
    rows = []
    for N in sizes:
        x = jnp.asarray(np.random.default_rng(1).standard_normal((N, 10)))
        g, t_vmap = timed(lambda: no.grad(model, p, x, method="backprop", solver=solver))
        j, t_jac = timed(lambda: jac(p, x))
        diff = max(float(jnp.max(jnp.abs(g[k] - j[k])) / jnp.max(jnp.abs(j[k]))) for k in "UWv")
        rows.append({"N": N, "vmap_s": t_vmap, "jacrev_s": t_jac, "max_rel_diff": diff})
        print(
            f"N={N:4d} per-example backprop {t_vmap:7.3f} s, jacrev {t_jac:7.3f} s "
            f"({t_jac / t_vmap:.1f}x), max rel. difference {diff:.1e}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
