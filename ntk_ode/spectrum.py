"""Spectra of kernel matrices and the checks of Assumption 1 / Prop 3 (docs/theory.md section 9)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from jaxtyping import ArrayLike

from .activations import get_activation
from .sphere import gegenbauer

__all__ = [
    "symmetric_part",
    "eigenvalues",
    "lambda_min",
    "condition_number",
    "check_psd",
    "Assumption1Report",
    "check_assumption1",
    "gegenbauer_coefficients",
]


def symmetric_part(K: ArrayLike, name: str = "K") -> np.ndarray:
    """``(K + K^T) / 2`` as a float64 numpy array, after checking K.

    Args:
        K: a square matrix.
        name: its name in messages.

    Returns:
        The symmetric part.

    Raises:
        ValueError: K is not square or has non-finite entries.
    """
    K = np.asarray(K, float)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{name} contains non-finite values")
    return 0.5 * (K + K.T)


def eigenvalues(K: ArrayLike) -> np.ndarray:
    """Eigenvalues of the symmetric part of K, ascending (float64, on the host).

    Args:
        K: a square matrix.

    Returns:
        The eigenvalues (N,).

    Raises:
        ValueError: K is not square or has non-finite entries.
    """
    return np.linalg.eigvalsh(symmetric_part(K))


def lambda_min(K: ArrayLike) -> float:
    """The smallest eigenvalue of the symmetric part of K (lambda_0 for K = K_inf on the data).

    Args:
        K: a square matrix.

    Returns:
        lambda_min.

    Raises:
        ValueError: K is not square or has non-finite entries.
    """
    return float(eigenvalues(K)[0])


def condition_number(K: ArrayLike) -> float:
    """``lambda_max / lambda_min`` of the symmetric part of K (inf when lambda_min <= 0).

    Args:
        K: a square matrix.

    Returns:
        The condition number.

    Raises:
        ValueError: K is not square or has non-finite entries.
    """
    ev = eigenvalues(K)
    return float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf


def check_psd(K: ArrayLike, rtol: float = 1e-10, name: str = "K") -> float:
    """Check that K is symmetric positive semi-definite to ``rtol`` (relative to its largest |entry|).

    Args:
        K: a square matrix.
        rtol: the tolerance (asymmetry, and negative eigenvalues down to ``-rtol * scale * N``).
        name: its name in messages.

    Returns:
        lambda_min of K.

    Raises:
        ValueError: K is not symmetric or not PSD to the tolerance.
    """
    if not (isinstance(rtol, (int, float, np.floating)) and math.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"rtol must be a finite number >= 0, got {rtol!r}")
    K = np.asarray(K, float)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{name} contains non-finite values")
    scale = max(np.max(np.abs(K)), 1e-300)
    if np.max(np.abs(K - K.T)) > rtol * scale:
        raise ValueError(f"{name} is not symmetric (max asymmetry {np.max(np.abs(K - K.T)):.2e})")
    lm = lambda_min(K)
    if lm < -rtol * scale * K.shape[0]:
        raise ValueError(f"{name} is not positive semi-definite: lambda_min = {lm:.3e}")
    return lm


@dataclasses.dataclass
class Assumption1Report:
    """What holds of Assumption 1 (data) and of the activation conditions of Prop 1-3 / Thm 2."""

    on_sphere: bool
    max_norm_deviation: float
    distinct: bool
    min_distance: float
    antipodal_pairs: list
    phi_lipschitz: bool
    dphi_lipschitz: bool
    polynomial: bool
    odd: bool
    reasons: list

    @property
    def ok(self) -> bool:
        """Whether every condition holds."""
        return not self.reasons

    def __str__(self) -> str:
        head = "Assumption 1 and the activation conditions hold" if self.ok else "Problems found:"
        return "\n".join([head] + [f"  - {r}" for r in self.reasons])


def check_assumption1(model: Any, x: ArrayLike, tol: float = 1e-8) -> Assumption1Report:
    """Check the data and activation conditions of Theorem 2 and Prop 3 for ``model`` on ``x``.

    Args:
        model: a NeuralODE (or anything with an ``activation``).
        x: inputs (N, d).
        tol: tolerance for "on the sphere", "distinct" and "antipodal".

    Returns:
        An :class:`Assumption1Report`; ``report.ok`` says whether everything holds and
        ``str(report)`` lists the problems.

    Raises:
        ValueError: x is not (N, d).
    """
    x = np.asarray(x, float)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (N, d), got {x.shape}")
    act = get_activation(model.activation)
    norms = np.linalg.norm(x, axis=1)
    dev = float(np.max(np.abs(norms - 1.0)))
    G = x @ x.T
    sq = norms[:, None] ** 2 + norms[None, :] ** 2 - 2 * G
    np.fill_diagonal(sq, np.inf)
    dmin = float(np.sqrt(max(np.min(sq), 0.0))) if x.shape[0] > 1 else math.inf
    sums = norms[:, None] ** 2 + norms[None, :] ** 2 + 2 * G  # ||x_i + x_j||^2
    np.fill_diagonal(sums, np.inf)
    anti = [tuple(map(int, p)) for p in np.argwhere(np.triu(sums <= tol**2 * np.maximum(norms[:, None], 1) ** 2, 1))]
    reasons = []
    if dev > tol:
        reasons.append(f"inputs are not on the unit sphere (max | ||x|| - 1 | = {dev:.2e}); use ntk_ode.data.to_sphere")
    if dmin <= tol:
        reasons.append(f"inputs are not distinct (min distance {dmin:.2e})")
    if anti and act.odd:
        reasons.append(
            f"{len(anti)} antipodal pair(s) with the odd activation {act.name!r}: "
            "f(-x) = -f(x) makes the Gram matrix singular"
        )
    if not act.phi_lipschitz:
        reasons.append(f"phi ({act.name}) is not Lipschitz: Prop 1 (well-posedness) is not guaranteed")
    if not act.dphi_lipschitz:
        reasons.append(f"phi' ({act.name}) is not Lipschitz: Prop 2's O(1/L) gradient gap is not guaranteed")
    if act.polynomial:
        reasons.append(f"phi ({act.name}) is a polynomial: K_inf can be singular (Prop 3 needs non-polynomial phi)")
    return Assumption1Report(
        dev <= tol, dev, dmin > tol, dmin, anti, act.phi_lipschitz, act.dphi_lipschitz, act.polynomial, act.odd, reasons
    )


def gegenbauer_coefficients(zonal: Callable[[np.ndarray], Any], d: int, degree: int, nodes: int = 200) -> np.ndarray:
    """Coefficients a_l, l = 0..degree, of a zonal kernel k(t) = sum_l a_l C_l(t) on S^{d-1}.

    ``zonal`` maps an array of cosines t in [-1, 1] to k(t). ``C_l`` are the Gegenbauer
    polynomials of index (d - 2)/2 normalised to C_l(1) = 1 (Legendre polynomials in dimension d);
    a kernel is positive definite on the sphere iff every a_l >= 0, and strictly so on every set of
    distinct points when infinitely many are positive. Gauss-Jacobi quadrature with weight
    (1 - t^2)^((d - 3)/2).

    Args:
        zonal: the kernel as a function of the cosine.
        d: the dimension of the ambient space (>= 2).
        degree: the largest degree.
        nodes: quadrature nodes.

    Returns:
        ``a_0 .. a_degree``.

    Raises:
        ValueError: d is not an integer >= 2.
    """
    from scipy.special import roots_jacobi

    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    alpha = (int(d) - 3) / 2.0
    t, w = roots_jacobi(int(nodes), alpha, alpha)
    kt = np.asarray(zonal(t), float)
    P = gegenbauer(int(degree), int(d), t)  # (degree + 1, nodes)
    return (P * (w * kt)).sum(axis=1) / (P * P * w).sum(axis=1)
