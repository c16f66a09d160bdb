"""Spectra of kernel matrices and the checks of Assumption 1 / Prop 3 (THEORY.md section 4)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .activations import get_activation

__all__ = ["eigenvalues", "lambda_min", "condition_number", "check_psd", "Assumption1Report", "check_assumption1",
           "gegenbauer_coefficients"]


def _sym(K, name="K"):
    K = np.asarray(K, float)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{name} contains non-finite values")
    return 0.5 * (K + K.T)


def eigenvalues(K) -> np.ndarray:
    """Eigenvalues of the symmetric part of K, ascending."""
    return np.linalg.eigvalsh(_sym(K))


def lambda_min(K) -> float:
    return float(eigenvalues(K)[0])


def condition_number(K) -> float:
    ev = eigenvalues(K)
    return float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf


def check_psd(K, rtol: float = 1e-10, name: str = "K") -> float:
    """Raise ValueError if K is not symmetric PSD to ``rtol`` (relative to its largest |entry|)."""
    K = np.asarray(K, float)
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
        return not self.reasons

    def __str__(self) -> str:
        head = "Assumption 1 and the activation conditions hold" if self.ok else "Problems found:"
        return "\n".join([head] + [f"  - {r}" for r in self.reasons])


def check_assumption1(model, x, tol: float = 1e-8) -> Assumption1Report:
    """Check the data and activation conditions of Theorem 2 and Prop 3 for ``model`` on ``x``."""
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
        reasons.append(f"{len(anti)} antipodal pair(s) with the odd activation {act.name!r}: "
                       "f(-x) = -f(x) makes the Gram matrix singular")
    if not act.phi_lipschitz:
        reasons.append(f"phi ({act.name}) is not Lipschitz: Prop 1 (well-posedness) is not guaranteed")
    if not act.dphi_lipschitz:
        reasons.append(f"phi' ({act.name}) is not Lipschitz: Prop 2's O(1/L) gradient gap is not guaranteed")
    if act.polynomial:
        reasons.append(f"phi ({act.name}) is a polynomial: K_inf can be singular (Prop 3 needs non-polynomial phi)")
    return Assumption1Report(dev <= tol, dev, dmin > tol, dmin, anti, act.phi_lipschitz, act.dphi_lipschitz,
                             act.polynomial, act.odd, reasons)


def gegenbauer_coefficients(zonal, d: int, degree: int, nodes: int = 200) -> np.ndarray:
    """Coefficients a_l, l = 0..degree, of a zonal kernel k(t) = sum_l a_l C_l(t) on S^{d-1}.

    ``zonal`` maps an array of cosines t in [-1, 1] to k(t). ``C_l`` are the Gegenbauer
    polynomials of index (d - 2)/2 normalised to C_l(1) = 1 (Legendre polynomials in dimension d);
    a kernel is positive definite on the sphere iff every a_l >= 0, and strictly so on every set of
    distinct points when infinitely many are positive. Gauss-Jacobi quadrature with weight
    (1 - t^2)^((d - 3)/2).
    """
    from scipy.special import eval_gegenbauer, roots_jacobi

    if int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    alpha = (d - 3) / 2.0
    t, w = roots_jacobi(int(nodes), alpha, alpha)
    kt = np.asarray(zonal(t), float)
    lam = (d - 2) / 2.0
    out = []
    for ell in range(int(degree) + 1):
        if d == 2:
            P = np.cos(ell * np.arccos(np.clip(t, -1, 1)))
        elif lam == 0:
            P = np.polynomial.legendre.legval(t, [0] * ell + [1])
        else:
            P = eval_gegenbauer(ell, lam, t) / eval_gegenbauer(ell, lam, 1.0)
        out.append(np.sum(w * kt * P) / np.sum(w * P * P))
    return np.array(out)
