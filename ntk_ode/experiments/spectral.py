"""E11: spectral decay of the infinite-width NTK per activation (docs/theory.md section 13).

For inputs on the sphere S^{d-1} (radius sqrt(d)): the Gegenbauer eigenvalues mu_k of the NTK with
certified error bounds, fitted decay laws (k^-a against e^-rk), and lambda_min of the Gram
matrix of N random sphere points against what the eigenvalues predict.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, ClassVar

import numpy as np

from .. import NeuralODE, kernel_fn
from ..data import sphere
from ..harmonics import decay_fit, gegenbauer_spectrum, predicted_lambda_min
from .common import Cells, Preset, figure, save_results, savefig


@dataclasses.dataclass
class SpectralConfig(Preset):
    """E11: Gegenbauer spectra per activation and dimension; quick and full presets."""

    activations: tuple = ("relu", "erf", "softplus")
    dims: tuple = (3,)
    k_max: int = 24
    depth: Any = 16  # None: the Neural ODE's K_inf; L: the weight-tied ResNet's exact K^L_inf
    point_counts: tuple = (8, 16, 32)
    seed: int = 0

    FULL: ClassVar[dict] = dict(
        activations=("relu", "erf", "tanh", "softplus", "gelu"),
        dims=(3, 5),
        k_max=40,
        depth=None,
        point_counts=(8, 16, 32, 64, 128),
    )


def _cell(act: str, d: int, cfg: SpectralConfig) -> dict:
    model = NeuralODE(act)
    spec = gegenbauer_spectrum(model, d, cfg.k_max, depth=cfg.depth)
    fit = decay_fit(spec)
    rows = []
    for N in cfg.point_counts:
        x = sphere(N, d, cfg.seed) * math.sqrt(d)
        k = np.asarray(kernel_fn(model, cfg.depth)(x, get="ntk"))
        rows.append({"N": N, "lambda_min": float(np.linalg.eigvalsh(k)[0]), **predicted_lambda_min(spec, N)})
    return {
        "mu": spec.mu.tolist(),
        "error": spec.error.tolist(),
        "multiplicity": spec.multiplicity.tolist(),
        "kernel_error": spec.kernel_error,
        "fit": fit,
        "lambda_min": rows,
    }


def run(cfg: SpectralConfig, out: str, name: str = "E11") -> dict:
    """Run E11 (resumable cells) and write the results file; returns the results."""
    t0 = time.perf_counter()
    cells = Cells(
        os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(cfg.dims) * len(cfg.activations)
    )
    res: dict[str, Any] = {"activations": list(cfg.activations), "dims": list(cfg.dims), "cells": {}}
    for d in cfg.dims:
        for act in cfg.activations:
            res["cells"][f"{act} d={d}"] = cells.get(f"{act} d={d}", functools.partial(_cell, act, d, cfg))
    res["table"] = [
        {
            "activation": key.split()[0],
            "d": int(key.split("=")[1]),
            "power": c["fit"]["power"],
            "power_rms": c["fit"]["power_rms"],
            "rate": c["fit"]["rate"],
            "exp_rms": c["fit"]["exp_rms"],
            "law": "k^-a" if c["fit"]["power_rms"] < c["fit"]["exp_rms"] else "e^-rk",
            "k_resolved": c["fit"]["k_resolved"],
        }
        for key, c in res["cells"].items()
    ]
    save_results(out, name, cfg, res, t0)
    return res


def plot(res: dict, out: str, name: str = "E11") -> None:
    """Plot E11 into ``out``: eigenvalues with error bounds, and lambda_min against N."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (key, c) in enumerate(res["cells"].items()):
        col = colors[i % len(colors)]
        mu, err = np.asarray(c["mu"]), np.asarray(c["error"])
        k = np.arange(mu.size)
        ok = (k >= 1) & (mu > 10 * err)
        f = c["fit"]
        law = f"$k^{{-{f['power']:.1f}}}$" if f["power_rms"] < f["exp_rms"] else f"$e^{{-{f['rate']:.2f}k}}$"
        axes[0].semilogy(k[ok], mu[ok], "o", color=col, ms=3, label=f"{key} ({law})")
        axes[0].semilogy(k, err, ":", color=col, lw=0.8)
        rows = c["lambda_min"]
        Ns = [r["N"] for r in rows]
        axes[1].loglog(Ns, [r["lambda_min"] for r in rows], "o-", color=col, label=f"{key}")
        axes[1].loglog(Ns, [r["rank_N"] for r in rows], "x--", color=col)
        axes[1].loglog(Ns, [r["tail"] for r in rows], "+:", color=col)
    # one legend entry per line style (colours are the activations, as in the left panel)
    axes[1].plot([], [], "o-", color="0.3", label=r"measured $\lambda_{\min}$")
    axes[1].plot([], [], "x--", color="0.3", label=r"$N\mu_{(N)}$")
    axes[1].plot([], [], "+:", color="0.3", label="tail floor")
    axes[0].set(xlabel="degree $k$", ylabel=r"$\mu_k$ (dotted: error bound)", title=f"{name}: Gegenbauer eigenvalues")
    axes[1].set(xlabel="points $N$", ylabel=r"$\lambda_{\min}$ of the NTK", title=r"$\lambda_{\min}$ vs $N$")
    for ax in axes:
        ax.legend(fontsize=6)
    savefig(fig, out, name)
    plt.close(fig)


def summary(res: dict) -> list[str]:
    """E11's fitted decay of the Gegenbauer eigenvalues per activation and dimension.

    Args:
        res: the results.

    Returns:
        One line per cell.
    """
    return [
        f"{cell}: mu_k ~ k^-{c['fit']['power']:.2f} (rms {c['fit']['power_rms']:.2f}) or "
        f"exp(-{c['fit']['rate']:.2f} k) (rms {c['fit']['exp_rms']:.2f})"
        for cell, c in res["cells"].items()
    ]
