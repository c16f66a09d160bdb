"""Work-precision of the infinite-width NTK K_inf (Neural ODE, softplus), float64, 2-core CPU.

Compares three ways to K_inf on the same inputs, all timed after compilation:
  * spectral  - kernel_fn(model): Chebyshev collocation in (t, s), nodes M = 8..24;
  * first-order recursion - kernel_fn(model, depth=L): the exact ResNet kernel K^L_inf used as an
    approximation of K_inf (error ~ c/L);
  * Monte Carlo - mean of finite-width NTKs (width 1024, seeds), for the 1e-2 comparison.
The reference is the spectral solution with 48 nodes. Prints a table and writes JSON.

    python benchmarks/kernels.py [--quick] [--out benchmarks/results/kernels.json]
"""

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

import ntk_ode as no  # noqa: E402
from ntk_ode.data import sphere  # noqa: E402


def timed(fn, repeat=1):
    fn()  # compile
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - t) / repeat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/kernels.json")
    a = ap.parse_args()
    model = no.NeuralODE("softplus")
    rows = []
    rng = np.random.default_rng(0)
    # general inputs (different norms) and equal-norm inputs
    N_gen = 20 if a.quick else 100
    N_eq = 100 if a.quick else 1000
    xg = rng.standard_normal((N_gen, 10)) * rng.uniform(0.5, 1.5, (N_gen, 1))
    xe = sphere(N_eq, 10, seed=1)

    ref = np.asarray(no.kernel_fn(model, nodes=48)(xg, get="ntk"))
    rel = lambda K: float(np.max(np.abs(np.asarray(K) - ref)) / np.max(np.abs(ref)))
    for M in (8, 12, 16, 24):
        K, t = timed(lambda: no.kernel_fn(model, nodes=M)(xg, get="ntk"))
        rows.append({"method": f"spectral M={M}", "N": N_gen, "rel_error": rel(K), "time_s": t})
    K, t = timed(lambda: no.kernel_fn(model)(xg, get="ntk"))
    rows.append({"method": "spectral adaptive (rtol 1e-8)", "N": N_gen, "rel_error": rel(K), "time_s": t})
    Ls = (16, 32, 64) if a.quick else (16, 32, 64, 128, 256)
    rec = []
    for L in Ls:
        K, t = timed(lambda: no.kernel_fn(model, depth=L)(xg[:10], get="ntk"))
        r10 = float(np.max(np.abs(np.asarray(K) - ref[:10, :10])) / np.max(np.abs(ref[:10, :10])))
        # cost scales with the number of pairs: extrapolate to N_gen inputs
        t_full = t * (N_gen * (N_gen + 1) / 2) / 55
        rows.append(
            {
                "method": f"first-order recursion L={L}",
                "N": N_gen,
                "rel_error": r10,
                "time_s": t_full,
                "note": "timed on 10 inputs, scaled by the pair count",
            }
        )
        rec.append((L, r10, t_full))
    # error ~ c/L and time ~ L^2: the depth and time the recursion needs for 1e-4
    Lr, er, tr = (np.array(v) for v in zip(*rec))
    c = np.exp(np.mean(np.log(er * Lr)))
    L_need = c / 1e-4
    t_need = float(np.exp(np.mean(np.log(tr / Lr**2)))) * L_need**2
    rows.append(
        {
            "method": f"first-order recursion, L={L_need:.0f} (extrapolated)",
            "N": N_gen,
            "rel_error": 1e-4,
            "time_s": t_need,
            "note": "error ~ c/L and time ~ L^2 fitted to the rows above",
        }
    )
    K, t = timed(lambda: no.kernel_fn(model)(xe, get="ntk"))
    Kg = np.asarray(no.kernel_fn(model, equal_norm=False)(xe[:40], get="ntk"))
    rows.append(
        {
            "method": "spectral, equal-norm table",
            "N": N_eq,
            "rel_error_vs_general_40": float(np.max(np.abs(np.asarray(K)[:40, :40] - Kg)) / np.max(np.abs(Kg))),
            "time_s": t,
        }
    )
    # Monte Carlo at width 1024
    seeds = 8 if a.quick else 32
    t = time.perf_counter()
    mc = no.monte_carlo_kernels(
        model,
        jax.random.PRNGKey(0),
        xg[:10],
        width=1024,
        n_samples=seeds,
        solver=no.Solver(rtol=1e-6, atol=1e-6),
        quad_nodes=16,
    )
    t = (time.perf_counter() - t) * (N_gen / 10) ** 2
    r10 = float(np.max(np.abs(np.asarray(mc["ntk"][0]) - ref[:10, :10])) / np.max(np.abs(ref[:10, :10])))
    rows.append(
        {
            "method": f"Monte Carlo width 1024 x {seeds} seeds",
            "N": N_gen,
            "rel_error": r10,
            "time_s": t,
            "note": "timed on 10 inputs (with compilation), scaled by N^2",
        }
    )
    # Monte Carlo error ~ 1/sqrt(seeds) (fluctuations) + O(1/width) bias: seeds needed for 1e-2
    need = (r10 / 1e-2) ** 2
    if need > 1:  # (when the measured row is already below 1e-2 there is nothing to extrapolate)
        rows.append(
            {
                "method": f"Monte Carlo width 1024, {seeds * need:.0f} seeds (extrapolated)",
                "N": N_gen,
                "rel_error": 1e-2,
                "time_s": t * need,
                "note": "error ~ seeds^-1/2 from the row above",
            }
        )
    width = max(len(r["method"]) for r in rows)
    print(f"{'method':{width}s} {'N':>5s} {'rel. error':>11s} {'time [s]':>9s}  how")
    for r in rows:
        e = r.get("rel_error", r.get("rel_error_vs_general_40"))
        how = "extrapolated" if "extrapolated" in r["method"] else r.get("note", "measured")
        print(f"{r['method']:{width}s} {r['N']:5d} {e:11.2e} {r['time_s']:9.3f}  {how}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}, f, indent=1)


if __name__ == "__main__":
    main()
