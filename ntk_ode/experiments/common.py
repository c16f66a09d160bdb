"""Shared machinery of the experiments: presets, resumable cells, results files, plots."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..results import (
    atomic_write_json,
    atomic_write_npz,
    check_resume,
    config_fingerprint,
    exclusive,
    jsonable,
    log,
    provenance,
    read_json,
)
from ..sweep import fit_slope, slope_standard_error

__all__ = ["Preset", "Experiment", "Cells", "loglog", "fit_slope", "save_results", "load_results"]


class Preset:
    """Mixin for experiment configs: ``quick()`` is the dataclass default, ``full()`` overrides it
    with the class's ``FULL`` fields; keyword arguments override either."""

    FULL: ClassVar[dict] = {}

    @classmethod
    def quick(cls, **kw: Any) -> Any:
        """The quick preset (the dataclass defaults), with ``kw`` overriding fields.

        Args:
            **kw: fields to override.

        Returns:
            A config instance.
        """
        return cls(**kw)

    @classmethod
    def full(cls, **kw: Any) -> Any:
        """The full preset (``FULL`` over the defaults), with ``kw`` overriding fields.

        Args:
            **kw: fields to override.

        Returns:
            A config instance.
        """
        return cls(**{**cls.FULL, **kw})


class Cells:
    """Finished cells of an experiment in a JSON file: ``get(key, fn)`` computes ``fn()`` once.

    Each config has its own file, ``<stem>.<fingerprint of the config>.json`` next to
    ``path``, so runs of different presets in one folder never mix or overwrite each other;
    a file whose stored config differs from the one it is named after is refused (the resume
    policy of :mod:`ntk_ode.results`).

    Progress goes to the ``ntk_ode`` logger: "cell k of n" with the cell's time and, from the
    cells computed so far, an estimate of the time left.

    Args:
        path: ``<folder>/<stem>.json``; the config's fingerprint is inserted before ``.json``.
        config: the experiment's config (JSON-able).
        total: the number of distinct cells the run will ask for (None: not reported).
    """

    def __init__(self, path: str, config: dict, total: int | None = None):
        self.config = jsonable(config)
        self.total = total
        self._seen: list[str] = []
        self._times: list[float] = []
        stem = path[:-5] if path.endswith(".json") else path
        self.path = f"{stem}.{config_fingerprint(self.config)}.json"
        self.data: dict = {}
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(exclusive(self.path))  # held until close() or garbage collection
        if os.path.exists(self.path):
            saved = read_json(self.path, required=("config", "cells"))
            check_resume(self.path, saved["config"], self.config)
            self.data = saved["cells"]

    def close(self) -> None:
        """Release the lock on the cells file (also done when the object is collected)."""
        self._lock.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()

    def get(self, key: str, fn: Callable[[], Any]) -> Any:
        """The value of cell ``key``: stored, or computed by ``fn()`` and stored at once.

        Args:
            key: the cell's name.
            fn: computes its value (JSON-able).

        Returns:
            The value (as JSON stores it: lists for arrays).
        """
        if key not in self._seen:
            self._seen.append(key)
        name = os.path.basename(self.path)
        if key not in self.data:
            log.info("%s: computing cell %s%r", name, self._count(key), key)
            t = time.perf_counter()
            val = fn()
            elapsed = time.perf_counter() - t
            self.data[key] = {"value": jsonable(val), "time_s": elapsed}
            atomic_write_json(self.path, {**provenance(self.config), "cells": self.data})
            self._times.append(elapsed)
            log.info("%s: cell %s%r done in %.1f s%s", name, self._count(key), key, elapsed, self._eta())
        return self.data[key]["value"]

    def _count(self, key: str) -> str:
        """``"k of n "`` for cell ``key`` (``"k "`` when the total is unknown)."""
        k = self._seen.index(key) + 1
        return f"{k} of {self.total} " if self.total else f"{k} "

    def _eta(self) -> str:
        """``"; about S s left"``: the mean time of the cells computed so far times those to come."""
        if not self.total or not self._times:
            return ""
        left = max(self.total - len(self._seen), 0)
        return f"; about {left * sum(self._times) / len(self._times):.0f} s left" if left else "; the last cell"


@dataclasses.dataclass
class Experiment:
    """Name, title, config class with ``quick()``/``full()``, ``run(cfg, out) -> results``, ``plot``,
    and ``summary(results) -> lines``, the headline numbers that ``reproduce`` prints after the
    experiment and, when it ran several, again together at the end."""

    name: str
    title: str
    config_cls: type
    run: Callable[..., dict]
    plot: Callable[..., None]
    summary: Callable[[dict], list[str]] | None = None


def save_results(out: str, name: str, config: Any, results: dict, t0: float) -> str:
    """Write ``<out>/<name>.json`` (provenance + results) and ``<out>/<name>.npz`` (numeric arrays).

    Args:
        out: the output folder (created if missing).
        name: the experiment's name.
        config: its config dataclass.
        results: name -> value.
        t0: ``time.perf_counter()`` at the start (for the timing).

    Returns:
        The JSON file's path.

    Raises:
        OSError: the folder cannot be written.
    """
    path = os.path.join(out, f"{name}.json")
    rec = provenance(dataclasses.asdict(config), time_s=time.perf_counter() - t0)
    atomic_write_json(path, {"experiment": name, **rec, "results": jsonable(results)})
    arrays = {k: np.asarray(v) for k, v in results.items() if isinstance(v, (list, np.ndarray)) and _numeric(v)}
    if arrays:
        atomic_write_npz(os.path.join(out, f"{name}.npz"), arrays, meta={"experiment": name, **rec})
    return path


