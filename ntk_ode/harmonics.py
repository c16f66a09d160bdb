"""Zonal kernels on the sphere: as functions of the cosine, and their Gegenbauer spectra
(docs/theory.md sections 8 and 13).

For inputs on the sphere of radius r in R^d the kernels are zonal, K(x, x') = k(cos angle), and
the integral operator of k on the uniform sphere has the eigenvalues

    mu_k = c_d int_0^pi k(cos theta) P_k(cos theta) sin^{d-2}(theta) dtheta,
    c_d  = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2))

with multiplicity N(d, k), P_k the Gegenbauer polynomial of the sphere normalised to P_k(1) = 1,
and k(t) = sum_k N(d, k) mu_k P_k(t). The integral is a Gauss-Legendre rule in theta (in theta,
not t: the kernels of kinked activations are smooth in theta). The bound on the error of mu_k is
the kernel's estimated error (|P_k| <= 1 and c_d sin^{d-2} integrates to 1) plus the change of
mu_k between Q and 2Q nodes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import positive_int
from .kernels import kernel_fn, parse_get
from .kernels.interpolants import (
    CoefficientKernel,
    ZonalFailed,
    chebyshev_coefficients,
    clenshaw,
    cosine_to_u,
    cosines,
    zonal_interpolant,
)
from .model import NeuralODE
from .sphere import gegenbauer, harmonic_dimension, sphere_pair_inputs

__all__ = [
    "Spectrum",
    "ZonalKernel",
    "zonal_kernel",
    "decay_fit",
    "gegenbauer",
    "gegenbauer_spectrum",
    "harmonic_dimension",
    "predicted_lambda_min",
    "sphere_pair_inputs",
]


def _c_d(d: int) -> float:
    return math.exp(math.lgamma(d / 2) - math.lgamma((d - 1) / 2)) / math.sqrt(math.pi)


def _gl_theta(Q: int):
    z, w = np.polynomial.legendre.leggauss(Q)
    return math.pi * (z + 1) / 2, math.pi * w / 2


@dataclasses.dataclass
class Spectrum:
    """Gegenbauer eigenvalues of a zonal kernel on the sphere.

    Attributes:
        d: ambient dimension.
        mu: eigenvalues mu_0..mu_kmax.
        error: bound on |mu_k - true mu_k| (kernel error + quadrature change).
        multiplicity: N(d, k).
        kernel_error: the kernel's estimated max abs error that went into ``error``.
    """

    d: int
    mu: np.ndarray
    error: np.ndarray
    multiplicity: np.ndarray
    kernel_error: float

    def kernel(self, t: Any) -> np.ndarray:
        """The truncated series ``sum_k N(d, k) mu_k P_k(t)``.

        Args:
            t: cosines.

        Returns:
            The values.
        """
        P = gegenbauer(self.mu.size - 1, self.d, t)
        return np.tensordot(self.multiplicity * self.mu, P, axes=1)


def gegenbauer_spectrum(
    model: NeuralODE,
    d: int,
    k_max: int,
    *,
    depth: int | None = None,
    get: str = "ntk",
    radius: float | None = None,
    nodes: int | None = None,
    rtol: float = 1e-10,
) -> Spectrum:
    """Gegenbauer eigenvalues mu_0..mu_kmax of the NTK or NNGP on the sphere, with error bounds.

    Args:
        model: the Neural ODE.
        d: input dimension (>= 2).
        k_max: highest degree.
        depth: None for the Neural ODE's K_inf, L for the ResNet's.
        get: "ntk" or "nngp".
        radius: the inputs' norm (default sqrt(d): unit variance with sqrt_d input scaling).
        nodes: Gauss-Legendre nodes in theta (default 2 k_max + 48); the estimate also uses 2x.
        rtol: passed to :func:`ntk_ode.kernel_fn`.

    Returns:
        A :class:`Spectrum`.

    Raises:
        ValueError: bad arguments.
    """
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    if isinstance(k_max, bool) or int(k_max) != k_max or k_max < 0:
        raise ValueError(f"k_max must be an integer >= 0, got {k_max!r}")
    if not isinstance(get, str):
        raise ValueError(f"get must be 'ntk' or 'nngp' (one kernel), got {get!r}")
    parse_get(get, ("ntk", "nngp"))
    Q = int(nodes) if nodes is not None else 2 * int(k_max) + 48
    if Q < k_max + 2:
        raise ValueError(f"nodes must be at least k_max + 2 = {k_max + 2}, got {nodes!r}")
    radius = math.sqrt(d) if radius is None else float(radius)
    kfn = kernel_fn(model, depth, rtol=rtol)
    mus, kerr = [], 0.0
    for q in (Q, 2 * Q):
        theta, w = _gl_theta(q)
        x0, xs = sphere_pair_inputs(d, radius, theta)
        k, e = kfn(x0, xs, get=get, with_error=True)
        kerr = max(kerr, float(e))
        P = gegenbauer(k_max, d, np.cos(theta))
        mus.append(_c_d(d) * P @ (w * np.sin(theta) ** (d - 2) * np.asarray(k)[0]))
    mult = np.array([harmonic_dimension(d, k) for k in range(k_max + 1)], float)
    return Spectrum(d, mus[1], np.abs(mus[1] - mus[0]) + kerr, mult, kerr)


def decay_fit(spectrum: Spectrum, resolved: float = 10.0) -> dict:
    """Fit the decay of the resolved eigenvalues (``mu_k > resolved * error_k``, k >= 1).

    Fits ``log mu_k = b - a log k`` (polynomial decay k^-a) and ``log mu_k = b' - r k``
    (exponential e^-rk) by least squares over the upper half of the resolved degrees, and reports
    both with their residual RMS (the smaller says which law fits).

    Args:
        spectrum: from :func:`gegenbauer_spectrum`.
        resolved: how many error bounds an eigenvalue must exceed to be used.

    Returns:
        ``{"k": degrees used, "power": a, "power_rms", "rate": r, "exp_rms", "k_resolved": max k}``.
    """
    k = np.arange(spectrum.mu.size)
    ok = (k >= 1) & (spectrum.mu > resolved * spectrum.error)
    ks = k[ok]
    if ks.size < 4:
        return {
            "k": ks.tolist(),
            "power": float("nan"),
            "power_rms": float("nan"),
            "rate": float("nan"),
            "exp_rms": float("nan"),
            "k_resolved": int(ks.max()) if ks.size else 0,
        }
    use = ks[ks >= np.median(ks)]
    y = np.log(spectrum.mu[use])
    A = np.stack([np.ones(use.size), -np.log(use)], 1)
    cp, rp = np.linalg.lstsq(A, y, rcond=None)[:2]
    B = np.stack([np.ones(use.size), -use.astype(float)], 1)
    ce, re = np.linalg.lstsq(B, y, rcond=None)[:2]
    rms = lambda M, c: float(np.sqrt(np.mean((M @ c - y) ** 2)))
    return {
        "k": use.tolist(),
        "power": float(cp[1]),
        "power_rms": rms(A, cp),
        "rate": float(ce[1]),
        "exp_rms": rms(B, ce),
        "k_resolved": int(ks.max()),
    }


def predicted_lambda_min(spectrum: Spectrum, N: int) -> dict:
    """What the operator spectrum says about lambda_min of the Gram matrix of N points.

    * ``rank_N``: N times the N-th largest operator eigenvalue counted with multiplicity (the
      Gram matrix's eigenvalues approximate N mu);
    * ``tail``: ``sum_{k > k*} N(d, k) mu_k`` with k* the first degree whose harmonics number at
      least N: for well-separated points the high-degree part of the kernel is close to
      ``tail * I`` and lower-bounds lambda_min (up to the separation), a floor the first misses.

    Args:
        spectrum: from :func:`gegenbauer_spectrum` (k_max large enough that the tail is small).
        N: number of points.

    Returns:
        ``{"rank_N": ..., "tail": ..., "k_star": ...}`` (nan when k_max is too small).

    Raises:
        ValueError: N is not a positive integer.
    """
    N = positive_int("N (the number of points)", N)
    ev = np.repeat(spectrum.mu, spectrum.multiplicity.astype(int))
    ev = np.sort(ev)[::-1]
    rank = float(N * ev[N - 1]) if ev.size >= N else float("nan")
    cum = np.cumsum(spectrum.multiplicity)
    ks = np.nonzero(cum >= N)[0]
    if ks.size == 0:
        return {"rank_N": rank, "tail": float("nan"), "k_star": -1}
    k_star = int(ks[0])
    tail = float(np.sum((spectrum.multiplicity * spectrum.mu)[k_star + 1 :]))
    return {"rank_N": rank, "tail": tail, "k_star": k_star}


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class ZonalKernel(CoefficientKernel):
    """A zonal kernel ``k(cos)`` as a Chebyshev series in ``u = 1 - 2 theta / pi`` (theta the
    angle), from :func:`zonal_kernel`. Calling it is pure JAX (jit, vmap, grad in the cosine away
    from +-1), so it can be handed to other solvers.

    Attributes:
        coefficients: Chebyshev coefficients in u.
        error: bound on |k(cos) - true kernel| for every cosine (interpolation + kernel error).
        radius: the inputs' norm it was built for.
        d: the input dimension it was built for.
    """

    coefficients: jax.Array
    error: float
    radius: float
    d: int

    STATIC = ("error", "radius", "d")

    def __call__(self, cos: Any) -> Any:
        """The kernel at cosines ``cos`` (rounding just outside [-1, 1] is clipped).

        Args:
            cos: cosines of the angles between inputs (any shape).

        Returns:
            Kernel values, the shape of ``cos``.

        Raises:
            ValueError: (eagerly) a cosine that is not finite or lies outside [-1, 1] by more than
                rounding (1e-9): the interpolant does not extend there.
        """
        if not isinstance(cos, jax.core.Tracer):
            c = np.asarray(cos, np.float64)
            if not np.all(np.isfinite(c)) or np.any(np.abs(c) > 1 + 1e-9):
                raise ValueError(f"cos must hold finite cosines in [-1, 1], got values up to {np.max(np.abs(c))!r}")
        return clenshaw(self.coefficients, cosine_to_u(jnp.asarray(cos, self.coefficients.dtype)))

    def gram(self, x1: Any, x2: Any = None) -> Any:
        """The kernel matrix of inputs of norm ``radius``, from their cosines.

        The cosines are ``x1 . x2 / (|x1| |x2|)`` (not divided by ``radius^2``): near
        ``cos = 1`` kernels with a kink (relu's) vary like ``sqrt(1 - cos)``, so a norm off by
        one rounding would move the diagonal by ~1e-9.

        Args:
            x1: inputs (N1, d).
            x2: inputs (N2, d) or None.

        Returns:
            (N1, N2) kernel matrix.
        """
        return self(cosines(x1, x1 if x2 is None else x2))


def zonal_kernel(
    model: NeuralODE,
    d: int,
    *,
    depth: int | None = None,
    get: str | tuple = "ntk",
    radius: float | None = None,
    rtol: float = 1e-10,
    max_nodes: int = 512,
) -> ZonalKernel | list[ZonalKernel]:
    """The NTK or NNGP of inputs of one norm as a function of the cosine, with an error bound.

    Tabulates the kernel (direct solves of :func:`ntk_ode.kernel_fn`) at Chebyshev-Lobatto nodes
    in ``u = 1 - 2 theta / pi`` (smooth even for kinked activations, docs/theory.md section 8),
    doubling the nodes until the coarser interpolant matches the finer values to ``rtol`` of the
    kernel's scale (:func:`ntk_ode.kernels.interpolants.zonal_interpolant`). The bound is that
    difference times 4 plus the largest of the kernel's own estimates.

    Args:
        model: the Neural ODE.
        d: input dimension.
        depth: None for the ODE, L for the ResNet.
        get: "ntk", "nngp", or a tuple of them (one set of solves for all).
        radius: the inputs' norm (default sqrt(d)).
        rtol: target relative accuracy.
        max_nodes: most table nodes tried.

    Returns:
        A :class:`ZonalKernel` (``get`` a string) or a list of them.

    Raises:
        ValueError: bad arguments.
        RuntimeError: the table does not reach ``rtol`` within ``max_nodes``.
    """
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    names, _ = parse_get(get, ("ntk", "nngp"))
    radius = math.sqrt(d) if radius is None else float(radius)
    # direct solves at the nodes (equal_norm=False: no zonal table inside this one)
    kfn = kernel_fn(model, depth, rtol=min(rtol, 1e-8), equal_norm=False)
    kerr = np.zeros(len(names))

    def evaluate(cos):
        x0, xs = sphere_pair_inputs(d, radius, np.arccos(np.clip(cos, -1.0, 1.0)))
        vals, errs = kfn(x0, xs, get=names, with_error=True)  # one solve for every kernel
        kerr[:] = np.maximum(kerr, [float(e) for e in errs])
        return np.stack([np.asarray(v)[0] for v in vals])

    try:
        tab, diff = zonal_interpolant(evaluate, rtol, list(range(len(names))), max_nodes)
    except ZonalFailed as exc:
        raise RuntimeError(f"zonal_kernel: {exc}") from exc
    coef = chebyshev_coefficients(tab, (1,))
    out = [ZonalKernel(jnp.asarray(c), 4.0 * float(e) + float(k), radius, int(d)) for c, e, k in zip(coef, diff, kerr)]
    return out[0] if isinstance(get, str) else out
