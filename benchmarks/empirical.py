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
    ap.add_argument(
        "--vs-nt",
        dest="vs_nt",
        action="store_true",
        help="compare with benchmarks/results/nt_timing.npz from tools/nt_oracle/generate.py --timing",
    )
    ap.add_argument("--large", action="store_true", help="only the structured NTK at n=8192, N=256, L=32 (peak memory)")
    ap.add_argument(
        "--symmetric", action="store_true", help="only the structured NTK of one input set: x2=None against x2=x"
    )
    a = ap.parse_args()
    if a.large:
        return large()
    if a.symmetric:
        return symmetric(a.quick)
    if a.vs_nt:
        return vs_neural_tangents()
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
        rows.append(
            {
                "method": method,
                "n": n,
                "N": N,
                "L": L,
                "time_s": t,
                "max_abs_diff_vs_structured": float(np.max(np.abs(K - ref))),
            }
        )
    for r in rows:
        print(
            f"{r['method']:10s} n={n} N={N} L={L}  {r['time_s']:8.3f} s  diff {r['max_abs_diff_vs_structured']:.1e}"
            f"  {r['time_s'] / rows[0]['time_s']:.1f}x the structured method's time"
        )
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "jax": jax.__version__}, f, indent=1)


def vs_neural_tangents():
    """Same parameters (numpy default_rng(0)) and ResNet as tools/nt_oracle/generate.py --timing."""
    path = "benchmarks/results/nt_timing.npz"
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: run tools/nt_oracle/generate.py --timing in the oracle environment")
    nt = np.load(path)
    L = int(nt["L"])
    rng = np.random.default_rng(0)
    n, d, N = 1024, 10, 64
    p = {"U": rng.standard_normal((n, d)), "W": rng.standard_normal((n, n)), "v": rng.standard_normal(n)}
    x = rng.standard_normal((N, d))
    model = no.NeuralODE("softplus")
    K = np.asarray(no.empirical_ntk(model, p, x, depth=L))
    t = time.perf_counter()
    K = np.asarray(no.empirical_ntk(model, p, x, depth=L))
    t = time.perf_counter() - t
    print(f"ntk_ode structured: {t:.3f} s")
    best = None
    for impl in (1, 2, 3):
        if f"time_impl{impl}" in nt:
            ti, Ki = float(nt[f"time_impl{impl}"]), nt[f"ntk_impl{impl}"]
            diff = float(np.max(np.abs(Ki - K)) / np.max(np.abs(K)))
            print(f"neural-tangents implementation {impl}: {ti:.3f} s  (rel. diff {diff:.1e}, ratio {ti / t:.1f}x)")
            best = ti if best is None else min(best, ti)
    if best is not None:
        print(f"structured vs neural-tangents' fastest: {best / t:.1f}x")


def symmetric(quick):
    """The W block of ``empirical_ntk(x)`` from the tiles on and above the diagonal, against
    ``empirical_ntk(x, x)`` (every row), in one run."""
    n, N, L = (64, 256, 32) if quick else (256, 1024, 32)
    model = no.NeuralODE("softplus")
    p = model.init(jax.random.PRNGKey(0), d=10, width=n)
    x = np.random.default_rng(0).standard_normal((N, 10))
    times = {}
    for name, x2 in (("x2=None (symmetric tiles)", None), ("x2=x (all rows)", x)):
        f = lambda: np.asarray(no.empirical_ntk(model, p, x, x2, depth=L))
        f()  # compile
        t = time.perf_counter()
        K = f()
        times[name] = (time.perf_counter() - t, K)
    (t_sym, K_sym), (t_all, K_all) = times.values()
    diff = float(np.max(np.abs(K_sym - K_all)) / np.max(np.abs(K_all)))
    print(
        f"structured n={n} N={N} L={L}: symmetric tiles {t_sym:.2f} s, all rows {t_all:.2f} s "
        f"({t_all / t_sym:.2f}x), max rel. difference {diff:.1e}"
    )


def large():
    import resource

    n, N, L = 8192, 256, 32
    model = no.NeuralODE("softplus")
    p = model.init(jax.random.PRNGKey(0), d=10, width=n)
    x = np.random.default_rng(0).standard_normal((N, 10))
    t = time.perf_counter()
    K = np.asarray(no.empirical_ntk(model, p, x, depth=L))
    t = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"structured n={n} N={N} L={L}: {t:.1f} s (with compilation), peak RSS {peak:.2f} GiB, "
        f"lambda_min {np.linalg.eigvalsh(K)[0]:.3e}"
    )


if __name__ == "__main__":
    main()
