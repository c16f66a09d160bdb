"""E4: global convergence of gradient descent on digits (Theorem 2), across widths."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, ClassVar

import jax
import numpy as np

from .. import NeuralODE, kernel_fn
from ..data import digits, train_test_split
from ..train import train
from .common import Cells, Preset, figure, fit_slope, loglog, save_results, savefig


@dataclasses.dataclass
class ConvergenceConfig(Preset):
    """E4: gradient descent on digits over widths; quick and full presets."""

    activation: str = "softplus"
    widths: tuple = (256, 1024)
    n_points: int = 96
    steps: int = 300
    record_every: int = 50
    depth: int | None = 4
    classes: tuple = (0, 1)
    data_dir: str | None = None  # a folder with MNIST's IDX files: use MNIST instead of the digits
    seed: int = 0

    FULL: ClassVar[dict] = dict(
        widths=(256, 512, 1024, 2048, 4096), n_points=256, steps=2000, record_every=100, depth=None
    )


def run(cfg: ConvergenceConfig, out: str, name: str = "E4") -> dict:
    """Run E4 (resumable cells) and write its results file; returns the results."""
    t0 = time.perf_counter()
    if cfg.data_dir:
        from ..data import binary_task, mnist

        x, y = binary_task(*mnist(cfg.data_dir, "train"), classes=cfg.classes, n=cfg.n_points, seed=cfg.seed)
    else:
        x, y = digits(cfg.classes, n=cfg.n_points, seed=cfg.seed)
    xtr, ytr, xte, yte = train_test_split(x, y, 0.25, seed=cfg.seed)
    model = NeuralODE(cfg.activation)
    cells = Cells(os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(cfg.widths))
    K = np.asarray(kernel_fn(model, depth=cfg.depth)(xtr, get="ntk"))
    ev = np.linalg.eigvalsh(K)
    res: dict[str, Any] = {
        "lambda_0": float(ev[0]),
        "lambda_max_inf": float(ev[-1]),
        "widths": list(cfg.widths),
        "runs": {},
    }
    for w in cfg.widths:

        def cell(w=w):
            p = model.init(jax.random.PRNGKey(cfg.seed), d=x.shape[1], width=w)
            r = train(
                model,
                p,
                xtr,
                ytr,
                cfg.steps,
                depth=cfg.depth,
                record_every=cfg.record_every,
                x_test=xte,
                y_test=yte,
                lambda_0=float(ev[0]),
            )
            keep = (
                "step",
                "train_loss",
                "test_loss",
                "bound",
                "lambda_min",
                "lambda_max",
                "rel_dist",
                "dist",
                "ntk_rel_change",
                "rel_dist_U",
                "rel_dist_W",
                "rel_dist_v",
            )
            rec = {k: np.asarray(r.records[k]).tolist() for k in keep}
            steps, loss = np.asarray(rec["step"]), np.asarray(rec["train_loss"])
            rate = float(np.exp(np.polyfit(steps, np.log(loss), 1)[0]))
            return {
                "records": rec,
                "learning_rate": r.learning_rate,
                "measured_rate": rate,
                "theory_rate": 1.0 - r.learning_rate * float(ev[0]),
            }

        res["runs"][str(w)] = cells.get(f"width={w}", cell)
    d = [res["runs"][str(w)]["records"]["dist"][-1] for w in cfg.widths]
    res["dist_final"] = d
    res["slope_rel_dist_U_vs_width"] = fit_slope(
        cfg.widths, [res["runs"][str(w)]["records"]["rel_dist_U"][-1] for w in cfg.widths]
    )
    save_results(out, name, cfg, res, t0)
    return res


def plot(res: dict, out: str, name: str = "E4") -> None:
    """Plot E4 into ``out``."""
    plt = figure()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for w in res["widths"]:
        r = res["runs"][str(w)]["records"]
        axes[0].semilogy(r["step"], r["train_loss"], "o-", ms=3, label=f"train n={w}")
        axes[0].semilogy(r["step"], r["test_loss"], "x:", ms=3, label=f"test n={w}")
        axes[1].plot(r["step"], np.asarray(r["lambda_min"]) / r["lambda_min"][0], "o-", ms=3, label=f"n={w}")
    r = res["runs"][str(res["widths"][-1])]["records"]
    axes[0].semilogy(r["step"], r["bound"], "k--", lw=1, label=r"$(1 - \eta\lambda_0)^k L_0$")
    axes[0].set(xlabel="step $k$", ylabel="loss", title=f"{name}: loss ($\\lambda_0$ = {res['lambda_0']:.2e})")
    axes[1].set(xlabel="step $k$", ylabel=r"$\lambda_{\min}(H_k) / \lambda_{\min}(H_0)$", title="NTK during training")
    loglog(
        axes[2],
        res["widths"],
        [res["runs"][str(w)]["records"]["rel_dist_U"][-1] for w in res["widths"]],
        r"$\|U_k - U_0\| / \|U_0\|$",
        theory_slope=-0.5,
    )
    loglog(
        axes[2],
        res["widths"],
        [res["runs"][str(w)]["records"]["ntk_rel_change"][-1] for w in res["widths"]],
        r"$\|H_k - H_0\| / \|H_0\|$",
        theory_slope=-0.5,
    )
    axes[2].set(xlabel="width $n$", ylabel="relative change at the last step", title="lazy training")
    for ax in axes:
        ax.legend(fontsize=6)
    savefig(fig, out, name)
    plt.close(fig)


def summary(res: dict) -> list[str]:
    """E4's per-width loss rate against the theory's bound (1 - eta lambda_0), and the distance slope.

    Args:
        res: the results.

    Returns:
        The lines.
    """
    lines = [f"lambda_0 of K_inf {res['lambda_0']:.3g}"]
    for n, run in res["runs"].items():
        side = "within" if run["measured_rate"] <= run["theory_rate"] else "ABOVE"
        lines.append(
            f"width {n}: loss falls by {run['measured_rate']:.4f} per step, {side} the bound's "
            f"1 - eta lambda_0 = {run['theory_rate']:.10f}"
        )
    lines.append(
        f"relative distance of U from initialisation against width: slope {res['slope_rel_dist_U_vs_width']:.2f}"
    )
    return lines
