"""Time grids of the infinite-width kernel equations (docs/theory.md section 3).

A :class:`Grid` holds time nodes on [0, T] with the forward and backward integration operators
A (``int_0^t``), B (``int_t^T``) and the weights w (``int_0^T``). Two kinds:

* :func:`chebyshev_grid`: Chebyshev-Lobatto nodes with the spectral integration matrix
  (Clenshaw-Curtis weights), for the Neural ODE (``depth=None``);
* :func:`resnet_grid`: the layers l = 0..L of the weight-tied Euler ResNet, whose discrete
  operators make the grid equations the exact recursion of K^L_inf.

Every operator is linear in T, so a grid on [0, 1] (``T=1``) scaled by a traced T
(:func:`scaled`) serves every horizon without recompiling. Grids are cached by value.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["Grid", "chebyshev_grid", "resnet_grid", "scaled", "shift"]


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """Time nodes with forward/backward integration operators and quadrature weights."""

    t: np.ndarray
    A: np.ndarray  # (A f)_i ~ int_0^{t_i} f
    B: np.ndarray  # (B f)_i ~ int_{t_i}^T f
    w: np.ndarray  # sum_i w_i f_i ~ int_0^T f
    shift: bool  # discrete ResNet: backward and W-term use dPhi, Phi at the previous layer

    @property
    def size(self) -> int:
        """Number of time nodes."""
        return self.t.size


@functools.lru_cache(maxsize=64)
def chebyshev_grid(M: int, T: float) -> Grid:
    """M + 1 Chebyshev-Lobatto nodes on [0, T] with the spectral integration matrix.

    Args:
        M: number of intervals.
        T: the horizon.

    Returns:
        The grid.
    """
    j = np.arange(M + 1)
    x = -np.cos(np.pi * j / M)  # ascending in [-1, 1]
    V = np.polynomial.chebyshev.chebvander(x, M)  # V[j, k] = T_k(x_j)
    Vint = np.empty_like(V)
    for k in range(M + 1):
        e = np.zeros(M + 1)
        e[k] = 1.0
        Vint[:, k] = np.polynomial.chebyshev.chebval(x, np.polynomial.chebyshev.chebint(e, lbnd=-1.0))
    A = (T / 2.0) * np.linalg.solve(V.T, Vint.T).T  # Vint @ inv(V)
    A[0] = 0.0
    w = A[-1].copy()
    B = w[None, :] - A
    return Grid(t=T * (x + 1.0) / 2.0, A=A, B=B, w=w, shift=False)


@functools.lru_cache(maxsize=64)
def resnet_grid(L: int, T: float) -> Grid:
    """Layers l = 0..L of the weight-tied Euler ResNet (exact discrete operators).

    Args:
        L: depth.
        T: the horizon.

    Returns:
        The grid.
    """
    dt = T / L
    S = np.tril(np.ones((L + 1, L + 1)), -1)
    w = np.full(L + 1, dt)
    w[0] = 0.0
    return Grid(t=dt * np.arange(L + 1), A=dt * S, B=dt * S.T, w=w, shift=True)


def scaled(unit: Grid, T: Any) -> Grid:
    """The grid on [0, T] from one on [0, 1]: every operator scales linearly with T (traceable).

    Args:
        unit: a grid built with ``T=1``.
        T: the horizon (a number or a traced scalar).

    Returns:
        The grid on [0, T], JAX arrays in the dtype of ``T`` (the operators are cast before the
        product, so a grid built in float64 serves float32 solves as well).
    """
    T = jnp.asarray(T)
    at = lambda a: jnp.asarray(a, T.dtype) * T
    return Grid(t=at(unit.t), A=at(unit.A), B=at(unit.B), w=at(unit.w), shift=unit.shift)


def shift(P: Any) -> Any:
    """P^{i,j} -> P^{i-1,j-1} (zero in row and column 0): the ResNet's one-layer shift.

    Args:
        P: (M, M) values on a grid.

    Returns:
        The shifted values.
    """
    return jnp.pad(P[:-1, :-1], ((1, 0), (1, 0)))
