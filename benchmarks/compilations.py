"""Compilations and time per new hyperparameter setting of kernel_fn and of the finite-width model.

    python benchmarks/compilations.py [--out results/bench]

For each activation and depth: the first model (sigma_w = T = 1), then new (sigma_w, T)
settings of the same activation and depth. XLA compilations are counted with jax.monitoring
(event ``/jax/core/compile/backend_compile_duration``); the time is the wall clock of the whole
call, compilation included. Runs against whatever ``ntk_ode`` is importable, so an older
checkout can be measured with ``PYTHONPATH=OLD_CHECKOUT python benchmarks/compilations.py``.
Prints a table and writes ``compilations.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np

import ntk_ode as no

_COMPILES = [0]


def _listener(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)

SETTINGS = [(1.0, 1.0), (1.3, 1.0), (0.8, 1.5), (1.1, 0.7), (1.6, 0.9)]


def measure(activation: str, depth, x) -> list[dict]:
    rows = []
    for sigma_w, T in SETTINGS:
        model = no.NeuralODE(activation, sigma_w=sigma_w, T=T)
        c0, t0 = _COMPILES[0], time.perf_counter()
        k = no.kernel_fn(model, depth)(x, get="ntk")
        np.asarray(k)
        rows.append(dict(sigma_w=sigma_w, T=T, compilations=_COMPILES[0] - c0, seconds=time.perf_counter() - t0))
    return rows


def finite_width(x, width: int = 32) -> dict:
    """Compilations of the finite-width model per new setting: apply (ODE and depth 8), grad
    (adjoint) and empirical_ntk, for the first model and then each new setting."""
    calls = {
        "apply ODE": lambda m, p: m.apply(p, x),
        "apply depth 8": lambda m, p: m.apply(p, x, depth=8),
        "grad (adjoint)": lambda m, p: no.grad(m, p, x),
        "empirical_ntk": lambda m, p: no.empirical_ntk(m, p, x),
    }
    params = no.NeuralODE("tanh").init(jax.random.PRNGKey(0), x.shape[1], width)
    res = {}
    for name, f in calls.items():
        rows = []
        for sigma_w, T in SETTINGS:
            model = no.NeuralODE("tanh", sigma_w=sigma_w, T=T)
            c0, t0 = _COMPILES[0], time.perf_counter()
            jax.block_until_ready(f(model, params))
            rows.append(dict(compilations=_COMPILES[0] - c0, seconds=time.perf_counter() - t0))
        res[name] = rows
        new = rows[1:]
        print(
            f"{name:>16} (tanh, width {width}) | first {rows[0]['compilations']:>3d} compiles "
            f"{rows[0]['seconds']:6.2f} s | new setting {np.mean([r['compilations'] for r in new]):5.1f} compiles "
            f"{np.mean([r['seconds'] for r in new]):6.2f} s"
        )
    return res


def vmapped_grid(x, side: int = 8) -> dict:
    """One setting against a vmapped grid of side^2 (sigma_w, T) settings of the differentiable
    kernels (erf and tanh ODE, 24 nodes, 64 terms), warm (after compilation), best of 3."""
    from ntk_ode import hyper

    res = {}
    for act in ("erf", "tanh"):
        model = no.NeuralODE(act)
        tk = hyper.traceable_kernel_fn(model)
        h0 = hyper.hyperparameters(model)
        one = jax.jit(lambda h: tk(h, x, get="ntk"))
        sw, T = np.meshgrid(np.linspace(0.5, 2.0, side), np.linspace(0.5, 2.0, side))
        grid = {k: np.full(side * side, float(v)) for k, v in h0.items()}
        grid["sigma_w"], grid["T"] = sw.ravel(), T.ravel()
        many = jax.jit(jax.vmap(lambda h: tk(h, x, get="ntk")))

        def best(f, a):
            f(a).block_until_ready()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                f(a).block_until_ready()
                ts.append(time.perf_counter() - t0)
            return min(ts)

        t1, tn = best(one, h0), best(many, grid)
        res[act] = dict(settings=side * side, one_s=t1, grid_s=tn, ratio=tn / t1)
        print(
            f"{act:>10} vmapped grid of {side * side} (sigma_w, T): {tn:.3f} s vs one setting {t1:.3f} s "
            f"({tn / t1:.1f}x)"
        )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--activations", nargs="+", default=["erf", "tanh"])
    args = ap.parse_args()
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (8, 5)))
    out = {"ntk_ode": os.path.dirname(no.__file__), "N": 8, "d": 5, "rows": {}}
    print(f"ntk_ode from {out['ntk_ode']}; 8 inputs in d = 5, kernel_fn(model, depth)(x, get='ntk')")
    head = f"{'activation':>10} {'depth':>5} | {'first: compiles':>15} {'s':>6} | {'new: compiles':>13} {'s':>6}"
    print(head)
    for act in args.activations:
        for depth in (None, 8):
            rows = measure(act, depth, x)
            out["rows"][f"{act} depth={depth}"] = rows
            new = rows[1:]
            print(
                f"{act:>10} {str(depth):>5} | {rows[0]['compilations']:>15d} {rows[0]['seconds']:>6.2f} | "
                f"{np.mean([r['compilations'] for r in new]):>13.1f} {np.mean([r['seconds'] for r in new]):>6.2f}"
            )
    out["finite_width"] = finite_width(x)
    if hasattr(no.hyper, "traceable_kernel_fn"):
        out["vmapped_grid"] = vmapped_grid(x)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compilations.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
