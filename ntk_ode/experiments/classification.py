"""E12: 10-class digits by infinite-width kernel regression at data-set scale, per activation and T.

All 1797 bundled 8x8 digits (centred, on the sphere of radius sqrt(64)), a fixed train/test split,
one-vs-rest targets (0.9 for the class, -0.1 otherwise). For each activation and horizon T:

* the NTK and NNGP of the weight-tied ResNet of depth L (the Euler discretization of the Neural
  ODE; exact recursions) on all train and test inputs, written tile by tile to disk
  (:func:`ntk_ode.tiles.kernel_to_disk`) and solved by :func:`ntk_ode.predict.kernel_solve`
  (infinite-time NTK regression, i.e. gradient flow to convergence, and the NNGP posterior mean),
  with the solves' residuals;
* a trained finite-width network of the same architecture with 10 outputs (a readout matrix on
  h_L), full-batch Adam on the same MSE, from the NTK initialisation.

The test accuracy (argmax over the 10 outputs) is reported per cell.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import NeuralODE
from ..data import to_sphere
from ..model import Solver
from ..predict import kernel_solve
from ..tiles import kernel_to_disk
from .common import Cells, Preset, figure, save_results, savefig


@dataclasses.dataclass
class ClassificationConfig(Preset):
    """E12: kernel regression and trained networks on 10-class digits; quick and full presets."""

    activations: tuple = ("relu", "erf")
    Ts: tuple = (1.0,)
    depth: int = 8
    n_train: int = 400
    n_test: int = 300
    ridge: float = 1e-6
    width: int = 256
    train_steps: int = 150
    learning_rate: float = 2e-3
    seed: int = 0

    # all 1797 digits, five activations, three T; networks sized for ~20 min on 2 cores
    FULL: ClassVar[dict] = dict(
        activations=("relu", "erf", "tanh", "softplus", "gelu"),
        Ts=(0.5, 1.0, 2.0),
        n_train=1200,
        n_test=597,
        train_steps=200,
    )


def digits10(
    n_train: int, n_test: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All ten classes of the bundled digits: ``(x_train, y_train, labels_train, x_test, labels_test)``.

    Args:
        n_train: training digits.
        n_test: test digits (n_train + n_test <= 1797).
        seed: the split's permutation.

    Returns:
        Inputs on the sphere of radius 8 (= sqrt(64)), one-vs-rest targets and the labels.
    """
    from sklearn.datasets import load_digits

    ds = load_digits()
    if n_train + n_test > len(ds.target):
        raise ValueError(f"n_train + n_test must be at most {len(ds.target)}, got {n_train + n_test}")
    x = to_sphere(ds.data - ds.data.mean(axis=0)) * 8.0
    order = np.random.default_rng(seed).permutation(len(ds.target))
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    y = np.eye(10)[ds.target] - 0.1
    return x[tr], y[tr], ds.target[tr], x[te], ds.target[te]


def _accuracy(scores, labels) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def _trained(model: NeuralODE, cfg: ClassificationConfig, x, y, x_test, labels_test) -> dict:
    """A width-n network with a (n, 10) readout, full-batch Adam on 1/2 mean squared error."""
    import optax

    key = jax.random.PRNGKey(cfg.seed)
    p = model.init(key, x.shape[1], cfg.width, jnp.float64)
    params = {"U": p["U"], "W": p["W"], "V": jax.random.normal(jax.random.fold_in(key, 7), (cfg.width, 10))}
    solver = Solver.make(None)

    def f(params, x):
        trunk = {"U": params["U"], "W": params["W"], "v": params["V"][:, 0]}
        hT, _ = model.final_state(trunk, x, cfg.depth, solver)
        return (model.sigma_v / np.sqrt(cfg.width)) * model.head_features(hT) @ params["V"]

    loss = lambda params: 0.5 * jnp.mean(jnp.sum((f(params, x) - y) ** 2, axis=1))
    opt = optax.adam(cfg.learning_rate)

    @jax.jit
    def step(params, state):
        val, g = jax.value_and_grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, val

    state = opt.init(params)
    first = float(loss(params))
    for _ in range(cfg.train_steps):
        params, state, val = step(params, state)
    if not np.isfinite(float(val)):
        raise FloatingPointError("E12: training diverged; lower learning_rate")
    return {
        "loss_initial": first,
        "loss_final": float(loss(params)),
        "test_accuracy": _accuracy(np.asarray(f(params, x_test)), labels_test),
        "train_accuracy": _accuracy(np.asarray(f(params, x)), np.argmax(y, axis=1)),
    }


