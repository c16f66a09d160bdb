"""E1 (softplus) and E3 (ReLU): the same weights in the Neural ODE and in ResNets of depth L.

Output gap max_i |f^L(x_i) - f(x_i)| and gradient gap ||grad f^L - grad f|| (all parameters,
all inputs) against L, for several widths; log-log slopes (Prop 2 predicts -1 when phi and
phi' are Lipschitz). E3 measures the ReLU gradient gap against three references for grad f:
fine-step backprop through a deep ResNet, a fixed-step RK4 continuous adjoint, and adaptive
Dopri5 adjoints at several tolerances.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .. import NeuralODE, Solver, grad
from ..data import digits
from .common import Cells, Preset, figure, fit_slope, loglog, save_results, savefig


@dataclasses.dataclass
class GapConfig(Preset):
    """E1: ODE vs ResNet gaps over depths and widths (softplus); quick and full presets."""

    activation: str = "softplus"
    widths: tuple = (64, 256)
    depths: tuple = (8, 16, 32, 64, 128, 256)
    n_inputs: int = 8
    sigma_w: float = 1.0
    T: float = 1.0
    seed: int = 0
    references: tuple = ("dopri8-adjoint-1e-12",)

    FULL: ClassVar[dict] = dict(widths=(64, 256, 1024, 4096), depths=(8, 16, 32, 64, 128, 256, 512, 1024), n_inputs=16)


def _reference(model, p, x, ref: str):
    """grad f by a named reference: '<solver>-adjoint-<tol>', 'rk4-adjoint-<steps>', 'backprop-L<depth>'."""
    if ref.startswith("backprop-L"):
        return grad(model, p, x, depth=int(ref[len("backprop-L") :]), method="backprop")
    name, _, arg = ref.split("-", 2)
    if name in ("rk4", "euler"):
        return grad(model, p, x, method="adjoint", solver=Solver(name, steps=int(arg)))
    return grad(model, p, x, method="adjoint", solver=Solver(name, rtol=float(arg), atol=float(arg), max_steps=100000))


def run(cfg: GapConfig, out: str, name: str = "E1") -> dict:
    """Run E1/E3 (resumable cells) and write the results file; returns the results."""
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    x, _ = digits((0, 1), n=cfg.n_inputs, seed=cfg.seed)
    model = NeuralODE(cfg.activation, T=cfg.T, sigma_w=cfg.sigma_w)
    cells = Cells(os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(cfg.widths))
    res: dict[str, Any] = {
        "depths": list(cfg.depths),
        "widths": list(cfg.widths),
        "output_gap": {},
        "gradient_gap": {},
        "slopes": {},
    }
    fine = Solver("dopri8", rtol=1e-12, atol=1e-12, max_steps=100000)
    for w in cfg.widths:
        p = model.init(jax.random.PRNGKey(cfg.seed), d=x.shape[1], width=w)

        def cell(w=w, p=p):
            f = model.apply(p, x, solver=fine)
            refs = {r: _reference(model, p, x, r) for r in cfg.references}
            og: list[float] = []
            gg: dict[str, list[float]] = {r: [] for r in cfg.references}
            for L in cfg.depths:
                og.append(float(jnp.max(jnp.abs(model.apply(p, x, depth=L) - f))))
                gL = grad(model, p, x, depth=L, method="backprop")
                for r, g in refs.items():
                    gg[r].append(float(jnp.sqrt(sum(jnp.sum((gL[k] - g[k]) ** 2) for k in "UWv"))))
            return {"output_gap": og, "gradient_gap": gg}

        c = cells.get(f"width={w}", cell)
        res["output_gap"][str(w)] = c["output_gap"]
        res["gradient_gap"][str(w)] = c["gradient_gap"]
        res["slopes"][f"output, width {w}"] = fit_slope(cfg.depths, c["output_gap"])
        for r, g in c["gradient_gap"].items():
            res["slopes"][f"gradient vs {r}, width {w}"] = fit_slope(cfg.depths, g)
    save_results(out, name, cfg, res, t0)
    return res


def plot(res: dict, out: str, name: str = "E1", title: str = "softplus") -> None:
    """Plot E1/E3 into ``out``."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for w in res["widths"]:
        loglog(axes[0], res["depths"], res["output_gap"][str(w)], f"n={w}", theory_slope=-1)
        for r, g in res["gradient_gap"][str(w)].items():
            lab = f"n={w}" if len(res["gradient_gap"][str(w)]) == 1 else f"n={w}, ref {r}"
            loglog(axes[1], res["depths"], g, lab, theory_slope=-1)
    axes[0].set(xlabel="depth $L$", ylabel=r"$\max_i |f^L(x_i) - f(x_i)|$", title=f"{name}: output gap ({title})")
    axes[1].set(
        xlabel="depth $L$",
        ylabel=r"$\|\nabla_\theta f^L - \nabla_\theta f\|$",
        title=f"{name}: gradient gap ({title})",
    )
    for ax in axes:
        ax.legend(fontsize=6)
    savefig(fig, out, name)
    plt.close(fig)


@dataclasses.dataclass
class ReluGapConfig(GapConfig):
    """E3: the gaps of E1 for relu, with three gradient references."""

    activation: str = "relu"
    widths: tuple = (256,)
    references: tuple = (
        "backprop-L4096",
        "rk4-adjoint-2048",
        "dopri5-adjoint-1e-4",
        "dopri5-adjoint-1e-6",
        "dopri5-adjoint-1e-8",
    )

    FULL: ClassVar[dict] = dict(
        widths=(256, 1024),
        depths=(8, 16, 32, 64, 128, 256, 512, 1024),
        n_inputs=16,
        references=(
            "backprop-L16384",
            "rk4-adjoint-8192",
            "dopri5-adjoint-1e-4",
            "dopri5-adjoint-1e-6",
            "dopri5-adjoint-1e-8",
            "dopri5-adjoint-1e-10",
        ),
    )


def summary(res: dict) -> list[str]:
    """E1/E3's fitted slopes of the gaps against depth (theory: -1).

    Args:
        res: the results.

    Returns:
        One line per fitted curve.
    """
    return [f"slope against depth, {k}: {v:.2f}" for k, v in res["slopes"].items()]
