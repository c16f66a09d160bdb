"""E7: adaptive vs fixed-step solvers: error of outputs and adjoint gradients vs cost."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .. import NeuralODE, Solver, grad
from ..data import digits
from .common import Cells, Preset, figure, save_results, savefig


@dataclasses.dataclass
class SolverConfig(Preset):
    """E7: adaptive vs fixed-step solvers, accuracy against cost."""

    activation: str = "softplus"
    width: int = 128
    n_inputs: int = 8
    T: float = 2.0
    fixed: tuple = ("euler", "heun", "rk4")
    fixed_steps: tuple = (4, 16, 64, 256)
    adaptive: tuple = ("tsit5", "dopri5", "dopri8")
    tolerances: tuple = (1e-4, 1e-7, 1e-10)
    seed: int = 0

    FULL: ClassVar[dict] = dict(
        width=512,
        n_inputs=32,
        fixed_steps=(4, 8, 16, 32, 64, 128, 256, 1024),
        tolerances=(1e-3, 1e-5, 1e-7, 1e-9, 1e-11),
    )


def _timed(fn):
    fn()
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def run(cfg: SolverConfig, out: str, name: str = "E7") -> dict:
    """Run E7 (resumable cells) and write the results file; returns the results."""
    t0 = time.perf_counter()
    x, _ = digits((0, 1), n=cfg.n_inputs, seed=cfg.seed)
    model = NeuralODE(cfg.activation, T=cfg.T)
    p = model.init(jax.random.PRNGKey(cfg.seed), d=x.shape[1], width=cfg.width)
    ref_s = Solver("dopri8", rtol=1e-13, atol=1e-13, max_steps=100000)
    f_ref = model.apply(p, x, solver=ref_s)
    g_ref = grad(model, p, x, solver=ref_s)
    settings = [Solver(s, steps=n) for s in cfg.fixed for n in cfg.fixed_steps]
    settings += [Solver(s, rtol=t, atol=t, max_steps=100000) for s in cfg.adaptive for t in cfg.tolerances]
    cells = Cells(os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(settings))
    rows = []
    for s in settings:

        def cell(s=s):
            f, tf = _timed(lambda: model.apply(p, x, solver=s))
            g, tg = _timed(lambda: grad(model, p, x, solver=s))
            gerr = float(
                jnp.sqrt(sum(jnp.sum((g[k] - g_ref[k]) ** 2) for k in "UWv"))
                / jnp.sqrt(sum(jnp.sum(g_ref[k] ** 2) for k in "UWv"))
            )
            return {
                "solver": s.name,
                "steps": s.steps,
                "tol": s.rtol,
                "output_error": float(jnp.max(jnp.abs(f - f_ref))),
                "gradient_rel_error": gerr,
                "time_forward_s": tf,
                "time_adjoint_s": tg,
            }

        rows.append(cells.get(f"{s.name} steps={s.steps} tol={s.rtol}", cell))
    res: dict[str, Any] = {"rows": rows}
    save_results(out, name, cfg, res, t0)
    return res


def plot(res: dict, out: str, name: str = "E7") -> None:
    """Plot E7 into ``out``."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = sorted({r["solver"] for r in res["rows"]})
    for s in names:
        rs = [r for r in res["rows"] if r["solver"] == s]
        style = "o-" if rs[0]["steps"] else "s--"
        axes[0].loglog([r["time_forward_s"] for r in rs], [max(r["output_error"], 1e-17) for r in rs], style, label=s)
        axes[1].loglog(
            [r["time_adjoint_s"] for r in rs], [max(r["gradient_rel_error"], 1e-17) for r in rs], style, label=s
        )
    axes[0].set(xlabel="time [s]", ylabel=r"$\max_i |f(x_i) - f_{\mathrm{ref}}(x_i)|$", title=f"{name}: forward solve")
    axes[1].set(xlabel="time [s]", ylabel="relative gradient error", title="continuous adjoint")
    for ax in axes:
        ax.legend(fontsize=7)
    savefig(fig, out, name)
    plt.close(fig)


def summary(res: dict) -> list[str]:
    """E7's most accurate forward solve per solver, with its time.

    Args:
        res: the results.

    Returns:
        One line per solver.
    """
    best: dict = {}
    for r in res["rows"]:
        if r["solver"] not in best or r["output_error"] < best[r["solver"]]["output_error"]:
            best[r["solver"]] = r
    return [
        f"{s}: output error {r['output_error']:.1e} "
        + (f"at {r['steps']} steps" if r["steps"] else f"at rtol {r['tol']:g}")
        + f", {1e3 * r['time_forward_s']:.1f} ms forward, {1e3 * r['time_adjoint_s']:.1f} ms adjoint"
        for s, r in sorted(best.items())
    ]