def _cell(act: str, T: float, cfg: ClassificationConfig, out: str) -> dict:
    x, y, _, x_test, labels_test = digits10(cfg.n_train, cfg.n_test, cfg.seed)
    model = NeuralODE(act, T=T)
    both = np.concatenate([x, x_test])
    t0 = time.perf_counter()
    folder = os.path.join(out, f".E12_kernels_{act}_T{T:g}")
    store = kernel_to_disk(model, both, folder=folder, depth=cfg.depth, tile=512, method="zonal")
    t_kernel = time.perf_counter() - t0
    n = cfg.n_train
    row: dict[str, Any] = {"time_kernel_s": t_kernel, "kernel_error": store.error}
    for name in ("ntk", "nngp"):
        k = store.load(name)
        k_tr, k_te = np.asarray(k[:n, :n]), np.asarray(k[n:, :n])
        sol = kernel_solve(k_tr, y, cfg.ridge * float(np.mean(np.diag(k_tr))))
        row[name] = {"test_accuracy": _accuracy(k_te @ sol.alpha, labels_test), "residual": float(sol.residual.max())}
    t0 = time.perf_counter()
    row["network"] = _trained(model, cfg, x, y, x_test, labels_test)
    row["network"]["time_s"] = time.perf_counter() - t0
    return row


def run(cfg: ClassificationConfig, out: str, name: str = "E12") -> dict:
    """Run E12 (resumable cells) and write the results file; returns the results."""
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    cells = Cells(
        os.path.join(out, f".{name}_cells.json"), dataclasses.asdict(cfg), total=len(cfg.activations) * len(cfg.Ts)
    )
    res: dict[str, Any] = {"activations": list(cfg.activations), "Ts": list(cfg.Ts), "cells": {}}
    for act in cfg.activations:
        for T in cfg.Ts:
            key = f"{act} T={T:g}"
            res["cells"][key] = cells.get(key, functools.partial(_cell, act, T, cfg, out))
    res["n_test"] = cfg.n_test
    res["table"] = [
        {
            "activation": key.split()[0],
            "T": float(key.split("=")[1]),
            "ntk": c["ntk"]["test_accuracy"],
            "nngp": c["nngp"]["test_accuracy"],
            "network": c["network"]["test_accuracy"],
        }
        for key, c in res["cells"].items()
    ]
    save_results(out, name, cfg, res, t0)
    return res


def accuracy_se(acc: float, n: int) -> float:
    """The binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` on ``n`` test points.

    Args:
        acc: the accuracy.
        n: the number of test points.

    Returns:
        The standard error.
    """
    return float(np.sqrt(max(acc * (1.0 - acc), 0.0) / n))


KINDS = (("ntk", "NTK regression"), ("nngp", "NNGP posterior mean"), ("network", "trained network"))


def summary(res: dict) -> list[str]:
    """One line per (activation, T): the three test accuracies with their binomial standard errors.

    Args:
        res: E12's results.

    Returns:
        The lines.
    """
    n = int(res.get("n_test", ClassificationConfig.quick().n_test))
    return [
        f"{r['activation']} T={r['T']:g}: "
        + ", ".join(f"{label} {r[k]:.3f} +- {accuracy_se(r[k], n):.3f}" for k, label in KINDS)
        + f" (test accuracy +- binomial s.e., {n} test points)"
        for r in res["table"]
    ]


def plot(res: dict, out: str, name: str = "E12") -> None:
    """Plot E12 into ``out``: test accuracy per activation and T, kernels against networks.

    Dots with +-1 binomial standard error bars (one split, one seed), so an axis that does not
    start at 0 does not exaggerate the differences.
    """
    plt = figure()
    rows = res["table"]
    n = int(res.get("n_test", ClassificationConfig.quick().n_test))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.6))
    pos = np.arange(len(rows))
    for i, (k, label) in enumerate(KINDS):
        acc = np.array([r[k] for r in rows])
        se = np.array([accuracy_se(a, n) for a in acc])
        ax.errorbar(pos + (i - 1) * 0.2, acc, yerr=se, fmt="o", ms=4, capsize=3, label=label)
    ax.set_xticks(pos, [f"{r['activation']}\nT={r['T']:g}" for r in rows], fontsize=7)
    lo = min(min(r[k] - 2 * accuracy_se(r[k], n) for k, _ in KINDS) for r in rows)
    ax.set(
        ylabel="test accuracy (10 classes)",
        ylim=(max(0.0, lo - 0.02), 1.0),
    )
    ax.set_title(f"{name}: digits, infinite width vs trained\n({n} test points; bars: +-1 binomial s.e.)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    savefig(fig, out, name)
    plt.close(fig)
