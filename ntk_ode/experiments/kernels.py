"""E5 (time horizon), E6 (quadratic activation), E8 (more activations and data sets): kernels."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, ClassVar

import numpy as np

from .. import NeuralODE, kernel_fn
from ..data import digits, sphere, teacher
from .common import Cells, Preset, figure, save_results, savefig

# ----------------------------------------------------------------------------- E5


@dataclasses.dataclass
class HorizonConfig(Preset):
    """E5: kernels against the horizon T, sigma_w fixed vs sigma_w ~ 1/T."""

    activation: str = "softplus"
    horizons: tuple = (0.25, 0.5, 1.0, 2.0, 4.0)
    n_points: int = 32
    seed: int = 0

    FULL: ClassVar[dict] = dict(horizons=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), n_points=128)


def run_horizon(cfg: HorizonConfig, out: str, name: str = "E5") -> dict:
    """lambda_0 and the condition number of K_inf vs T, sigma_w = 1 fixed vs sigma_w = 1/T."""
    t0 = time.perf_counter()
    x, _ = digits((0, 1), n=cfg.n_points, seed=cfg.seed)
    cells = Cells(os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=2 * len(cfg.horizons))
    res: dict[str, Any] = {"T": list(cfg.horizons)}
    for label, sw in (("fixed", lambda T: 1.0), ("scaled", lambda T: 1.0 / T)):
        rows = []
        for T in cfg.horizons:

            def cell(T=T, sw=sw):
                k = kernel_fn(NeuralODE(cfg.activation, T=T, sigma_w=sw(T)))(x)
                ev = np.linalg.eigvalsh(np.asarray(k.ntk))
                return {
                    "lambda_0": float(ev[0]),
                    "lambda_max": float(ev[-1]),
                    "nngp_diag_mean": float(np.mean(np.diag(np.asarray(k.nngp)))),
                }

            rows.append(cells.get(f"{label} T={T}", cell))
        for key in ("lambda_0", "lambda_max", "nngp_diag_mean"):
            res[f"{key}_{label}"] = [r[key] for r in rows]
    save_results(out, name, cfg, res, t0)
    return res


def plot_horizon(res: dict, out: str, name: str = "E5") -> None:
    """Plot E5 into ``out``."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for label in ("fixed", "scaled"):
        lab = r"$\sigma_w = 1$" if label == "fixed" else r"$\sigma_w = 1/T$"
        axes[0].loglog(res["T"], res[f"lambda_0_{label}"], "o-", label=lab)
        axes[1].loglog(
            res["T"], np.asarray(res[f"lambda_max_{label}"]) / np.asarray(res[f"lambda_0_{label}"]), "o-", label=lab
        )
    axes[0].set(
        xlabel="horizon $T$",
        ylabel=r"$\lambda_0 = \lambda_{\min}(K_\infty)$",
        title=f"{name}: smallest eigenvalue vs horizon",
    )
    axes[1].set(xlabel="horizon $T$", ylabel=r"$\lambda_{\max} / \lambda_0$", title=r"conditioning of $K_\infty$")
    for ax in axes:
        ax.legend(fontsize=7)
    savefig(fig, out, name)
    plt.close(fig)


# ----------------------------------------------------------------------------- E6


@dataclasses.dataclass
class PolynomialConfig(Preset):
    """E6: the quadratic activation and its degenerate kernels."""

    activations: tuple = ("quadratic", "identity", "softplus")
    depths: tuple = (1, 2, 3, None)
    d: int = 3
    n_points: int = 20
    T: float = 0.5
    seed: int = 0

    FULL: ClassVar[dict] = dict(n_points=40)


def run_polynomial(cfg: PolynomialConfig, out: str, name: str = "E6") -> dict:
    """Spectra of K_inf on N > d sphere points: polynomial activations give (near-)singular kernels."""
    t0 = time.perf_counter()
    x = sphere(cfg.n_points, cfg.d, cfg.seed)
    cells = Cells(
        os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(cfg.activations) * len(cfg.depths)
    )
    res: dict[str, Any] = {
        "activations": list(cfg.activations),
        "depths": [str(L) for L in cfg.depths],
        "spectra": {},
        "rel_lambda_min": {},
        "numerical_rank": {},
    }
    for act in cfg.activations:
        for L in cfg.depths:

            def cell(act=act, L=L):
                K = np.asarray(kernel_fn(NeuralODE(act, T=cfg.T), depth=L)(x, get="ntk"))
                return np.linalg.eigvalsh(K)[::-1].tolist()

            ev = np.asarray(cells.get(f"{act} L={L}", cell))
            res["spectra"][f"{act} L={L}"] = ev.tolist()
            res["rel_lambda_min"][f"{act} L={L}"] = float(ev[-1] / ev[0])
            res["numerical_rank"][f"{act} L={L}"] = int(np.sum(ev > 1e-11 * ev[0]))
    save_results(out, name, cfg, res, t0)
    return res


