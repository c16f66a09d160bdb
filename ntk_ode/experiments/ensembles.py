"""E13: infinite-ensemble predictions with uncertainty against trained finite networks.

1-D regression on the circle (inputs ``sqrt(2) (cos theta, sin theta)``, so ``|x| / sqrt(d) = 1``):
:func:`ntk_ode.predict.gradient_descent_mse_ensemble` gives the mean and variance of an infinite
ensemble of infinitely wide networks trained by gradient descent, at several training times, and
an ensemble of finite-width networks trained the same way from independent initialisations is
laid over it (docs/theory.md section 5). Times count steps of gradient descent, predicted by the
discrete iteration (``discrete=True``), so the comparison has no flow-versus-steps error. The
results report, per time and test point, how many standard errors the trained ensemble's mean
and variance are from the prediction.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import NeuralODE, Solver, kernel_fn
from ..predict import gradient_descent_mse_ensemble
from .common import Cells, Preset, figure, save_results, savefig


@dataclasses.dataclass
class EnsembleConfig(Preset):
    """E13: ensemble predictions against trained networks; quick and full presets."""

    activations: tuple = ("erf", "relu")
    depth: Any = 4  # None: the Neural ODE (finite networks by RK4 with ode_steps steps)
    width: int = 256
    members: int = 64
    n_train: int = 8
    n_test: int = 48
    steps: tuple = (3, 30, 300)
    rate: float = 0.5  # eta lambda_max(NTK) / N (the discrete iteration is stable below 2)
    ode_steps: int = 8
    seed: int = 0

    FULL: ClassVar[dict] = dict(depth=None, width=512, members=128, n_test=96, steps=(3, 30, 300, 3000))


def circle_task(n_train: int, n_test: int, seed: int) -> tuple:
    """Training angles at random, a test grid of angles, inputs on the circle, smooth targets.

    Args:
        n_train: training points.
        n_test: test points (a uniform grid over [-pi, pi)).
        seed: the training angles' seed.

    Returns:
        ``(theta_train, x_train, y_train, theta_test, x_test)``.
    """
    rng = np.random.default_rng(seed)
    th_tr = np.sort(rng.uniform(-math.pi, math.pi, n_train))
    th_te = np.linspace(-math.pi, math.pi, n_test, endpoint=False)
    embed = lambda th: math.sqrt(2.0) * np.stack([np.cos(th), np.sin(th)], axis=1)
    return th_tr, embed(th_tr), np.sin(2 * th_tr) + 0.5 * np.sin(th_tr), th_te, embed(th_te)


def variance_z(sample_var: Any, var: Any, n: int) -> np.ndarray:
    """How many standard deviations a sample variance of ``n`` Gaussian draws is from ``var``.

    ``(n - 1) s^2 / var`` is chi-square with ``k = n - 1`` degrees of freedom, which is skewed for
    small k; its cube root is nearly normal (Wilson and Hilferty 1931), so the score is
    ``((s^2 / var)^(1/3) - (1 - 2 / (9k))) / sqrt(2 / (9k))``.

    Args:
        sample_var: sample variances (ddof=1).
        var: the predicted variances (> 0).
        n: the number of draws per sample variance.

    Returns:
        The scores (standard normal if ``var`` is right and the draws are Gaussian).
    """
    k = n - 1
    ratio = np.asarray(sample_var, float) / np.asarray(var, float)
    return (np.cbrt(ratio) - (1 - 2 / (9 * k))) / np.sqrt(2 / (9 * k))


def trained_outputs(
    apply: Callable[[Any, Any], jax.Array],
    init: Callable[[jax.Array], Any],
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    steps: Sequence[int],
    eta: float,
    keys: jax.Array,
) -> np.ndarray:
    """Test outputs of networks trained by full-batch gradient descent on ``1/(2N) ||f - y||^2``.

    Args:
        apply: ``apply(params, x)``.
        init: ``init(key)`` -> parameters.
        x_train: training inputs.
        y_train: targets (N,).
        x_test: test inputs (M, d).
        steps: increasing step counts at which the outputs are taken (0 allowed).
        eta: the learning rate.
        keys: one PRNG key per member.

    Returns:
        (members, len(steps), M).
    """
    loss = lambda p: 0.5 * jnp.mean((apply(p, x_train) - y_train) ** 2)

    def body(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - eta * g, p, jax.grad(loss)(p)), None

    def member(key):
        p, done, outs = init(key), 0, []
        for s in steps:
            p, _ = jax.lax.scan(body, p, None, length=s - done)
            done = s
            outs.append(apply(p, x_test))
        return jnp.stack(outs)

    return np.asarray(jax.jit(jax.vmap(member))(keys))


def _cell(act: str, cfg: EnsembleConfig) -> dict:
    _, x_tr, y_tr, _, x_te = circle_task(cfg.n_train, cfg.n_test, cfg.seed)
    model = NeuralODE(act)
    kfn = kernel_fn(model, cfg.depth)
    t0 = time.perf_counter()
    lam_max = float(np.linalg.eigvalsh(np.asarray(kfn(x_tr, None, "ntk")))[-1])
    eta = cfg.rate * cfg.n_train / lam_max
    pf = gradient_descent_mse_ensemble(kfn, x_tr, y_tr, learning_rate=eta, discrete=True)
    times = np.asarray(cfg.steps)
    ntk = pf(times, x_te, "ntk", "diagonal")
    post = pf(None, x_te, "nngp", "diagonal")
    t_kernel = time.perf_counter() - t0
    if cfg.depth is None:
        solver = Solver("rk4", steps=cfg.ode_steps)
        apply = lambda p, x: model.apply(p, x, solver=solver)
    else:
        apply = lambda p, x: model.apply(p, x, depth=cfg.depth)
    init = lambda key: model.init(key, x_tr.shape[1], cfg.width)
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed + 1), cfg.members)
    t0 = time.perf_counter()
    out = trained_outputs(apply, init, x_tr, y_tr, x_te, tuple(cfg.steps), eta, keys)
    t_train = time.perf_counter() - t0
    mean, var = out.mean(0), out.var(0, ddof=1)
    pred_var = np.asarray(ntk.covariance)  # standard scores if the prediction is right
    z_mean = (mean - np.asarray(ntk.mean)) / np.sqrt(pred_var / cfg.members)
    z_var = variance_z(var, pred_var, cfg.members)
    return {
        "learning_rate": eta,
        "pred_mean": np.asarray(ntk.mean).tolist(),
        "pred_var": pred_var.tolist(),
        "posterior_mean": np.asarray(post.mean).tolist(),
        "posterior_var": np.asarray(post.covariance).tolist(),
        "ens_mean": mean.tolist(),
        "ens_var": var.tolist(),
        "members_shown": out[:5].tolist(),
        "max_abs_z_mean": np.abs(z_mean).max(axis=1).tolist(),
        "max_abs_z_var": np.abs(z_var).max(axis=1).tolist(),
        "time_kernel_s": t_kernel,
        "time_train_s": t_train,
    }


def run(cfg: EnsembleConfig, out: str, name: str = "E13") -> dict:
    """Run E13 (resumable cells) and write the results file; returns the results."""
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    cells = Cells(os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(cfg.activations))
    th_tr, _, y_tr, th_te, _ = circle_task(cfg.n_train, cfg.n_test, cfg.seed)
    res: dict[str, Any] = {
        "activations": list(cfg.activations),
        "steps": list(cfg.steps),
        "width": cfg.width,
        "members": cfg.members,
        "theta_train": th_tr.tolist(),
        "y_train": y_tr.tolist(),
        "theta_test": th_te.tolist(),
        "cells": {act: cells.get(act, functools.partial(_cell, act, cfg)) for act in cfg.activations},
    }
    save_results(out, name, cfg, res, t0)
    return res


def summary(res: dict) -> list[str]:
    """One line per activation and time: the largest scores of the trained ensemble's mean and variance.

    Args:
        res: E13's results.

    Returns:
        The lines.
    """
    lines = []
    for act, c in res["cells"].items():
        for s, zm, zv in zip(res["steps"], c["max_abs_z_mean"], c["max_abs_z_var"]):
            lines.append(
                f"{act} t={s}: {res['members']} trained networks of width {res['width']}: mean within {zm:.1f} "
                f"standard errors of the prediction, variance within {zv:.1f} (chi-square score; worst test point)"
            )
    return lines


def plot(res: dict, out: str, name: str = "E13") -> None:
    """Plot E13 into ``out``: predicted mean +-2 sd against the trained ensemble, per activation and time."""
    plt = figure()
    acts, steps = res["activations"], res["steps"]
    fig, axes = plt.subplots(len(acts), len(steps), figsize=(3.4 * len(steps), 2.9 * len(acts)), squeeze=False)
    th, th_tr, y_tr = np.asarray(res["theta_test"]), np.asarray(res["theta_train"]), np.asarray(res["y_train"])
    every = max(1, th.size // 16)
    for i, act in enumerate(acts):
        c = res["cells"][act]
        for j, s in enumerate(steps):
            ax = axes[i, j]
            m, sd = np.asarray(c["pred_mean"][j]), np.sqrt(np.maximum(c["pred_var"][j], 0.0))
            ax.fill_between(
                th, m - 2 * sd, m + 2 * sd, color="C0", alpha=0.2, lw=0, label=r"infinite ensemble $\pm 2$ sd"
            )
            ax.plot(th, m, "C0-", lw=1.2, label="infinite ensemble mean")
            for k, member in enumerate(c["members_shown"]):
                ax.plot(th, member[j], "-", color="0.55", lw=0.5, label="trained networks" if k == 0 else None)
            em, esd = np.asarray(c["ens_mean"][j]), np.sqrt(np.asarray(c["ens_var"][j]))
            ax.errorbar(
                th[::every], em[::every], yerr=2 * esd[::every], fmt="o", color="C1", ms=3, capsize=2, lw=0.8,
                label=f"{res['members']} trained: mean $\\pm 2$ sd",
            )  # fmt: skip
            if j == len(steps) - 1:
                ax.plot(th, c["posterior_mean"], "k--", lw=0.8, label="NNGP posterior mean")
            ax.plot(th_tr, y_tr, "kx", ms=6, mew=1.5, label="training points")
            ax.set_title(f"{act}, t = {s} steps", fontsize=9)
            if i == len(acts) - 1:
                ax.set_xlabel(r"angle $\theta$")
            if j == 0:
                ax.set_ylabel("output")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.suptitle(
        f"{name}: gradient descent from random initialisation, width {res['width']} against infinite width",
        fontsize=10,
    )
    savefig(fig, out, name)
    plt.close(fig)
