"""The paper's experiments E1-E9 and beyond (E10-E13): each a config (quick/full presets), run -> results file, plot.

from ntk_ode.experiments import EXPERIMENTS, reproduce
reproduce(["E1", "E2"], out="results", preset="quick")
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Literal

from . import classification, convergence, ensembles, gaps, gaussian_outputs, kernels, solvers, spectral, tying, width
from .common import Experiment, load_results

EXPERIMENTS = {
    "E1": Experiment(
        "E1",
        "Softplus: Neural ODE vs ResNet gaps against depth",
        gaps.GapConfig,
        gaps.run,
        functools.partial(gaps.plot, title="softplus"),
        gaps.summary,
    ),
    "E2": Experiment(
        "E2", "Finite-width NTK vs K_inf against width", width.WidthConfig, width.run, width.plot, width.summary
    ),
    "E3": Experiment(
        "E3",
        "ReLU: gaps against depth, three gradient references",
        gaps.ReluGapConfig,
        functools.partial(gaps.run, name="E3"),
        functools.partial(gaps.plot, name="E3", title="relu"),
        gaps.summary,
    ),
    "E4": Experiment(
        "E4",
        "Global convergence of gradient descent on digits",
        convergence.ConvergenceConfig,
        convergence.run,
        convergence.plot,
        convergence.summary,
    ),
    "E5": Experiment(
        "E5",
        "Time horizon: sigma_w fixed vs sigma_w ~ 1/T",
        kernels.HorizonConfig,
        kernels.run_horizon,
        kernels.plot_horizon,
        kernels.summary_horizon,
    ),
    "E6": Experiment(
        "E6",
        "Quadratic activation: degenerate kernels",
        kernels.PolynomialConfig,
        kernels.run_polynomial,
        kernels.plot_polynomial,
        kernels.summary_polynomial,
    ),
    "E7": Experiment(
        "E7", "Adaptive vs fixed-step solvers", solvers.SolverConfig, solvers.run, solvers.plot, solvers.summary
    ),
    "E8": Experiment(
        "E8",
        "More activations and data sets",
        kernels.ActivationsConfig,
        kernels.run_activations,
        kernels.plot_activations,
        kernels.summary_activations,
    ),
    "E9": Experiment(
        "E9",
        "Gaussian outputs at initialization",
        gaussian_outputs.GaussianConfig,
        gaussian_outputs.run,
        gaussian_outputs.plot,
        gaussian_outputs.summary,
    ),
    "E10": Experiment("E10", "Weight-tied vs untied kernels", tying.TyingConfig, tying.run, tying.plot, tying.summary),
    "E11": Experiment(
        "E11",
        "Spectral decay per activation on the sphere",
        spectral.SpectralConfig,
        spectral.run,
        spectral.plot,
        spectral.summary,
    ),
    "E12": Experiment(
        "E12",
        "10-class digits: kernel regression at scale vs trained networks",
        classification.ClassificationConfig,
        classification.run,
        classification.plot,
        classification.summary,
    ),
    "E13": Experiment(
        "E13",
        "Infinite-ensemble predictions with uncertainty against trained networks",
        ensembles.EnsembleConfig,
        ensembles.run,
        ensembles.plot,
        ensembles.summary,
    ),
}


def reproduce(
    names: Sequence[str],
    out: str = "results",
    preset: Literal["quick", "full"] = "quick",
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run and plot the named experiments. Finished cells are reused (per config).

    Args:
        names: experiment names ("E1".."E13").
        out: the output folder (created if missing).
        preset: "quick" or "full" sizes.
        data_dir: a folder with MNIST's IDX files (E4 and E8 then use MNIST).
        log: where progress lines go.

    Returns:
        ``{name: results}``.

    Raises:
        ValueError: an unknown name or preset.
        FileNotFoundError: ``data_dir`` does not exist.
    """
    import os

    import jax

    jax.config.update("jax_enable_x64", True)
    if preset not in ("quick", "full"):
        raise ValueError(f"preset must be 'quick' or 'full', got {preset!r}")
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)} or 'all'")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder {data_dir!r} does not exist")
    os.makedirs(out, exist_ok=True)
    done, headlines = {}, []
    for n in names:
        e = EXPERIMENTS[n]
        cfg = getattr(e.config_cls, preset)()
        if data_dir and hasattr(cfg, "data_dir"):
            cfg.data_dir = data_dir
        t = time.perf_counter()
        log(f"[{n}] {e.title} ({preset})")
        res = e.run(cfg, out)
        e.plot(res, out)
        lines = e.summary(res) if e.summary else []
        for line in lines:
            log(f"[{n}] {line}")
        seconds = time.perf_counter() - t
        log(f"[{n}] done in {seconds:.1f} s -> {out}/{n}.json, {n}.png")
        headlines.append((n, seconds, lines))
        done[n] = res
    if len(headlines) > 1:  # each experiment's headline again, together, at the end
        log("headlines:")
        for n, seconds, lines in headlines:
            log(f"  {n} ({seconds:.0f} s, {EXPERIMENTS[n].title})")
            for line in lines:
                log(f"    {line}")
    return done


__all__ = ["EXPERIMENTS", "reproduce", "load_results"]
