"""kernel_fn speed of two checkouts side by side in one run (fresh process per call, compilation
included, alternating, best of --repeat), on the docs/benchmarks.md rows: N = 100 general inputs
and N = 1000 equal-norm inputs (softplus, T = 1, d = 8, float64, default rtol 1e-8), and with
--table the N = 8000 (norm, norm, angle) table row (softplus ODE, d = 10, norms in
[0.5, 2] sqrt(d), kernel_fn(table=True)), and with --disk a store of N = 4000 equal-norm inputs
in d = 64 (erf ODE, zonal tiles of 1024, checksums included in the new checkout).

    git worktree add /tmp/ntk_ode_old <revision>
    python benchmarks/kernel_speed_vs.py /tmp/ntk_ode_old . [--table]
"""

import argparse
import os
import subprocess
import sys

CODE = r"""
import sys, time, jax, numpy as np
jax.config.update("jax_enable_x64", True)
import ntk_ode as no
rng = np.random.default_rng(0)
table = sys.argv[1] == "table"
if sys.argv[1] == "general":
    X = rng.normal(size=(100, 8))
elif table:
    X = rng.standard_normal((8000, 10))
    X = X / np.linalg.norm(X, axis=1, keepdims=True) * np.sqrt(10) * rng.uniform(0.5, 2.0, (8000, 1))
else:
    X = rng.normal(size=(1000, 8)); X /= np.linalg.norm(X, axis=1, keepdims=True)
t = time.perf_counter()
if sys.argv[1] == "disk":  # equal-norm inputs in d = 64 to a store of zonal tiles (erf ODE)
    import tempfile
    from ntk_ode.tiles import kernel_to_disk
    X = rng.normal(size=(4000, 64)); X /= np.linalg.norm(X, axis=1, keepdims=True)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        kernel_to_disk(no.NeuralODE("erf", T=1.0), X, folder=d + "/k", tile=1024)
else:
    no.kernel_fn(no.NeuralODE("softplus", T=1.0), table=True if table else "auto")(X, get="ntk").block_until_ready()
print(time.perf_counter() - t)
"""


def run(checkout, case):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    out = subprocess.run([sys.executable, "-c", CODE, case], cwd=checkout, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="also the N = 8000 table row (minutes)")
    ap.add_argument("--disk", action="store_true", help="also an N = 4000 store of zonal tiles on disk")
    ap.add_argument("--only", nargs="+", default=None, help="just these cases")
    args = ap.parse_args()
    cases = ["general", "equal_norm"] + (["table"] if args.table else []) + (["disk"] if args.disk else [])
    cases = args.only or cases
    res = {}
    for _ in range(args.repeat):
        for label, path in (("old", args.old), ("new", args.new)):
            for case in cases:
                t = run(path, case)
                res.setdefault((label, case), []).append(t)
                print(f"{label:3s} {case:10s} {t:6.2f} s", flush=True)
    for case in cases:
        o, n = min(res[("old", case)]), min(res[("new", case)])
        print(f"{case:10s}: old {o:.2f} s, new {n:.2f} s, new/old {n / o:.2f}")


if __name__ == "__main__":
    main()
