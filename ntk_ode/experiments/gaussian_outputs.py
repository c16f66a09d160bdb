"""E9: outputs at initialization become Gaussian with covariance NNGP as the width grows."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import NeuralODE, Solver, kernel_fn
from ..data import digits
from ..model import check_solve, hyper_jit
from .common import Cells, Preset, figure, loglog, save_results, savefig


@dataclasses.dataclass
class GaussianConfig(Preset):
    """E9: outputs at initialization against the NNGP; quick and full presets."""

    activation: str = "softplus"
    widths: tuple = (4, 16, 64, 256)
    n_seeds: int = 400
    n_inputs: int = 3
    seed: int = 0

    FULL: ClassVar[dict] = dict(widths=(4, 16, 64, 256, 1024), n_seeds=4000)


@hyper_jit
def _outputs(model, keys, x, width, solver):
    def one(k):
        p = model.init(k, x.shape[1], width, x.dtype)
        return model.forward(p, x, None, solver)

    f, ok = jax.lax.map(one, keys, batch_size=64)
    return check_solve(f, ok, solver, "E9 outputs")


def _ks_normal(z):
    """Kolmogorov-Smirnov distance of a sample from N(0, 1)."""
    from scipy.stats import norm

    z = np.sort(z)
    cdf = norm.cdf(z)
    n = z.size
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def run(cfg: GaussianConfig, out: str, name: str = "E9") -> dict:
    """Run E9 (resumable cells) and write the results file; returns the results."""
    t0 = time.perf_counter()
    x, _ = digits((0, 1), n=cfg.n_inputs, seed=cfg.seed)
    model = NeuralODE(cfg.activation)
    nngp = np.asarray(kernel_fn(model)(x, get="nngp"))
    cells = Cells(os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(cfg.widths))
    res: dict[str, Any] = {
        "widths": list(cfg.widths),
        "nngp": nngp,
        "cov_rel_error": [],
        "ks": [],
        "kurtosis_excess": [],
        "ks_noise_level": 1.36 / math.sqrt(cfg.n_seeds),
        "n_seeds": cfg.n_seeds,
    }
    for w in cfg.widths:

        def cell(w=w):
            keys = jax.random.split(jax.random.PRNGKey(cfg.seed + w), cfg.n_seeds)
            f = np.asarray(_outputs(model, keys, jnp.asarray(x), w, Solver(rtol=1e-8, atol=1e-8)))
            C = f.T @ f / f.shape[0]
            z = f[:, 0] / math.sqrt(nngp[0, 0])
            return {
                "cov_rel_error": float(np.linalg.norm(C - nngp) / np.linalg.norm(nngp)),
                "ks": _ks_normal(z),
                "kurtosis_excess": float(np.mean(z**4) / np.mean(z**2) ** 2 - 3.0),
            }

        c = cells.get(f"width={w}", cell)
        for k in ("cov_rel_error", "ks", "kurtosis_excess"):
            res[k].append(c[k])
    save_results(out, name, cfg, res, t0)
    return res


def plot(res: dict, out: str, name: str = "E9") -> None:
    """Plot E9 into ``out``."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    n = res.get("n_seeds") or round((1.36 / res["ks_noise_level"]) ** 2)
    loglog(axes[0], res["widths"], res["cov_rel_error"], r"$\|C_n - K_{\mathrm{NNGP}}\| / \|K_{\mathrm{NNGP}}\|$")
    loglog(
        axes[0],
        res["widths"],
        np.abs(res["kurtosis_excess"]),
        r"$|$excess kurtosis of $f(x_1)|$",
        theory_slope=-1,
        err=np.full(len(res["widths"]), np.sqrt(24.0 / n)),
    )
    axes[0].axhline(np.sqrt(24.0 / n), color="0.4", ls=":", lw=0.8, label="sampling s.e. of the kurtosis")
    axes[0].set(
        xlabel="width $n$",
        ylabel="deviation from the Gaussian limit",
        title=f"{name}: covariance and kurtosis ({n} networks)",
    )
    axes[1].semilogx(res["widths"], res["ks"], "o-", label=r"KS distance to $N(0, K_{\mathrm{NNGP}})$")
    axes[1].axhline(res["ks_noise_level"], color="k", ls="--", lw=0.8, label="95% level for the sample size")
    axes[1].set(xlabel="width $n$", ylabel="KS distance", title="Gaussianity of $f(x_1)$")
    for ax in axes:
        ax.legend(fontsize=7)
    savefig(fig, out, name)
    plt.close(fig)


def summary(res: dict) -> list[str]:
    """E9's KS distance and excess kurtosis of f(x_1) per width.

    Args:
        res: the results.

    Returns:
        One line per width.
    """
    return [
        f"width {n}: KS distance {ks:.3f} (95% level {res['ks_noise_level']:.3f}), excess kurtosis {k:.2f}"
        for n, ks, k in zip(res["widths"], res["ks"], res["kurtosis_excess"])
    ]
