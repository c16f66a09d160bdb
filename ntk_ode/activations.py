"""Activation registry: phi, phi', analytic properties and Gaussian duals.

Every activation is an :class:`Activation` carrying

* ``fn`` (phi) and ``dfn`` (phi'), both elementwise JAX functions;
* the properties the theory asks about: ``phi_lipschitz``, ``dphi_lipschitz``, ``polynomial``,
  ``odd`` (THEORY.md section 4: Prop 1-3 and the odd-activation caveat);
* its Gaussian duals ``dual(a, b, c) = E phi(u) phi(v)`` and ``ddual(a, b, c) = E phi'(u) phi'(v)``
  for ``(u, v) ~ N(0, [[a, c], [c, b]])``: a closed form where one is known (relu: arc-cosine
  kernels of order 1 and 0; erf: the arcsine formula; identity and quadratic: Gaussian moments),
  Gauss-Hermite quadrature otherwise (see :mod:`ntk_ode.gaussian` for its accuracy).

Users add their own with :func:`register_activation`; :func:`get_activation` resolves a name or
returns an :class:`Activation` unchanged. ``softplus(beta)`` builds the sharpened softplus.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from . import gaussian

__all__ = [
    "Activation",
    "get_activation",
    "register_activation",
    "available_activations",
    "softplus",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Activation:
    """An activation with its derivative, properties and Gaussian duals.

    Equality and hashing are by identity, so an instance can sit in a static (hashable) model
    configuration. ``closed_form_dual`` / ``closed_form_ddual`` are ``None`` when the duals come
    from quadrature.
    """

    name: str
    fn: Callable
    dfn: Callable
    phi_lipschitz: bool
    dphi_lipschitz: bool
    polynomial: bool
    odd: bool = False
    closed_form_dual: Callable | None = None
    closed_form_ddual: Callable | None = None
    quadrature_order: int = gaussian.DEFAULT_ORDER

    def __call__(self, z):
        return self.fn(z)

    @property
    def has_closed_form(self) -> bool:
        return self.closed_form_dual is not None and self.closed_form_ddual is not None

    def dual(self, a, b, c, method: str = "auto"):
        """``E phi(u) phi(v)``, ``(u, v) ~ N(0, [[a, c], [c, b]])``, elementwise.

        ``method``: "auto" (closed form if known, else "hermite"), "closed", "hermite" (Mehler
        series of Gauss-Hermite coefficients, :func:`ntk_ode.gaussian.expect_2d_mehler`) or
        "gh2d" (tensor Gauss-Hermite rule, :func:`ntk_ode.gaussian.expect_2d`).
        """
        return self._dual(self.fn, self.closed_form_dual, a, b, c, method)

    def ddual(self, a, b, c, method: str = "auto"):
        """``E phi'(u) phi'(v)``, ``(u, v) ~ N(0, [[a, c], [c, b]])``, elementwise (see :meth:`dual`)."""
        return self._dual(self.dfn, self.closed_form_ddual, a, b, c, method)

    def _dual(self, f, closed, a, b, c, method):
        if method == "auto":
            method = "closed" if closed is not None else "hermite"
        if method == "closed":
            if closed is None:
                raise ValueError(f"activation {self.name!r} has no closed-form dual (method='closed')")
            return closed(*_as_float(a, b, c))
        if method == "hermite":
            return gaussian.expect_2d_mehler(f, f, a, b, c)
        if method == "gh2d":
            return gaussian.expect_2d(f, f, a, b, c, self.quadrature_order)
        raise ValueError(f"method must be 'auto', 'closed', 'hermite' or 'gh2d', got {method!r}")

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


def _as_float(*xs):
    dt = jnp.result_type(float, *xs)
    return jnp.broadcast_arrays(*(jnp.asarray(x, dt) for x in xs))


# ----------------------------------------------------------------------------- closed forms


def _relu_dual(a, b, c):
    # arc-cosine kernel of order 1: (sqrt(ab - c^2) + (pi - theta) c) / (2 pi)
    rho = gaussian._correlation(a, b, c)
    theta = jnp.arccos(rho)
    s = jnp.sqrt(jnp.maximum(a, 0.0)) * jnp.sqrt(jnp.maximum(b, 0.0))
    return (s * jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) + (jnp.pi - theta) * rho * s) / (
        2.0 * jnp.pi
    )


def _relu_ddual(a, b, c):
    # arc-cosine kernel of order 0: (pi - theta) / (2 pi); relu'(0) = 0, so 0 at zero variance
    rho = gaussian._correlation(a, b, c)
    theta = jnp.arccos(rho)
    return jnp.where((a > 0) & (b > 0), (jnp.pi - theta) / (2.0 * jnp.pi), 0.0)


def _erf_dual(a, b, c):
    return (2.0 / jnp.pi) * jnp.arcsin(
        jnp.clip(2.0 * c / jnp.sqrt((1.0 + 2.0 * a) * (1.0 + 2.0 * b)), -1.0, 1.0)
    )


def _erf_ddual(a, b, c):
    # E[(2/sqrt(pi))^2 exp(-u^2 - v^2)] = (4/pi) det(I + 2 Sigma)^(-1/2)
    det = (1.0 + 2.0 * a) * (1.0 + 2.0 * b) - 4.0 * c * c
    return (4.0 / jnp.pi) / jnp.sqrt(det)


def _identity_dual(a, b, c):
    return c


def _identity_ddual(a, b, c):
    return jnp.ones_like(c)


def _quadratic_dual(a, b, c):
    return a * b + 2.0 * c * c  # E u^2 v^2 (Isserlis)


def _quadratic_ddual(a, b, c):
    return 4.0 * c  # E (2u)(2v)


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Activation] = {}


def register_activation(
    name: str,
    fn: Callable,
    dfn: Callable | None = None,
    *,
    dual: Callable | None = None,
    ddual: Callable | None = None,
    phi_lipschitz: bool = True,
    dphi_lipschitz: bool = True,
    polynomial: bool = False,
    odd: bool = False,
    overwrite: bool = False,
) -> Activation:
    """Register an activation under ``name`` and return it.

    ``dfn`` defaults to the derivative of ``fn`` by autodiff. ``dual``/``ddual`` are optional
    closed forms ``(a, b, c) -> E phi(u) phi(v)`` / ``E phi'(u) phi'(v)``; without them the duals
    use Gauss-Hermite quadrature, which is accurate for smooth ``fn`` (see :mod:`ntk_ode.gaussian`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")
    if dfn is not None and not callable(dfn):
        raise ValueError(f"dfn must be callable or None, got {dfn!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"activation {name!r} is already registered (pass overwrite=True)")
    if dfn is None:
        dfn = _autodiff_derivative(fn)
    act = Activation(
        name=name,
        fn=fn,
        dfn=dfn,
        phi_lipschitz=phi_lipschitz,
        dphi_lipschitz=dphi_lipschitz,
        polynomial=polynomial,
        odd=odd,
        closed_form_dual=dual,
        closed_form_ddual=ddual,
    )
    _REGISTRY[name] = act
    return act


def _autodiff_derivative(fn):
    def dfn(z):
        z = jnp.asarray(z)
        flat = z.reshape(-1)
        d = jax.vmap(jax.grad(lambda s: fn(s)))(flat)
        return d.reshape(z.shape)

    return dfn


def available_activations() -> list[str]:
    """Names of the registered activations."""
    return sorted(_REGISTRY)


def get_activation(activation) -> Activation:
    """Resolve a registered name (or pass an :class:`Activation` through)."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str) and activation in _REGISTRY:
        return _REGISTRY[activation]
    raise ValueError(
        f"activation must be an Activation or one of {available_activations()}, got {activation!r}"
    )


@functools.lru_cache(maxsize=None)
def softplus(beta: float = 1.0) -> Activation:
    """Softplus ``log(1 + exp(beta z)) / beta``; phi' = sigmoid(beta z) (Lipschitz with constant beta/4)."""
    beta = float(beta)
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    name = "softplus" if beta == 1.0 else f"softplus(beta={beta:g})"
    return Activation(
        name=name,
        fn=lambda z: jax.nn.softplus(beta * z) / beta,
        dfn=lambda z: jax.nn.sigmoid(beta * z),
        phi_lipschitz=True,
        dphi_lipschitz=True,
        polynomial=False,
    )


def _gelu(z):
    return 0.5 * z * (1.0 + jax.lax.erf(z / math.sqrt(2.0)))


def _dgelu(z):
    return 0.5 * (1.0 + jax.lax.erf(z / math.sqrt(2.0))) + z * jnp.exp(-0.5 * z * z) / math.sqrt(
        2.0 * jnp.pi
    )


def _dsilu(z):
    s = jax.nn.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _dtanh(z):
    t = jnp.tanh(z)
    return 1.0 - t * t


def _dsigmoid(z):
    s = jax.nn.sigmoid(z)
    return s * (1.0 - s)


def _derf(z):
    return (2.0 / math.sqrt(math.pi)) * jnp.exp(-z * z)


def _drelu(z):
    return jnp.where(z > 0, 1.0, 0.0).astype(jnp.result_type(z, float))


_BUILTIN = [
    Activation("relu", jax.nn.relu, _drelu, True, False, False, False, _relu_dual, _relu_ddual),
    softplus(1.0),
    Activation("tanh", jnp.tanh, _dtanh, True, True, False, True),
    Activation("erf", jax.lax.erf, _derf, True, True, False, True, _erf_dual, _erf_ddual),
    Activation("sigmoid", jax.nn.sigmoid, _dsigmoid, True, True, False, False),
    Activation("gelu", _gelu, _dgelu, True, True, False, False),
    Activation("silu", jax.nn.silu, _dsilu, True, True, False, False),
    Activation(
        "quadratic", lambda z: z * z, lambda z: 2.0 * z, False, True, True, False,
        _quadratic_dual, _quadratic_ddual,
    ),
    Activation(
        "identity", lambda z: z, lambda z: jnp.ones_like(z), True, True, True, True,
        _identity_dual, _identity_ddual,
    ),
]
for _a in _BUILTIN:
    _REGISTRY[_a.name] = _a
_REGISTRY["swish"] = _REGISTRY["silu"]
