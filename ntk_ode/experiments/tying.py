"""E10: weight-tied against untied Neural ODE kernels (docs/theory.md section 12).

On digits, for each activation and each (T, sigma_w): the tied Neural ODE's K_inf, the untied
ResNet's limit with step sqrt(T / L) (the non-trivial untied limit) and with step T / L (which
degenerates to the depth-0 kernel). Reports their relative Frobenius gaps, lambda_0 of each NTK,
the spectra at T = 1, and how fast the untied depth-L kernels reach their limit.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, ClassVar

import numpy as np

from .. import NeuralODE, kernel_fn
from ..data import digits
from ..untied import untied_kernel
from .common import Cells, Preset, figure, save_results, savefig, tidy_log_axes


@dataclasses.dataclass
class TyingConfig(Preset):
    """E10: tied vs untied kernels over T and sigma_w; quick and full presets."""

    activations: tuple = ("erf", "tanh")
    horizons: tuple = (0.5, 1.0, 2.0)
    sigmas: tuple = (0.5, 1.0, 2.0)
    depths: tuple = (4, 16, 64)
    n_points: int = 24
    seed: int = 0

    FULL: ClassVar[dict] = dict(
        activations=("erf", "tanh", "softplus", "relu"),
        horizons=(0.25, 0.5, 1.0, 2.0, 4.0),
        sigmas=(0.25, 0.5, 1.0, 2.0, 3.0),
        depths=(4, 16, 64, 256),
        n_points=64,
    )


def _lambda0(k) -> float:
    return float(np.linalg.eigvalsh(np.asarray(k))[0])


def _gap(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def _compare(act: str, T: float, sw: float, x) -> dict:
    m = NeuralODE(act, T=T, sigma_w=sw)
    tied = kernel_fn(m)(x)
    sq = untied_kernel(m, x, step="1/sqrt(L)")
    lin = untied_kernel(m, x, step="1/L")
    ev = {k: np.linalg.eigvalsh(np.asarray(v.ntk)) for k, v in (("tied", tied), ("untied", sq), ("untied_1L", lin))}
    return {
        "gap_nngp": _gap(tied.nngp, sq.nngp),
        "gap_ntk": _gap(tied.ntk, sq.ntk),
        "gap_ntk_1L": _gap(tied.ntk, lin.ntk),
        "lambda0_tied": float(ev["tied"][0]),
        "lambda0_untied": float(ev["untied"][0]),
        "lambda0_untied_1L": float(ev["untied_1L"][0]),
        "spectrum_tied": ev["tied"][::-1].tolist(),
        "spectrum_untied": ev["untied"][::-1].tolist(),
        "entries_tied": np.asarray(tied.ntk)[np.triu_indices(x.shape[0])].tolist(),
        "entries_untied": np.asarray(sq.ntk)[np.triu_indices(x.shape[0])].tolist(),
    }


def _depth_convergence(act: str, depths, x) -> dict:
    m = NeuralODE(act, T=1.0, sigma_w=1.0)
    lim = np.asarray(untied_kernel(m, x, step="1/sqrt(L)", get="ntk"))
    tied = np.asarray(kernel_fn(m)(x, get="ntk"))
    return {
        "untied": [_gap(lim, untied_kernel(m, x, depth=L, step="1/sqrt(L)", get="ntk")) for L in depths],
        "tied": [_gap(tied, kernel_fn(m, depth=L)(x, get="ntk")) for L in depths],
    }


def run(cfg: TyingConfig, out: str, name: str = "E10") -> dict:
    """Run E10 (resumable cells) and write the results file; returns the results."""
    t0 = time.perf_counter()
    x, _ = digits(n=cfg.n_points, seed=cfg.seed)
    cells = Cells(
        os.path.join(out, f".{name}_cells.json"),
        dataclasses.asdict(cfg),
        total=len(cfg.activations)
        * (len({(float(t), 1.0) for t in cfg.horizons} | {(1.0, float(s)) for s in cfg.sigmas}) + 1),
    )
    res: dict[str, Any] = {
        "activations": list(cfg.activations),
        "T": list(cfg.horizons),
        "sigma_w": list(cfg.sigmas),
        "depths": list(cfg.depths),
        "vs_T": {},
        "vs_sigma_w": {},
        "depth": {},
    }
    for act in cfg.activations:
        # one key per (T, sigma_w), formatted one way: the cell at T = sigma_w = 1 is shared
        key = lambda T, sw: f"{act} T={float(T):g} sw={float(sw):g}"  # noqa: B023 - used at once
        res["vs_T"][act] = [cells.get(key(T, 1.0), functools.partial(_compare, act, T, 1.0, x)) for T in cfg.horizons]
        res["vs_sigma_w"][act] = [
            cells.get(key(1.0, sw), functools.partial(_compare, act, 1.0, sw, x)) for sw in cfg.sigmas
        ]
        res["depth"][act] = cells.get(f"{act} depths", functools.partial(_depth_convergence, act, cfg.depths, x))
    save_results(out, name, cfg, res, t0)
    return res


def plot(res: dict, out: str, name: str = "E10") -> None:
    """Plot E10 into ``out``: lambda_0 and gaps against T and sigma_w, spectra, depth convergence."""
    plt = figure()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, act in enumerate(res["activations"]):
        c = colors[i % len(colors)]
        for col, key, xs, xlabel in ((0, "vs_T", res["T"], "horizon $T$ ($\\sigma_w = 1$)"),):
            rows = res[key][act]
            axes[0, col].loglog(xs, [r["lambda0_tied"] for r in rows], "o-", color=c, label=f"{act} tied")
            axes[0, col].loglog(xs, [r["lambda0_untied"] for r in rows], "s--", color=c, label=f"{act} untied")
            axes[0, col].set(xlabel=xlabel, ylabel=r"$\lambda_0$ of the NTK", title=f"{name}: $\\lambda_0$ vs $T$")
        rows = res["vs_sigma_w"][act]
        axes[0, 1].loglog(res["sigma_w"], [r["lambda0_tied"] for r in rows], "o-", color=c, label=f"{act} tied")
        axes[0, 1].loglog(res["sigma_w"], [r["lambda0_untied"] for r in rows], "s--", color=c, label=f"{act} untied")
        axes[0, 1].set(
            xlabel=r"$\sigma_w$ ($T = 1$)",
            ylabel=r"$\lambda_0$ of the NTK",
            title=r"$\lambda_0$ vs $\sigma_w$",
        )
        # the tied kernel depends on sigma_w T only; the untied one does not, so the two sweeps
        # share the product as abscissa but are drawn apart
        gaps_T = [r["gap_ntk"] for r in res["vs_T"][act]]
        axes[0, 2].loglog(res["T"], gaps_T, "o-", color=c, label=f"{act}: $T$ varied, $\\sigma_w = 1$")
        gaps = [r["gap_ntk"] for r in res["vs_sigma_w"][act]]
        axes[0, 2].loglog(res["sigma_w"], gaps, "^:", color=c, label=f"{act}: $\\sigma_w$ varied, $T = 1$")
        mid = res["vs_T"][act][list(res["T"]).index(1.0)] if 1.0 in res["T"] else res["vs_T"][act][0]
        k = np.arange(1, len(mid["spectrum_tied"]) + 1)
        axes[1, 0].loglog(k, mid["spectrum_tied"], "-", color=c, label=f"{act} tied")
        axes[1, 0].loglog(k, mid["spectrum_untied"], "--", color=c, label=f"{act} untied")
        axes[1, 1].plot(mid["entries_tied"], mid["entries_untied"], ".", color=c, ms=3, label=act)
        d = res["depth"][act]
        axes[1, 2].loglog(res["depths"], d["tied"], "o-", color=c, label=f"{act} tied ResNet")
        axes[1, 2].loglog(res["depths"], d["untied"], "s--", color=c, label=f"{act} untied ResNet")
    gap_label = r"$\|K_{tied} - K_{untied}\|_F / \|K_{tied}\|_F$"
    axes[0, 2].set(xlabel=r"$\sigma_w T$", ylabel=gap_label, title="NTK gap, untied step $\\sqrt{T / L}$")
    axes[1, 0].set(xlabel="index", ylabel="eigenvalue", title="NTK spectra at $T = \\sigma_w = 1$")
    lim = axes[1, 1].get_xlim()
    axes[1, 1].plot(lim, lim, "k:", lw=0.8, label="$y = x$")  # over the plotted entries
    axes[1, 1].set(xlabel="tied NTK entry", ylabel="untied NTK entry", title="entries at $T = \\sigma_w = 1$")
    axes[1, 2].set(xlabel="depth $L$", ylabel="relative gap to own limit", title="depth-$L$ kernels to their limits")
    fig.suptitle(
        f"{name}: weight-tied Neural ODE kernels against the untied ResNet's limit "
        r"(step $\sqrt{T / L}$, $L \to \infty$)",
        fontsize=10,
    )
    for ax in axes.ravel():
        ax.legend(fontsize=6)
        if ax.get_xscale() == "log":
            tidy_log_axes(ax)
    savefig(fig, out, name)
    plt.close(fig)


def summary(res: dict) -> list[str]:
    """E10's relative NTK gap between the tied ODE kernel and the untied limit (step sqrt(T/L)).

    Args:
        res: the results.

    Returns:
        One line per activation.
    """
    return [
        f"{a}: untied vs tied NTK gap "
        + ", ".join(f"{r['gap_ntk']:.2f} at T = {T:g}" for T, r in zip(res["T"], res["vs_T"][a]))
        + " (sigma_w = 1)"
        for a in res["activations"]
    ]
