"""E2: the finite-width NTK converges to K_inf as the width grows (fluctuations ~ n^-1/2)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, ClassVar

import numpy as np

from .. import NeuralODE, Solver, width_sweep
from ..data import digits
from ..sweep import fit_slope, slope_standard_error
from .common import Preset, figure, loglog, save_results, savefig


@dataclasses.dataclass
class WidthConfig(Preset):
    """E2: finite-width NTK against K_inf over widths; quick and full presets."""

    activation: str = "softplus"
    widths: tuple = (128, 256, 512, 1024, 2048)
    n_seeds: int = 8
    n_inputs: int = 8
    depth: int | None = None
    seed: int = 0

    FULL: ClassVar[dict] = dict(widths=(64, 128, 256, 512, 1024, 2048, 4096), n_seeds=16, n_inputs=16)


def run(cfg: WidthConfig, out: str, name: str = "E2") -> dict:
    """Run E2 (a resumable width sweep) and write the results file; returns the results."""
    t0 = time.perf_counter()
    x, _ = digits((0, 1), n=cfg.n_inputs, seed=cfg.seed)
    model = NeuralODE(cfg.activation)
    r = width_sweep(
        model,
        x,
        cfg.widths,
        cfg.n_seeds,
        depth=cfg.depth,
        seed=cfg.seed,
        solver=Solver(rtol=1e-8, atol=1e-8),
        out=os.path.join(out, f".{name}_sweep"),
    )
    res: dict[str, Any] = {
        k: r[k]
        for k in (
            "widths",
            "mean_dist",
            "mean_dist_U",
            "mean_dist_W",
            "mean_dist_v",
            "dist",
            "dist_U",
            "dist_W",
            "dist_v",
            "slope",
        )
    }
    save_results(out, name, cfg, res, t0)
    return res


def plot(res: dict, out: str, name: str = "E2") -> None:
    """Plot E2 into ``out``."""
    plt = figure()
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    loglog(ax, res["widths"], res["mean_dist"], "total", theory_slope=-0.5, samples=res["dist"])
    for b, marker in zip("UWv", ("s:", "^:", "v:")):
        loglog(
            ax, res["widths"], res[f"mean_dist_{b}"], f"${b}$ block", marker=marker, samples=res[f"dist_{b}"], bars=True
        )
    ax.set(
        xlabel="width $n$",
        ylabel=r"$\|\Theta_n - K_\infty\|_F \,/\, \|K_\infty\|_F$",
        title=f"{name}: NTK vs width (mean $\\pm$ s.e. over seeds)",
    )
    ax.legend(fontsize=7)
    savefig(fig, out, name)
    plt.close(fig)


def summary(res: dict) -> list[str]:
    """E2's fitted width slope of the NTK's distance to K_inf, with its standard error (theory -0.5).

    Args:
        res: the results.

    Returns:
        One line.
    """
    slope = fit_slope(res["widths"], res["mean_dist"])
    se = slope_standard_error(res["widths"], np.asarray(res["dist"]))
    return [f"||Theta_n - K_inf|| / ||K_inf|| against width: slope {slope:.2f} +- {se:.2f} (theory -0.5)"]
