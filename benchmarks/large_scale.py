"""Kernels at large input norms and large sigma_w T against the same calls at unit scale.

Each call runs in a fresh process (compilation included), side by side with its unit-scale twin
(sigma_w T = 1, |x| / sqrt(d) = 1, same activation and number of inputs), at rtol 1e-8 in
float64, and is stopped after ``--timeout`` seconds. Prints a table and writes JSON.

    python benchmarks/large_scale.py [--timeout 300] [--only NAME] [--out benchmarks/results/large_scale.json]
"""

import argparse
import json
import os
import subprocess
import sys
import time

# name: (activation, sigma_w T, |x| / sqrt(d), inputs, depth); "raw" uses np.arange(10).reshape(2, 5)
CALLS = {
    "softplus raw rows": ("softplus", 1.0, "raw", 2, None),
    "softplus [[4, 5, 6.5]]": ("softplus", 1.0, "465", 1, None),
    "tanh swT=6 |x|=3": ("tanh", 6.0, 3.0, 1, None),
    "tanh swT=4 two inputs": ("tanh", 4.0, 1.0, 2, None),
    "gelu swT=4 two inputs": ("gelu", 4.0, 1.0, 2, None),
    "gelu swT=6 two inputs": ("gelu", 6.0, 1.0, 2, None),
    "softplus swT=6": ("softplus", 6.0, 1.0, 1, None),
    "tanh depth 8 swT=8": ("tanh", 8.0, 1.0, 1, 8),
    "relu swT=4 two inputs": ("relu", 4.0, 1.0, 2, None),
    "relu swT=6 |x|=3": ("relu", 6.0, 3.0, 1, None),
}

CHILD = r"""
import sys, time, json
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
from ntk_ode import NeuralODE, kernel_fn
act, swT, nrm, n, depth = json.loads(sys.argv[1])
if nrm == "raw":
    x = np.arange(10.0).reshape(2, 5)
elif nrm == "465":
    x = np.array([[4.0, 5.0, 6.5]])
else:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 5))
    x *= nrm * np.sqrt(5) / np.linalg.norm(x, axis=1, keepdims=True)
t = time.perf_counter()
k, e = kernel_fn(NeuralODE(act, T=1.0, sigma_w=swT), depth=depth, rtol=1e-8)(x, with_error=True)
dt = time.perf_counter() - t
rel = float(np.max(np.asarray(e.ntk) / np.abs(np.asarray(k.ntk))))
print(json.dumps(dict(seconds=dt, ntk=np.asarray(k.ntk).ravel().tolist(), rel_estimate=rel)))
"""


def run(spec, timeout):
    t = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return dict(seconds=None, wall=time.perf_counter() - t, status=f"stopped after {timeout} s")
    if out.returncode:
        return dict(seconds=None, wall=time.perf_counter() - t, status=out.stderr.strip().splitlines()[-1])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), wall=time.perf_counter() - t, status="ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    ap.add_argument("--only", action="append", help="run only these calls (repeatable)")
    ap.add_argument("--out", default="benchmarks/results/large_scale.json")
    args = ap.parse_args()
    rows = []
    for name, (act, swT, nrm, n, depth) in CALLS.items():
        if args.only and name not in args.only:
            continue
        big = run([act, swT, nrm, n, depth], args.timeout)
        unit = run([act, 1.0, 1.0, n, depth], args.timeout)
        ratio = big["seconds"] / unit["seconds"] if big["seconds"] and unit["seconds"] else None
        rows.append(dict(call=name, large=big, unit=unit, ratio=ratio))
        fmt = lambda r: f"{r['seconds']:.1f} s" if r["seconds"] else r["status"]
        est = f"{big['rel_estimate']:.1e}" if big.get("rel_estimate") is not None else "-"
        print(
            f"{name:26s} large {fmt(big):>22s}  unit {fmt(unit):>10s}  ratio "
            f"{(f'{ratio:.1f}x' if ratio else '-'):>6s}  estimate/|NTK| {est}",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
