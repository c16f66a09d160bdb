"""Shared machinery of the experiments: presets, resumable cells, results files, plots."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import ClassVar

import numpy as np

from ..sweep import atomic_write_json, fit_slope, versions

__all__ = ["Preset", "Experiment", "Cells", "loglog", "fit_slope", "save_results", "load_results"]


class Preset:
    """Mixin for experiment configs: ``quick()`` is the dataclass default, ``full()`` overrides it
    with the class's ``FULL`` fields; keyword arguments override either."""

    FULL: ClassVar[dict] = {}

    @classmethod
    def quick(cls, **kw):
        return cls(**kw)

    @classmethod
    def full(cls, **kw):
        return cls(**{**cls.FULL, **kw})


class Cells:
    """A JSON file of finished cells: ``get(key, fn)`` computes ``fn()`` once and stores it."""

    def __init__(self, path: str, config: dict):
        # compare configs as JSON sees them (tuples become lists)
        self.path, self.config = path, json.loads(json.dumps(_jsonable(config)))
        self.data = {}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    saved = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{path} is corrupt or partial ({e}); delete it to recompute") from e
            if saved.get("config") == self.config:
                self.data = saved.get("cells", {})

    def get(self, key: str, fn):
        if key not in self.data:
            t = time.perf_counter()
            val = fn()
            self.data[key] = {"value": _jsonable(val), "time_s": time.perf_counter() - t}
            atomic_write_json(self.path, {"config": self.config, "cells": self.data})
        return self.data[key]["value"]


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


@dataclasses.dataclass
class Experiment:
    """Name, title, config class with ``quick()``/``full()``, ``run(cfg, out) -> results``, ``plot``."""

    name: str
    title: str
    config_cls: type
    run: callable
    plot: callable


def save_results(out: str, name: str, config, results: dict, t0: float) -> str:
    path = os.path.join(out, f"{name}.json")
    payload = {"experiment": name, "config": dataclasses.asdict(config), "versions": versions(),
               "time_s": time.perf_counter() - t0, "results": _jsonable(results)}
    atomic_write_json(path, payload)
    arrays = {k: np.asarray(v) for k, v in results.items() if isinstance(v, (list, np.ndarray)) and _numeric(v)}
    if arrays:
        tmp = os.path.join(out, f".{name}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(out, f"{name}.npz"))
    return path


def _numeric(v):
    try:
        a = np.asarray(v, dtype=float)
        return a.size > 0
    except (TypeError, ValueError):
        return False


def load_results(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable results file ({e})") from e
    if "results" not in data or "experiment" not in data:
        raise ValueError(f"{path} is not an ntk_ode results file (missing 'experiment'/'results')")
    return data


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def loglog(ax, x, y, label, theory_slope=None, marker="o-"):
    """Plot y(x) on log-log axes with its fitted slope in the label; optional dashed theory line."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(y)
    s = fit_slope(x[ok], y[ok]) if ok.sum() >= 2 else float("nan")
    line, = ax.loglog(x[ok], y[ok], marker, ms=4, label=f"{label} (slope {s:.2f})")
    if theory_slope is not None and ok.sum() >= 1:
        ax.loglog(x[ok], y[ok][0] * (x[ok] / x[ok][0]) ** theory_slope, "--", color=line.get_color(), lw=0.8, alpha=0.7)
    return s


def savefig(fig, out, name):
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"{name}.{ext}"), dpi=130, bbox_inches="tight")
