"""Closed-form Gaussian duals (docs/theory.md section 2).

For ``(u, v) ~ N(0, [[a, c], [c, b]])``: ``dual(a, b, c) = E phi(u) phi(v)`` and
``ddual(a, b, c) = E phi'(u) phi'(v)`` of the activations that have them: the (pos, neg)-relu
family (arc-cosine kernels of order 1 and 0, with derivatives that stay finite at rho = +-1),
erf (the arcsine formula), identity and quadratic (Gaussian moments). The registry
(:mod:`ntk_ode.activations`) attaches them to the built-in activations.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import gaussian

Dual = Callable[..., jax.Array]  # a dual (a, b, c) -> E f(u) g(v)

__all__ = [
    "as_float",
    "arccos_correlation",
    "relu_dual",
    "relu_ddual",
    "relu_family_duals",
    "erf_dual",
    "erf_ddual",
    "identity_dual",
    "identity_ddual",
    "quadratic_dual",
    "quadratic_ddual",
]


def as_float(*xs: ArrayLike) -> list[jax.Array]:
    """The arguments as arrays of one float dtype, broadcast to one shape.

    Args:
        *xs: arrays or scalars.

    Returns:
        The broadcast arrays.
    """
    dt = jnp.result_type(float, *xs)
    return jnp.broadcast_arrays(*(jnp.asarray(x, dt) for x in xs))


def arccos_correlation(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """The correlation, snapped to +-1 within 8 ulps.

    An input with itself at equal times has rho = 1 exactly, but rounding of c / sqrt(ab) leaves
    1 - eps, which arccos turns into an error of sqrt(2 eps) ~ 2e-8 in theta (and so in the
    order-0 kernel).

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        rho, broadcast over the arguments.
    """
    rho = gaussian.correlation(a, b, c)
    tol = 8 * jnp.finfo(rho.dtype).eps
    return jnp.where(jnp.abs(rho) >= 1 - tol, jnp.sign(rho), rho)


@jax.custom_jvp
def relu_dual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E relu(u) relu(v): the arc-cosine kernel of order 1 (derivatives finite at rho = +-1).

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    # arc-cosine kernel of order 1: J1 = (sqrt(ab - c^2) + (pi - theta) c) / (2 pi)
    rho = arccos_correlation(a, b, c)
    theta = jnp.arccos(rho)
    s = jnp.sqrt(jnp.maximum(a, 0.0)) * jnp.sqrt(jnp.maximum(b, 0.0))
    return (s * jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) + (jnp.pi - theta) * rho * s) / (2.0 * jnp.pi)


@relu_dual.defjvp
def _relu_dual_jvp(primals, tangents):
    # dJ1/dc = J0 = (pi - theta) / (2 pi), dJ1/da = sqrt(ab - c^2) / (4 pi a) (and b alike): finite
    # at rho = +-1, where differentiating the formula above gives inf - inf
    a, b, c = as_float(*primals)
    da, db, dc = (jnp.broadcast_to(jnp.asarray(t, a.dtype), a.shape) for t in tangents)
    rho = arccos_correlation(a, b, c)
    s = jnp.sqrt(jnp.maximum(a, 0.0)) * jnp.sqrt(jnp.maximum(b, 0.0)) * jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0))
    pos = (a > 0) & (b > 0)
    inv = lambda z: jnp.where(pos, 1.0 / jnp.where(pos, z, 1.0), 0.0)
    j0 = jnp.where(pos, (jnp.pi - jnp.arccos(rho)) / (2.0 * jnp.pi), 0.0)
    dj1 = s / (4.0 * jnp.pi) * (da * inv(a) + db * inv(b)) + j0 * dc
    return relu_dual(a, b, c), dj1


@jax.custom_jvp
def relu_ddual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E relu'(u) relu'(v): the arc-cosine kernel of order 0 (0 at zero variance).

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    # arc-cosine kernel of order 0: (pi - theta) / (2 pi); relu'(0) = 0, so 0 at zero variance
    rho = arccos_correlation(a, b, c)
    theta = jnp.arccos(rho)
    return jnp.where((jnp.asarray(a) > 0) & (jnp.asarray(b) > 0), (jnp.pi - theta) / (2.0 * jnp.pi), 0.0)


@relu_ddual.defjvp
def _relu_ddual_jvp(primals, tangents):
    # dJ0 = drho / (2 pi sqrt(1 - rho^2)), drho = dc / sqrt(ab) - rho (da / a + db / b) / 2. At
    # rho = +-1 exactly (an input with itself at equal times) every perturbation of the kernel's
    # hyperparameters keeps rho there, so the derivative is taken as 0 (the one-sided limit)
    a, b, c = as_float(*primals)
    da, db, dc = (jnp.broadcast_to(jnp.asarray(t, a.dtype), a.shape) for t in tangents)
    rho = arccos_correlation(a, b, c)
    pos = (a > 0) & (b > 0)
    a1, b1 = jnp.where(pos, a, 1.0), jnp.where(pos, b, 1.0)
    drho = dc / (jnp.sqrt(a1) * jnp.sqrt(b1)) - 0.5 * rho * (da / a1 + db / b1)
    gap = 1.0 - rho * rho
    inner = pos & (gap > 0)
    dj0 = jnp.where(inner, drho / (2.0 * jnp.pi * jnp.sqrt(jnp.where(inner, gap, 1.0))), 0.0)
    return relu_ddual(a, b, c), dj0


def relu_family_duals(pos: float, neg: float) -> tuple[Dual, Dual]:
    """Closed-form duals of ``phi(u) = pos max(u, 0) + neg min(u, 0)``.

    With J1, J0 the arc-cosine kernels (relu's duals) and ``min(u, 0) = -max(-u, 0)``:
    ``E phi phi = (pos^2 + neg^2) J1(c) - 2 pos neg J1(-c)`` and
    ``E phi' phi' = (pos^2 + neg^2) J0(c) + 2 pos neg J0(-c)`` (phi'(0) = 0 by convention).

    Args:
        pos: slope for u > 0.
        neg: slope for u < 0.

    Returns:
        ``(dual, ddual)``, functions of ``(a, b, c)``.
    """

    def dual(a, b, c):
        return (pos * pos + neg * neg) * relu_dual(a, b, c) - 2.0 * pos * neg * relu_dual(a, b, -c)

    def ddual(a, b, c):
        return (pos * pos + neg * neg) * relu_ddual(a, b, c) + 2.0 * pos * neg * relu_ddual(a, b, -c)

    return dual, ddual


def erf_dual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E erf(u) erf(v): the arcsine formula.

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    return (2.0 / jnp.pi) * jnp.arcsin(jnp.clip(2.0 * c / jnp.sqrt((1.0 + 2.0 * a) * (1.0 + 2.0 * b)), -1.0, 1.0))


def erf_ddual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E erf'(u) erf'(v) = (4 / pi) det(I + 2 Sigma)^(-1/2).

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    # E[(2/sqrt(pi))^2 exp(-u^2 - v^2)] = (4/pi) det(I + 2 Sigma)^(-1/2)
    det = (1.0 + 2.0 * a) * (1.0 + 2.0 * b) - 4.0 * c * c
    return (4.0 / jnp.pi) / jnp.sqrt(det)


def identity_dual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E u v = c.

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    return jnp.asarray(c)


def identity_ddual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E 1 = 1.

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    return jnp.ones_like(c)


def quadratic_dual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E u^2 v^2 = ab + 2 c^2 (Isserlis).

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    return jnp.asarray(a) * jnp.asarray(b) + 2.0 * jnp.square(c)  # E u^2 v^2 (Isserlis)


def quadratic_ddual(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> jax.Array:
    """E (2u)(2v) = 4 c.

    Args:
        a: variance of u.
        b: variance of v.
        c: their covariance.

    Returns:
        The dual, broadcast over the arguments.
    """
    return 4.0 * jnp.asarray(c)  # E (2u)(2v)
