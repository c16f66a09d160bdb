"""Finite-width NTK: structured vs jacobian vs ntvp on the weight-tied ResNet (float64, CPU).

    python benchmarks/empirical.py [--quick] [--out benchmarks/results/empirical.json]
"""
import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

import ntk_ode as no  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/empirical.json")
    a = ap.parse_args()
    n, N, L = (256, 16, 16) if a.quick else (1024, 64, 32)
    model = no.NeuralODE("softplus")
    p = model.init(jax.random.PRNGKey(0), d=10, width=n)
    x = np.random.default_rng(0).standard_normal((N, 10))
    rows, ref = [], None
    for method in ("structured", "jacobian", "ntvp"):
        f = lambda: np.asarray(no.empirical_ntk(model, p, x, depth=L, method=method))
        K = f()
        t = time.perf_counter()
        K = f()
        t = time.perf_counter() - t
        ref = K if ref is None else ref
        rows.append({"method": method, "n": n, "N": N, "L": L, "time_s": t,
                     "max_abs_diff_vs_structured": float(np.max(np.abs(K - ref)))})
    for r in rows:
        print(f"{r['method']:10s} n={n} N={N} L={L}  {r['time_s']:8.3f} s  diff {r['max_abs_diff_vs_structured']:.1e}"
              f"  speed-up of structured {r['time_s'] / rows[0]['time_s']:.1f}x")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "jax": jax.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
