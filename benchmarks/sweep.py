"""Width x seed sweep: seeds vmapped through one compiled function vs a Python loop over seeds.

python benchmarks/sweep.py [--quick] [--out benchmarks/results/sweep.json]
"""

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

import ntk_ode as no  # noqa: E402
from ntk_ode.sweep import _blocks_over_seeds  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/sweep.json")
    a = ap.parse_args()
    widths, seeds, L = ((128, 512), 8, 8) if a.quick else ((128, 512, 2048), 16, 16)
    model = no.NeuralODE("softplus")
    x = np.random.default_rng(0).standard_normal((8, 10))
    solver = no.Solver()
    rows = []
    for w in widths:
        keys = jax.random.split(jax.random.PRNGKey(0), seeds)
        f = lambda: _blocks_over_seeds(model, keys, x, w, L, solver, None)
        jax.block_until_ready(f())
        t = time.perf_counter()
        jax.block_until_ready(f())
        t_vmap = time.perf_counter() - t
        g = lambda k: no.empirical_ntk(model, model.init(k, 10, w), x, depth=L)
        jax.block_until_ready(g(keys[0]))
        t = time.perf_counter()
        for k in keys:
            jax.block_until_ready(g(k))
        t_loop = time.perf_counter() - t
        rows.append({"width": w, "seeds": seeds, "L": L, "time_mapped_s": t_vmap, "time_loop_s": t_loop})
        print(
            f"width {w:5d}  {seeds} seeds  mapped {t_vmap:7.3f} s   python loop {t_loop:7.3f} s"
            f"   ratio {t_loop / t_vmap:.2f}"
        )
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"rows": rows, "jax": jax.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
