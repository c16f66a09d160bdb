"""The sphere's harmonic analysis, one implementation: Gegenbauer polynomials, the dimensions of
the spaces of spherical harmonics, and points at given angles (docs/theory.md section 13).

Used by the zonal spectra (:mod:`ntk_ode.harmonics`) and the PSD checks (:mod:`ntk_ode.spectrum`).
Pure numpy; imports nothing of ours.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["gegenbauer", "harmonic_dimension", "sphere_pair_inputs"]


def _check_d(d) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"d must be an integer >= 2 (the ambient dimension), got {d!r}")
    return int(d)


def gegenbauer(k_max: int, d: int, t: Any) -> np.ndarray:
    """The sphere's Gegenbauer polynomials P_0..P_{k_max} at ``t`` (normalised P_k(1) = 1).

    Recurrence ``P_{k+1} = ((2k + d - 2) t P_k - k P_{k-1}) / (k + d - 2)`` (Legendre for d = 3,
    Chebyshev for d = 2).

    Args:
        k_max: highest degree (>= 0).
        d: dimension of the ambient space (>= 2).
        t: points in [-1, 1].

    Returns:
        (k_max + 1,) + t.shape values.

    Raises:
        ValueError: ``k_max`` or ``d`` is not an integer in range, or ``t`` is outside [-1, 1] or
            not finite.
    """
    d = _check_d(d)
    if isinstance(k_max, bool) or not isinstance(k_max, (int, np.integer)) or k_max < 0:
        raise ValueError(f"k_max must be an integer >= 0, got {k_max!r}")
    t = np.asarray(t, float)
    if not np.all(np.isfinite(t)) or np.any(np.abs(t) > 1.0 + 1e-12):
        raise ValueError("t must hold finite cosines in [-1, 1]")
    t = np.clip(t, -1.0, 1.0)
    out = np.empty((int(k_max) + 1,) + t.shape)
    out[0] = 1.0
    if k_max >= 1:
        out[1] = t
    for k in range(1, int(k_max)):
        out[k + 1] = ((2 * k + d - 2) * t * out[k] - k * out[k - 1]) / (k + d - 2)
    return out


def harmonic_dimension(d: int, k: int) -> int:
    """N(d, k): the number of linearly independent spherical harmonics of degree k on S^{d-1}.

    Args:
        d: ambient dimension (>= 2).
        k: degree (>= 0).

    Returns:
        ``C(k + d - 1, d - 1) - C(k + d - 3, d - 1)``.

    Raises:
        ValueError: ``d`` or ``k`` out of range.
    """
    d = _check_d(d)
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    k = int(k)
    return math.comb(k + d - 1, d - 1) - (math.comb(k + d - 3, d - 1) if k >= 2 else 0)


def sphere_pair_inputs(d: int, radius: float, theta: Any) -> tuple[np.ndarray, np.ndarray]:
    """A point x0 and points at the angles ``theta`` from it, all of norm ``radius``.

    Args:
        d: dimension (>= 2).
        radius: the norm.
        theta: angles in [0, pi].

    Returns:
        ``(x0 (1, d), xs (len(theta), d))``.

    Raises:
        ValueError: ``d`` out of range.
    """
    d = _check_d(d)
    theta = np.asarray(theta, float)
    x0 = np.zeros((1, d))
    x0[0, 0] = radius
    xs = np.zeros((theta.size, d))
    xs[:, 0], xs[:, 1] = radius * np.cos(theta), radius * np.sin(theta)
    return x0, xs
