"""ntk_ode vs torchdiffeq: same weights and inputs; outputs and gradients, then timings.

Needs the optional extra: pip install -e ".[compare]"  (torch 2.13.0 CPU, torchdiffeq).
Both in float64; torchdiffeq uses odeint_adjoint with dopri5 at rtol = atol = 1e-10, ntk_ode its
continuous adjoint with Dopri5 at the same tolerances (both: one forward and one backward solve,
the summed gradient over the batch; ours compiled once beforehand). Agreement target: 1e-6.

    python benchmarks/vs_torchdiffeq.py [--quick] [--out benchmarks/results/vs_torchdiffeq.json]
"""

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ntk_ode as no  # noqa: E402
from ntk_ode.gradients import batch_vjp  # noqa: E402

try:
    import torch
    import torchdiffeq
except ImportError as e:  # pragma: no cover - optional
    raise SystemExit(f"this benchmark needs the 'compare' extra (torch, torchdiffeq): {e}") from e


class TorchODE(torch.nn.Module):
    def __init__(self, U, W, v):
        super().__init__()
        self.U = torch.nn.Parameter(torch.tensor(U))
        self.W = torch.nn.Parameter(torch.tensor(W))
        self.v = torch.nn.Parameter(torch.tensor(v))

    def forward(self, t, h):
        return torch.nn.functional.softplus(h) @ self.W.T / self.W.shape[0] ** 0.5


def torch_grads(U, W, v, x, tol):
    m = TorchODE(U, W, v)
    xt = torch.tensor(x)
    n, d = U.shape
    h0 = xt @ m.U.T / d**0.5
    hT = torchdiffeq.odeint_adjoint(
        m, h0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=tol, atol=tol, method="dopri5", adjoint_params=(m.W,)
    )[-1]
    f = hT @ m.v / n**0.5
    f.sum().backward()
    return f.detach().numpy(), {"U": m.U.grad.numpy(), "W": m.W.grad.numpy(), "v": m.v.grad.numpy()}


@eqx.filter_jit
def _vjp(model, p, x, s):
    # one forward solve and one continuous-adjoint solve, like odeint_adjoint's forward + backward
    return batch_vjp(model, p, x, jnp.ones(x.shape[0]), method="adjoint", solver=s)[0]


def ours(model, p, x, tol):
    s = no.Solver("dopri5", rtol=tol, atol=tol, max_steps=100000)
    g = jax.block_until_ready(_vjp(model, p, x, s))
    return {k: np.asarray(a) for k, a in g.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/vs_torchdiffeq.json")
    a = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    model = no.NeuralODE("softplus")
    tol, N, d = 1e-10, 64, 10
    rows = []
    for n in (256, 512) if a.quick else (256, 512, 1024, 2048):
        rng = np.random.default_rng(n)
        U, W, v = rng.standard_normal((n, d)), rng.standard_normal((n, n)), rng.standard_normal(n)
        x = rng.standard_normal((N, d))
        p = {"U": U, "W": W, "v": v}
        f1 = np.asarray(model.apply(p, x, solver=no.Solver("dopri5", rtol=tol, atol=tol)))
        g1 = ours(model, p, x, tol)  # compile
        t = time.perf_counter()
        g1 = ours(model, p, x, tol)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        f2, g2 = torch_grads(U, W, v, x, tol)
        t_torch = time.perf_counter() - t
        err_f = float(np.max(np.abs(f1 - f2)) / np.max(np.abs(f2)))
        err_g = max(float(np.max(np.abs(g1[k] - g2[k])) / np.max(np.abs(g2[k]))) for k in "UWv")
        rows.append(
            {
                "width": n,
                "N": N,
                "rel_diff_output": err_f,
                "rel_diff_grad": err_g,
                "time_ntk_ode_s": t_ours,
                "time_torchdiffeq_s": t_torch,
            }
        )
        print(
            f"n={n:5d} N={N}  output diff {err_f:.1e}  grad diff {err_g:.1e}  ntk_ode {t_ours:7.3f} s  "
            f"torchdiffeq {t_torch:7.3f} s  ratio {t_torch / t_ours:.1f}x",
            flush=True,
        )
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"rows": rows, "torch": torch.__version__, "jax": jax.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
