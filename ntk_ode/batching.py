"""Tiling, the one batching layer: which tiles of a kernel are computed, in which order, at
which compiled shape.

:func:`tile_starts` lists the tiles (row-major; for a symmetric kernel only those on and above
the diagonal), :func:`pad_rows` pads a block to the one compiled tile shape, and :func:`tiled`
assembles a kernel function tile by tile (in memory, eagerly or under tracing). The kernels on
disk (:mod:`ntk_ode.tiles`) deal the same tiles over the processes of ``jax.distributed``
(:func:`ntk_ode.distributed.split`), and the finite-width NTK (:mod:`ntk_ode.empirical`) and its
structured W block tile with them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._checks import is_traced

__all__ = ["tile_starts", "pad_rows", "tiled"]


def tile_starts(n1: int, n2: int, tile: int, symmetric: bool) -> list[tuple[int, int]]:
    """The tiles' top-left corners in the order they are computed (row-major; for a symmetric
    kernel only the tiles on and above the diagonal).

    Args:
        n1: rows.
        n2: columns.
        tile: tile edge.
        symmetric: only tiles with ``column >= row``.

    Returns:
        ``[(row, column), ...]``.
    """
    return [(i, j) for i in range(0, n1, tile) for j in range(0, n2, tile) if not symmetric or j >= i]


def _padded(a: np.ndarray, tile: int) -> np.ndarray:
    """Rows padded to ``tile`` with copies of the first row (one compiled shape; no zero norms)."""
    if a.shape[0] == tile:
        return a
    return np.concatenate([a, np.repeat(a[:1], tile - a.shape[0], axis=0)])


def pad_rows(a: Any, rows: int) -> Any:
    """``a`` padded to ``rows`` rows with copies of its first row (one compiled shape; a copy of
    a real input, so no zero norms reach a solver). numpy stays numpy, JAX stays JAX.

    Args:
        a: a block (m, ...) with ``m <= rows``.
        rows: the tile's row count.

    Returns:
        The (rows, ...) block.
    """
    if a.shape[0] == rows:
        return a
    xp = np if isinstance(a, np.ndarray) else jnp
    return xp.concatenate([a, xp.repeat(a[:1], rows - a.shape[0], axis=0)])


def tiled(fn: Callable, x1: Any, x2: Any, batch_size: int) -> tuple:
    """Evaluate a kernel ``fn(a, b)`` (an array or a tuple of arrays, each (len(a), len(b))) tile
    by tile over ``x1`` x ``x2`` (``x2=None``: x1 with itself, only tiles on and above the
    diagonal, mirrored). Tiles are padded to ``batch_size`` rows, so one shape is compiled.

    Args:
        fn: the kernel of two input batches.
        x1: inputs (N1, d).
        x2: inputs (N2, d) or None.
        batch_size: rows and columns per tile.

    Returns:
        A tuple of the assembled (N1, N2) arrays (numpy eagerly, JAX under tracing).
    """
    sym = x2 is None
    xb = x1 if sym else x2
    traced = is_traced(x1, xb)
    b = batch_size
    out = None
    done: dict[tuple[int, int], tuple] = {}
    for i, j in tile_starts(x1.shape[0], xb.shape[0], b, sym):
        a, c = x1[i : i + b], xb[j : j + b]
        vals = fn(pad_rows(a, b), pad_rows(c, b))
        vals = vals if isinstance(vals, tuple) else (vals,)
        vals = tuple(v[: a.shape[0], : c.shape[0]] for v in vals)
        if traced:
            done[i, j] = vals
            continue
        if out is None:
            out = tuple(np.empty((x1.shape[0], xb.shape[0]), np.asarray(v).dtype) for v in vals)
        for o, v in zip(out, vals):
            v = np.asarray(v)
            o[i : i + a.shape[0], j : j + c.shape[0]] = v
            if sym and j > i:
                o[j : j + c.shape[0], i : i + a.shape[0]] = v.T
    if not traced:
        assert out is not None
        return out
    n_out = len(next(iter(done.values())))
    starts1, starts2 = range(0, x1.shape[0], b), range(0, xb.shape[0], b)
    block = lambda i, j, k: done[i, j][k] if (i, j) in done else done[j, i][k].T
    return tuple(jnp.block([[block(i, j, k) for j in starts2] for i in starts1]) for k in range(n_out))
