"""Continuous adjoint vs backprop through the solver: gradient error vs time, per solver.

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
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"n": n, "N": N, "rows": rows, "jax": jax.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
