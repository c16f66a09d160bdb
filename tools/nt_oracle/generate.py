"""Golden values and timings from neural-tangents 0.6.5 (run in the pinned oracle environment).

    python3 -m venv tools/nt_oracle/.venv
    tools/nt_oracle/.venv/bin/pip install -r tools/nt_oracle/requirements.txt
    tools/nt_oracle/.venv/bin/python tools/nt_oracle/generate.py [--timing]

Writes tests/data/nt_golden.npz:
  * one-hidden-layer networks Dense -> phi -> Dense (NTK parameterization, no bias) with phi in
    relu, erf, gelu (analytic in neural-tangents) and softplus (ElementwiseNumerical, Gauss-Hermite
    of degree 64): NNGP = s2^2 E phi phi, NTK = s2^2 (E phi phi + c E phi' phi'), c = s1^2 x.x'/d;
  * one residual block h1 = h0 + dt s_w W phi(h0) / sqrt(n) (relu and erf): neural-tangents'
    analytic NNGP/NTK, equal to ntk_ode's weight-tied K^{L=1}_inf (tied = untied for one block);
    and the untied two-block network, to show how tying changes the kernel;
  * untied ResNets of depth 6 (relu, erf, gelu) with residual steps T / 6 and sqrt(T / 6).
With --timing: neural-tangents' empirical_ntk_fn (implementations 1, 2, 3) on a plain-JAX weight-tied
ResNet (n = 1024, N = 64, L = 32; parameters from numpy's default_rng(0)) -> benchmarks/results/nt_timing.npz.
"""

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
S1, S2, SW, T = 0.9, 1.1, 1.3, 1.0


def one_hidden(act):
    return stax.serial(
        stax.Dense(64, W_std=S1, parameterization="ntk"), act, stax.Dense(1, W_std=S2, parameterization="ntk")
    )


def res_block(act, dt):
    return stax.serial(
        stax.FanOut(2),
        stax.parallel(stax.serial(act, stax.Dense(64, W_std=dt * SW, parameterization="ntk")), stax.Identity()),
        stax.FanInSum(),
    )


def resnet(act, L, step=None):
    """Untied: every block has its own Dense layer; residual step T / L, or ``step``."""
    layers = [stax.Dense(64, W_std=S1, parameterization="ntk")]
    layers += [res_block(act, T / L if step is None else step) for _ in range(L)]
    layers += [stax.Dense(1, W_std=S2, parameterization="ntk")]
    return stax.serial(*layers)


def golden():
    x = np.random.default_rng(0).standard_normal((5, 4))
    out = {"x": x, "s1": S1, "s2": S2, "sw": SW, "T": T}
    acts = {
        "relu": stax.Relu(),
        "erf": stax.Erf(),
        "gelu": stax.Gelu(),
        "softplus": stax.ElementwiseNumerical(jax.nn.softplus, deg=64),
    }
    for name, act in acts.items():
        k = one_hidden(act)[2](x, None, ("nngp", "ntk"))
        out[f"onehidden_{name}_nngp"], out[f"onehidden_{name}_ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
    for name in ("relu", "erf"):
        for L in (1, 2):
            act = stax.Relu() if name == "relu" else stax.Erf()
            k = resnet(act, L)[2](x, None, ("nngp", "ntk"))
            out[f"resnet{L}_{name}_nngp"], out[f"resnet{L}_{name}_ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
    # untied ResNets of depth 6 with the steps T / L and sqrt(T / L) (ntk_ode.untied)
    for name, act in (("relu", stax.Relu()), ("erf", stax.Erf()), ("gelu", stax.Gelu())):
        for tag, step in (("L", T / 6), ("sqrtL", np.sqrt(T / 6))):
            k = resnet(act, 6, step)[2](x, None, ("nngp", "ntk"))
            out[f"untied6_{tag}_{name}_nngp"], out[f"untied6_{tag}_{name}_ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
    path = os.path.join(ROOT, "tests", "data", "nt_golden.npz")
    np.savez(path, **out)
    print("wrote", path, "with neural-tangents", nt.__version__, "jax", jax.__version__)


def tied_resnet_params(n=1024, d=10, N=64):
    rng = np.random.default_rng(0)
    return (
        {"U": rng.standard_normal((n, d)), "W": rng.standard_normal((n, n)), "v": rng.standard_normal(n)},
        rng.standard_normal((N, d)),
    )


def timing(L=32):
    params, x = tied_resnet_params()
    n, d = params["U"].shape

    def f(p, x):
        h = x @ p["U"].T / np.sqrt(d)
        for _ in range(L):
            h = h + (1.0 / L) / jnp.sqrt(n) * jax.nn.softplus(h) @ p["W"].T
        return (h @ p["v"] / jnp.sqrt(n))[:, None]

    params = jax.tree_util.tree_map(jnp.asarray, params)
    res = {}
    for impl in (1, 2, 3):
        fn = jax.jit(nt.empirical_ntk_fn(f, trace_axes=(-1,), implementation=impl))
        try:
            K = np.asarray(fn(x, None, params))
            t = time.perf_counter()
            K = np.asarray(jax.block_until_ready(fn(x, None, params)))
            res[f"time_impl{impl}"] = time.perf_counter() - t
            res[f"ntk_impl{impl}"] = K
            print(f"implementation {impl}: {res[f'time_impl{impl}']:.3f} s")
        except Exception as e:  # noqa: BLE001 - report and continue
            print(f"implementation {impl} failed: {type(e).__name__}: {e}"[:300])
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", "results", "nt_timing.npz")
    np.savez(path, L=L, **res)
    print("wrote", path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--timing", action="store_true")
    a = ap.parse_args()
    golden()
    if a.timing:
        timing()