def _numeric(v):
    try:
        a = np.asarray(v, dtype=float)
        return a.size > 0
    except (TypeError, ValueError):
        return False


def load_results(path: str) -> dict:
    """Read an experiment's results file.

    Args:
        path: ``<out>/<name>.json``.

    Returns:
        The record: ``experiment``, ``config``, ``versions``, ``time_s``, ``results``.

    Raises:
        ResumeError: (a ValueError) the file is unreadable or not an experiment's results file.
    """
    return read_json(path, required=("experiment", "results"))


def figure() -> Any:
    """pyplot with the package's style: constrained layout, grids, small fonts, mathtext labels.

    Returns:
        The ``matplotlib.pyplot`` module (Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "figure.constrained_layout.use": True,
            "legend.fontsize": 7,
            "mathtext.fontset": "dejavusans",
        }
    )
    return plt


def tidy_log_axes(ax: Any) -> None:
    """Readable tick labels on log axes: decades only; 1-2-5 under two decades; 4 plain ticks under one.

    Args:
        ax: matplotlib axes.
    """
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(lim)
        decades = np.log10(hi / lo) if lo > 0 else np.inf
        if decades < 1:  # LogLocator would fall back to crowded linear ticks: take 4 plain ones
            axis.set_major_locator(MaxNLocator(nbins=4))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            axis.set_minor_formatter(NullFormatter())
            continue
        axis.set_major_locator(LogLocator(base=10, numticks=8))
        axis.set_major_formatter(LogFormatterSciNotation())
        if decades < 2:
            axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0), numticks=8))
            axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(np.inf, np.inf)))
        else:
            axis.set_minor_locator(LogLocator(base=10, subs=tuple(float(k) for k in range(2, 10)), numticks=12))
            axis.set_minor_formatter(NullFormatter())


def loglog(
    ax: Any,
    x: Any,
    y: Any,
    label: str,
    theory_slope: float | None = None,
    marker: str = "o-",
    err: Any = None,
    samples: Any = None,
    bars: bool = False,
) -> float:
    """Plot y(x) on log-log axes with its fitted slope in the label; optional dashed theory line.

    The theory line is grey, drawn 1.6x above the first point so that it is not hidden under
    the data, and labelled once per axes.

    Args:
        ax: matplotlib axes.
        x: abscissae.
        y: values (non-positive ones are left out).
        label: legend label.
        theory_slope: slope of a dashed reference line.
        marker: line style.
        err: standard errors of y (drawn as a band of +-1 standard error).
        samples: per-seed values (len(x), seeds) whose means are ``y``: then ``err`` is their
            standard error and the label gives the slope's standard error
            (:func:`ntk_ode.sweep.slope_standard_error`).
        bars: draw the standard errors as error bars instead of a band (for several curves on
            one axes, whose bands would overlap).

    Returns:
        The fitted slope (nan with fewer than two points).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(y)
    s = fit_slope(x[ok], y[ok]) if ok.sum() >= 2 else float("nan")
    text = f"slope {s:.2f}"
    if samples is not None:
        per_seed = np.asarray(samples, float)
        err = seed_error(per_seed)
        if ok.sum() >= 2 and per_seed.shape[-1] >= 2 and np.all(per_seed[ok] > 0):
            text += f" $\\pm$ {slope_standard_error(x[ok], per_seed[ok]):.2f}"
    (line,) = ax.loglog(x[ok], y[ok], marker, ms=4, label=f"{label} ({text})")
    if err is not None:
        e = np.asarray(err, float)[ok]
        lo = np.maximum(y[ok] - e, y[ok] * 1e-3)
        if bars:
            ax.errorbar(x[ok], y[ok], yerr=[y[ok] - lo, e], fmt="none", ecolor=line.get_color(), capsize=2, lw=0.8)
        else:
            ax.fill_between(x[ok], lo, y[ok] + e, color=line.get_color(), alpha=0.2, lw=0)
    if theory_slope is not None and ok.sum() >= 1:
        name = f"theory: slope {theory_slope:g}"
        seen = any(ln.get_label() == name for ln in ax.get_lines())
        ax.loglog(
            x[ok],
            1.6 * y[ok][0] * (x[ok] / x[ok][0]) ** theory_slope,
            "--",
            color="0.35",
            lw=1.0,
            label="_nolegend_" if seen else name,
        )
    return s


def seed_error(per_seed: Any) -> np.ndarray:
    """Standard error of the mean over the last axis (seeds).

    Args:
        per_seed: values (..., seeds), at least two seeds.

    Returns:
        ``std(ddof=1) / sqrt(seeds)`` over the last axis.
    """
    a = np.asarray(per_seed, float)
    return a.std(axis=-1, ddof=1) / np.sqrt(a.shape[-1]) if a.shape[-1] > 1 else np.zeros(a.shape[:-1])


def savefig(fig: Any, out: str, name: str) -> None:
    """Write ``<out>/<name>.png`` and ``.pdf`` after tidying every log axis.

    Args:
        fig: the figure.
        out: the folder.
        name: the file stem.
    """
    for ax in fig.axes:
        tidy_log_axes(ax)
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"{name}.{ext}"), dpi=130)
