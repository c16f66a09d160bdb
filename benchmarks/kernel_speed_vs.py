"""kernel_fn speed of two checkouts side by side in one run (fresh process per call, compilation
included, alternating, best of --repeat), on the docs/benchmarks.md rows: N = 100 general inputs
and N = 1000 equal-norm inputs (softplus, T = 1, d = 8, float64, default rtol 1e-8).

    git worktree add /tmp/ntk_ode_old <revision>
    python benchmarks/kernel_speed_vs.py /tmp/ntk_ode_old .
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
if sys.argv[1] == "general":
    X = rng.normal(size=(100, 8))
else:
    X = rng.normal(size=(1000, 8)); X /= np.linalg.norm(X, axis=1, keepdims=True)
t = time.perf_counter()
no.kernel_fn(no.NeuralODE("softplus", T=1.0))(X, get="ntk").block_until_ready()
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
    args = ap.parse_args()
    res = {}
    for _ in range(args.repeat):
        for label, path in (("old", args.old), ("new", args.new)):
            for case in ("general", "equal_norm"):
                t = run(path, case)
                res.setdefault((label, case), []).append(t)
                print(f"{label:3s} {case:10s} {t:6.2f} s", flush=True)
    for case in ("general", "equal_norm"):
        o, n = min(res[("old", case)]), min(res[("new", case)])
        print(f"{case:10s}: old {o:.2f} s, new {n:.2f} s, new/old {n / o:.2f}")


if __name__ == "__main__":
    main()