def plot_polynomial(res: dict, out: str, name: str = "E6") -> None:
    """Plot E6 into ``out``."""
    plt = figure()
    fig, axes = plt.subplots(1, len(res["activations"]), figsize=(4 * len(res["activations"]), 3.4), sharey=True)
    for ax, act in zip(np.atleast_1d(axes), res["activations"]):
        for L in res["depths"]:
            ev = np.abs(np.asarray(res["spectra"][f"{act} L={L}"]))
            ax.semilogy(np.arange(1, ev.size + 1), ev / ev[0], ".-", label="ODE" if L == "None" else f"L={L}")
        ax.set(title=f"{name}: {act}", xlabel="index $i$", ylabel=r"$|\lambda_i| / \lambda_{\max}$")
        ax.legend(fontsize=7)
    savefig(fig, out, name)
    plt.close(fig)


# ----------------------------------------------------------------------------- E8


@dataclasses.dataclass
class ActivationsConfig(Preset):
    """E8: lambda_0 of K_inf for several activations and data sets."""

    activations: tuple = ("softplus", "gelu", "silu", "tanh", "erf", "sigmoid", "relu")
    n_points: int = 48
    data_dir: str | None = None  # a folder with MNIST's IDX files: adds MNIST 0/1
    seed: int = 0

    FULL: ClassVar[dict] = dict(n_points=256)


def run_activations(cfg: ActivationsConfig, out: str, name: str = "E8") -> dict:
    """lambda_0 / lambda_max of K_inf for several activations on digits and on a synthetic sphere."""
    t0 = time.perf_counter()
    data = {
        "digits 0/1": digits((0, 1), n=cfg.n_points, seed=cfg.seed)[0],
        "digits 3/8": digits((3, 8), n=cfg.n_points, seed=cfg.seed)[0],
        "sphere d=10": teacher(cfg.n_points, 10, cfg.seed)[0],
    }
    if cfg.data_dir:
        from ..data import binary_task, mnist

        data["MNIST 0/1"] = binary_task(*mnist(cfg.data_dir, "train"), classes=(0, 1), n=cfg.n_points, seed=cfg.seed)[0]
    cells = Cells(
        os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(data) * len(cfg.activations)
    )
    res: dict[str, Any] = {"activations": list(cfg.activations), "datasets": list(data), "rel_lambda_0": {}}
    for ds, x in data.items():
        vals = []
        for act in cfg.activations:

            def cell(act=act, x=x):
                ev = np.linalg.eigvalsh(np.asarray(kernel_fn(NeuralODE(act))(x, get="ntk")))
                return float(ev[0] / ev[-1])

            vals.append(cells.get(f"{ds} {act}", cell))
        res["rel_lambda_0"][ds] = vals
    save_results(out, name, cfg, res, t0)
    return res


def plot_activations(res: dict, out: str, name: str = "E8") -> None:
    """Plot E8 into ``out``."""
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    n = len(res["datasets"])
    idx = np.arange(len(res["activations"]))
    for i, ds in enumerate(res["datasets"]):
        ax.bar(idx + i / (n + 1), res["rel_lambda_0"][ds], width=1 / (n + 1), label=ds)
    ax.set_yscale("log")
    ax.set_xticks(idx + (n - 1) / (2 * (n + 1)), res["activations"])
    ax.set(
        ylabel=r"$\lambda_0 / \lambda_{\max}$ of $K_\infty$", title=f"{name}: conditioning of $K_\\infty$ by activation"
    )
    ax.legend(fontsize=7)
    savefig(fig, out, name)
    plt.close(fig)


def summary_horizon(res: dict) -> list[str]:
    """E5's lambda_0 over the horizons, sigma_w fixed and sigma_w = 1/T.

    Args:
        res: the results.

    Returns:
        The lines.
    """
    fixed, scaled = res["lambda_0_fixed"], res["lambda_0_scaled"]
    return [
        f"sigma_w = 1: lambda_0 from {fixed[0]:.3g} (T = {res['T'][0]:g}) to {fixed[-1]:.3g} (T = {res['T'][-1]:g})",
        f"sigma_w = 1/T: lambda_0 from {min(scaled):.6g} to {max(scaled):.6g} (theory: independent of T)",
    ]


def summary_polynomial(res: dict) -> list[str]:
    """E6's numerical ranks per activation and depth.

    Args:
        res: the results.

    Returns:
        One line per activation.
    """
    ranks = res["numerical_rank"]
    return [
        f"{a}: numerical rank "
        + ", ".join(f"{k.split(' ', 1)[1]} {v}" for k, v in ranks.items() if k.startswith(a + " "))
        for a in res["activations"]
    ]


def summary_activations(res: dict) -> list[str]:
    """E8's smallest and largest lambda_0 / lambda_max per data set, with the activations.

    Args:
        res: the results.

    Returns:
        One line per data set.
    """
    lines = []
    for data, vals in res["rel_lambda_0"].items():
        lo, hi = int(np.argmin(vals)), int(np.argmax(vals))
        acts = res["activations"]
        lines.append(f"{data}: lambda_0 / lambda_max from {vals[lo]:.2g} ({acts[lo]}) to {vals[hi]:.2g} ({acts[hi]})")
    return lines
