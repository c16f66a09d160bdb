"""The demo (``make demo``, ``ntk-ode demo``): E1, E2 and the spectrum of K_inf in about two minutes.

E1: the same weights in the Neural ODE and in weight-tied ResNets of depth L (gaps ~ 1/L); E2:
the finite-width NTK against K_inf over widths (distance ~ n^(-1/2)); and lambda_0 of K_inf on
bundled digits (docs/theory.md sections 1, 7 and 8).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ntk_ode as no

from ..data import digits
from ..results import atomic_write_json, versions
from ..sweep import fit_slope
from .common import figure, loglog, savefig

__all__ = ["run_demo", "plot_loglog", "plot_spectrum"]


def plot_loglog(
    path: str,
    x: Sequence[float],
    ys: Sequence[Sequence[float]],
    labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str,
    theory_slope: float,
    errs: Sequence[Sequence[float]] | None = None,
    samples: Sequence[Any] | None = None,
) -> None:
    """A log-log plot of curves ``ys`` against ``x``, each with a dashed theory slope beside it.

    Args:
        path: output path without extension.
        x: abscissae.
        ys: curves.
        labels: their labels.
        xlabel: the x-axis label.
        ylabel: the y-axis label.
        title: the title.
        theory_slope: the slope of the reference lines.
        errs: standard errors per curve, or None.
        samples: per-seed values per curve (the slope's standard error goes in the label), or None.
    """

    plt = figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, (y, lab) in enumerate(zip(ys, labels)):
        err = None if errs is None else errs[i]
        loglog(ax, x, y, lab, theory_slope=theory_slope, err=err, samples=None if samples is None else samples[i])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    savefig(fig, os.path.dirname(path), os.path.basename(path))
    plt.close(fig)


def run_demo(out: str, n: int = 100, seed: int = 0, max_width: int = 2048) -> dict:
    """Quick E1 (ODE vs ResNet gaps), E2 (NTK vs width) and the K_inf spectrum on bundled digits.

    Writes ``summary.json``, the ``e1_gaps``, ``e2_width`` and ``kernel_spectrum`` plots and the
    E2 sweep's checkpoint into ``out``, and prints progress and a summary.

    Args:
        out: the output folder (created).
        n: digits (0 vs 1) in the kernel's training set.
        seed: seed of the data subset and the weights.
        max_width: the largest width of E2 (>= 256).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ValueError: ``max_width`` below 256.
    """

    if max_width < 256:
        raise ValueError(f"--max-width must be at least 256, got {max_width}")
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    x, y = digits((0, 1), n=n, seed=seed)
    model = no.NeuralODE("softplus", T=1.0)
    summary: dict[str, Any] = {
        "config": {
            "data": "sklearn digits 0 vs 1, centred, on the unit sphere",
            "n_points": n,
            "activation": "softplus",
            "T": 1.0,
            "seed": seed,
        },
        "versions": versions(),
    }

    # E1: the same weights in the ODE and in ResNets of depth L
    print("[1/3] E1: Neural ODE vs weight-tied ResNet of depth L (softplus, width 256)", flush=True)
    xs = x[:8]
    params = model.init(jax.random.PRNGKey(seed), d=x.shape[1], width=256)
    f = model.apply(params, xs, rtol=1e-12, atol=1e-12)
    g = no.grad(model, params, xs, rtol=1e-12, atol=1e-12)
    Ls = [8, 16, 32, 64, 128, 256]
    out_gap, grad_gap = [], []
    for L in Ls:
        out_gap.append(float(jnp.max(jnp.abs(model.apply(params, xs, depth=L) - f))))
        gL = no.grad(model, params, xs, depth=L, method="backprop")
        grad_gap.append(float(jnp.sqrt(sum(jnp.sum((gL[k] - g[k]) ** 2) for k in "UWv"))))
    s1 = [fit_slope(Ls, out_gap), fit_slope(Ls, grad_gap)]
    summary["E1"] = {
        "L": Ls,
        "output_gap": out_gap,
        "gradient_gap": grad_gap,
        "slope_output": s1[0],
        "slope_gradient": s1[1],
    }
    plot_loglog(
        os.path.join(out, "e1_gaps"),
        Ls,
        [out_gap, grad_gap],
        [r"$\max_i |f^L(x_i) - f(x_i)|$", r"$\|\nabla_\theta f^L - \nabla_\theta f\|$"],
        "depth $L$",
        "gap",
        "E1: ResNet $\\to$ Neural ODE (softplus)",
        -1.0,
    )

    # E2: finite-width NTK -> K_inf
    widths = [w for w in (128, 256, 512, 1024, 2048) if w <= max_width]
    print(f"[2/3] E2: finite-width NTK vs K_inf over widths {widths[0]}..{widths[-1]} (6 seeds each)", flush=True)
    sw = no.width_sweep(
        model,
        xs,
        widths,
        6,
        seed=seed,
        solver=no.Solver(rtol=1e-8, atol=1e-8),
        out=os.path.join(out, "e2_sweep"),
        progress=True,
    )
    summary["E2"] = {
        "widths": sw["widths"].tolist(),
        "mean_rel_distance": sw["mean_dist"].tolist(),
        "slope": sw["slope"],
        "slope_se": sw["slope_se"],
    }
    plot_loglog(
        os.path.join(out, "e2_width"),
        sw["widths"],
        [sw["mean_dist"]],
        [r"$\|\Theta_n - K_\infty\|_F / \|K_\infty\|_F$"],
        "width $n$",
        "relative distance (mean $\\pm$ s.e. over 6 seeds)",
        r"E2: NTK at width $n$ vs $K_\infty$",
        -0.5,
        samples=[sw["dist"]],
    )

    # K_inf on the training set: lambda_0 of Theorem 2
    print(f"[3/3] K_inf on {len(x)} digits: lambda_0 = lambda_min", flush=True)
    t0 = time.perf_counter()
    K, err = no.kernel_fn(model, progress=True)(x, get="ntk", with_error=True)
    ev = np.linalg.eigvalsh(np.asarray(K))
    summary["kernel"] = {
        "lambda_0": float(ev[0]),
        "lambda_max": float(ev[-1]),
        "condition": float(ev[-1] / ev[0]),
        "error_estimate": float(err),
        "time_s": time.perf_counter() - t0,
    }
    plot_spectrum(os.path.join(out, "kernel_spectrum"), ev)
    summary["time_s"] = time.perf_counter() - t_start
    atomic_write_json(os.path.join(out, "summary.json"), summary)

    print("\nsummary")
    print(f"  E1 slope of output gap vs L      {s1[0]:+.3f}   (theory -1)")
    print(f"  E1 slope of gradient gap vs L    {s1[1]:+.3f}   (theory -1)")
    print(
        f"  E2 slope of ||Theta_n - K_inf||  {sw['slope']:+.3f} +- {sw['slope_se']:.3f} (theory -1/2; s.e. over seeds)"
    )
    print(f"  lambda_0 = lambda_min(K_inf)     {ev[0]:.4e}  (lambda_max {ev[-1]:.3e}, est. error {float(err):.1e})")
    print(f"  total time                       {summary['time_s']:.1f} s; results in {out}/")
    return summary


def plot_spectrum(path: str, ev: np.ndarray) -> None:
    """The eigenvalues of K_inf, largest first, on a log scale.

    Args:
        path: output path without extension.
        ev: eigenvalues, ascending.
    """

    plt = figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogy(np.arange(1, ev.size + 1), ev[::-1], "o-", ms=3)
    ax.set(
        xlabel="index $i$",
        ylabel=r"eigenvalue $\lambda_i$ of $K_\infty$",
        title=r"Spectrum of the limiting NTK ($\lambda_0$ = last)",
    )
    savefig(fig, os.path.dirname(path), os.path.basename(path))
    plt.close(fig)
