"""Activation registry: phi, phi', analytic properties and Gaussian duals.

Every activation is an :class:`Activation` carrying

* ``fn`` (phi) and ``dfn`` (phi'), both elementwise JAX functions;
* the properties the theory asks about: ``phi_lipschitz``, ``dphi_lipschitz``, ``polynomial``,
  ``odd`` (docs/theory.md section 9: Prop 1-3 and the odd-activation caveat);
* ``kinks``: the points where phi or phi' is not smooth (relu-like activations: 0);
* its Gaussian duals ``dual(a, b, c) = E phi(u) phi(v)`` and ``ddual(a, b, c) = E phi'(u) phi'(v)``
  for ``(u, v) ~ N(0, [[a, c], [c, b]])``.

How the duals are computed (``method="auto"``), accurate to 1e-12 relative to
``sqrt(E phi(u)^2 E phi(v)^2)`` in float64 for variances 1e-8..1e4 and every correlation,
``rho = +-1`` included (``tests/test_activations.py`` checks this against an independent
adaptive Gauss-Kronrod reference):

* closed forms where they exist: the (a, b)-relu family ``a max(u, 0) + b min(u, 0)`` (relu,
  leaky_relu, abs; arc-cosine kernels of order 1 and 0), erf (arcsine formula), identity and
  quadratic (Gaussian moments). Their only error is rounding; near ``|rho| = 1`` the arc-cosine
  turns a rounding of rho into ``sqrt(eps)``, which the error estimate includes;
* otherwise the robust rule :func:`ntk_ode.gaussian.expect_2d_quad`: conditioning on u, a
  tanh-sinh rule split at the kinks and at 0 (where every built-in activation turns), with an
  error estimate from the nested coarser rule. ``dual_and_error`` returns that estimate.

The kernel solvers of :mod:`ntk_ode.kernels` use faster representations (Mehler series) and
certify them against these values.

Users add their own with :func:`register_activation`; :func:`get_activation` resolves a name or
returns an :class:`Activation` unchanged. ``softplus(beta)`` builds the sharpened softplus.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import gaussian
from .closed_duals import (
    as_float,
    erf_ddual,
    erf_dual,
    identity_ddual,
    identity_dual,
    quadratic_ddual,
    quadratic_dual,
    relu_ddual,
    relu_dual,
    relu_family_duals,
)

__all__ = [
    "Activation",
    "get_activation",
    "register_activation",
    "available_activations",
    "softplus",
    "relu_family",
    "probe_kinks",
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
    kinks: tuple = ()
    arccos_form: bool = False  # closed forms through arccos(rho): rounding amplified near |rho| = 1

    def __call__(self, z: Any) -> Any:
        """phi(z), elementwise."""
        return self.fn(z)

    @property
    def has_closed_form(self) -> bool:
        """Whether both duals have closed forms."""
        return self.closed_form_dual is not None and self.closed_form_ddual is not None

    @property
    def breakpoints(self) -> tuple:
        """Where the robust quadrature splits: the kinks and 0 (every built-in turns at 0)."""
        return tuple(sorted({0.0, *(float(k) for k in self.kinks)}))

    def dual(self, a: ArrayLike, b: ArrayLike, c: ArrayLike, method: str = "auto") -> jax.Array:
        """``E phi(u) phi(v)``, ``(u, v) ~ N(0, [[a, c], [c, b]])``, elementwise.

        Args:
            a: variance of u.
            b: variance of v.
            c: covariance (broadcast with a and b); ``|c| <= sqrt(a b)`` is assumed and the
                correlation is clipped to [-1, 1].
            method: "auto" (closed form if known, else "quad"), "closed", "quad" (the robust
                rule :func:`ntk_ode.gaussian.expect_2d_quad`), "hermite" (Mehler series of
                Gauss-Hermite coefficients; accurate only at moderate variance) or "gh2d"
                (tensor Gauss-Hermite; likewise).

        Returns:
            The expectation, shape of the broadcast inputs.

        Raises:
            ValueError: unknown method, or "closed" without a closed form.
        """
        return self._dual(self.fn, self.closed_form_dual, a, b, c, method)[0]

    def ddual(self, a: ArrayLike, b: ArrayLike, c: ArrayLike, method: str = "auto") -> jax.Array:
        """``E phi'(u) phi'(v)``, ``(u, v) ~ N(0, [[a, c], [c, b]])``, elementwise (see :meth:`dual`).

        Args:
            a: the variance of u.
            b: the variance of v.
            c: the covariance of u and v.
            method: as in :meth:`dual`.

        Returns:
            The expectations.
        """
        return self._dual(self.dfn, self.closed_form_ddual, a, b, c, method)[0]

    def dual_and_error(
        self, a: ArrayLike, b: ArrayLike, c: ArrayLike, method: str = "auto"
    ) -> tuple[jax.Array, jax.Array]:
        """``(E phi(u) phi(v), error estimate)``: the estimate bounds the absolute error.

        Rounding for closed forms, quadrature error otherwise; nan for "hermite"/"gh2d".

        Args:
            a: the variance of u.
            b: the variance of v.
            c: the covariance of u and v.
            method: as in :meth:`dual`.

        Returns:
            ``(value, error)``.
        """
        return self._dual(self.fn, self.closed_form_dual, a, b, c, method)

    def ddual_and_error(
        self, a: ArrayLike, b: ArrayLike, c: ArrayLike, method: str = "auto"
    ) -> tuple[jax.Array, jax.Array]:
        """``(E phi'(u) phi'(v), error estimate)`` (see :meth:`dual_and_error`).

        Args:
            a: the variance of u.
            b: the variance of v.
            c: the covariance of u and v.
            method: as in :meth:`dual`.

        Returns:
            ``(value, error)``.
        """
        return self._dual(self.dfn, self.closed_form_ddual, a, b, c, method)

    def _dual(self, f, closed, a, b, c, method):
        if method == "auto":
            method = "closed" if closed is not None else "quad"
        a, b, c = as_float(a, b, c)
        if method == "closed":
            if closed is None:
                raise ValueError(f"activation {self.name!r} has no closed-form dual (method='closed')")
            val = closed(a, b, c)
            return val, self._closed_error(f, val, a, b, c)
        if method == "quad":
            return gaussian.expect_2d_quad(f, f, a, b, c, self.breakpoints, self.breakpoints)
        nan = jnp.full(a.shape, jnp.nan, a.dtype)
        if method == "hermite":
            return gaussian.expect_2d_mehler(f, f, a, b, c), nan
        if method == "gh2d":
            return gaussian.expect_2d(f, f, a, b, c, self.quadrature_order), nan
        raise ValueError(f"method must be 'auto', 'closed', 'quad', 'hermite' or 'gh2d', got {method!r}")

    def _closed_error(self, f, val, a, b, c):
        """Rounding bound of a closed form: 64 eps of the Cauchy-Schwarz scale, and for arc-cosine
        forms the amplified rounding of rho, min(sqrt(8 eps), 4 eps / sqrt(1 - rho^2)) / pi."""
        eps = float(jnp.finfo(val.dtype).eps)
        scale = jnp.sqrt(jnp.abs(self._second_moment(f, a)) * jnp.abs(self._second_moment(f, b)))
        err = 64 * eps * (scale + jnp.abs(val))
        if self.arccos_form:
            rho = gaussian.correlation(a, b, c)
            sin = jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0))
            amp = jnp.minimum(math.sqrt(8 * eps), 4 * eps / jnp.maximum(sin, eps)) / math.pi
            exact = (a == b) & (jnp.abs(c) == a)  # an input with itself: rho = +-1 exactly
            err = err + 2 * jnp.where(exact, 0.0, amp) * scale
        return err

    def _second_moment(self, f, a):
        return gaussian.expect_1d_quad(gaussian.squared(f), a, self.breakpoints)[0]

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


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
    kinks: tuple | None = None,
    overwrite: bool = False,
) -> Activation:
    """Register an activation under ``name`` and return it.

    Args:
        name: registry key.
        fn: phi, elementwise on JAX arrays.
        dfn: phi'; autodiff of ``fn`` when None.
        dual: optional closed form ``(a, b, c) -> E phi(u) phi(v)``; without it the duals come
            from the robust quadrature (see the module docstring).
        ddual: optional closed form ``(a, b, c) -> E phi'(u) phi'(v)`` (likewise).
        phi_lipschitz: phi is Lipschitz (a property the theory asks about).
        dphi_lipschitz: phi' is Lipschitz.
        polynomial: phi is a polynomial.
        odd: phi is odd.
        kinks: points where phi or phi' is not smooth; the quadrature splits there. ``()``
            declares phi and phi' smooth. ``None`` (default): without closed forms, phi' is
            probed (:func:`probe_kinks`) and what is found is used, with a warning.
        overwrite: replace an existing registration.

    Returns:
        The new :class:`Activation`.

    Raises:
        ValueError: bad name, non-callable functions, a name already taken, bad kinks.
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
    if kinks is not None:
        try:
            kinks = tuple(float(k) for k in kinks)
        except (TypeError, ValueError) as e:
            raise ValueError(f"kinks must be a sequence of numbers, got {kinks!r}") from e
        if not all(math.isfinite(k) for k in kinks):
            raise ValueError(f"kinks must be finite, got {kinks!r}")
    elif dual is None or ddual is None:
        kinks = probe_kinks(dfn)
        if kinks:
            warnings.warn(
                f"activation {name!r}: phi or phi' looks non-smooth near {list(kinks)}; these points "
                "are used as quadrature breakpoints. Pass kinks=... to declare them (kinks=() for smooth).",
                RuntimeWarning,
                stacklevel=2,
            )
    else:
        kinks = ()
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
        kinks=kinks,
    )
    _REGISTRY[name] = act
    return act


def probe_kinks(dfn: Callable, lo: float = -30.0, hi: float = 30.0, step: float = 1e-3) -> tuple:
    """Points in [lo, hi] where phi' jumps or has a kink, found from its second differences.

    A smooth phi' has second differences of order phi''' * step^2; a jump J gives order J, and a
    kink (a jump J2 of phi'') order J2 * step. Candidates above ``1e-5 (1 + max|phi'|)`` are
    refined to ~1e-13 by zooming in. A heuristic: it cannot see features narrower than ``step``
    or outside [lo, hi].

    Args:
        dfn: phi', elementwise.
        lo: left end of the scan.
        hi: right end.
        step: grid step.

    Returns:
        Sorted tuple of the points found (empty for a smooth phi').
    """
    z = np.arange(lo, hi + step / 2, step)
    d = np.asarray(dfn(jnp.asarray(z)), dtype=float)
    if not np.all(np.isfinite(d)):
        return ()
    d2 = np.abs(d[2:] - 2 * d[1:-1] + d[:-2])
    thr = 1e-5 * (1.0 + np.max(np.abs(d)))
    found: list[float] = []
    for x in z[1:-1][d2 > thr]:
        if found and abs(x - found[-1]) < 5 * step:
            continue
        s = 2 * step
        for _ in range(14):
            grid = x + np.linspace(-s, s, 21)
            h = s / 10
            pts = jnp.asarray(np.concatenate([grid - h, grid, grid + h]))
            dd = np.asarray(dfn(pts), dtype=float).reshape(3, -1)
            x = grid[np.argmax(np.abs(dd[0] - 2 * dd[1] + dd[2]))]
            s /= 10
        found.append(float(x))
    return tuple(sorted({round(f, 12) + 0.0 for f in found}))


def _autodiff_derivative(fn):
    def dfn(z):
        z = jnp.asarray(z)
        flat = z.reshape(-1)
        d = jax.vmap(jax.grad(lambda s: fn(s)))(flat)
        return d.reshape(z.shape)

    return dfn


def available_activations() -> list[str]:
    """Names of the registered activations.

    Returns:
        The names, sorted.
    """
    return sorted(_REGISTRY)


def get_activation(activation: str | Activation) -> Activation:
    """Resolve a registered name (or pass an :class:`Activation` through).

    Args:
        activation: a name from :func:`available_activations` or an Activation.

    Returns:
        The Activation.

    Raises:
        ValueError: an unknown name (the message lists the registered ones).
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str) and activation in _REGISTRY:
        return _REGISTRY[activation]
    raise ValueError(f"activation must be an Activation or one of {available_activations()}, got {activation!r}")


@functools.cache
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
    return 0.5 * (1.0 + jax.lax.erf(z / math.sqrt(2.0))) + z * jnp.exp(-0.5 * z * z) / math.sqrt(2.0 * jnp.pi)


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


def relu_family(pos: float, neg: float, name: str | None = None) -> Activation:
    """The (a, b)-relu ``phi(u) = pos max(u, 0) + neg min(u, 0)`` with closed-form duals.

    ``relu_family(1, 0)`` is relu, ``relu_family(1, alpha)`` leaky relu, ``relu_family(1, -1)``
    the absolute value. Not registered; pass it as ``NeuralODE(activation=...)`` or register it.

    Raises:
        ValueError: ``pos`` or ``neg`` not finite.

    Args:
        pos: slope for u > 0.
        neg: slope for u < 0.
        name: its name (default ``relu_family(pos,neg)``).

    Returns:
        The activation.
    """
    pos, neg = float(pos), float(neg)
    if not (math.isfinite(pos) and math.isfinite(neg)):
        raise ValueError(f"pos and neg must be finite, got {pos!r}, {neg!r}")
    dual, ddual = relu_family_duals(pos, neg)

    def fn(z):
        return pos * jnp.maximum(z, 0.0) + neg * jnp.minimum(z, 0.0)

    def dfn(z):
        return jnp.where(z > 0, pos, jnp.where(z < 0, neg, 0.0)).astype(jnp.result_type(z, float))

    return Activation(
        name=name or f"relu_family({pos:g}, {neg:g})",
        fn=fn,
        dfn=dfn,
        phi_lipschitz=True,
        dphi_lipschitz=pos == neg,
        polynomial=pos == neg,
        odd=pos == neg,
        closed_form_dual=dual,
        closed_form_ddual=ddual,
        kinks=(0.0,),
        arccos_form=pos != neg,
    )


_BUILTIN = [
    Activation(
        name="relu",
        fn=jax.nn.relu,
        dfn=_drelu,
        phi_lipschitz=True,
        dphi_lipschitz=False,
        polynomial=False,
        closed_form_dual=relu_dual,
        closed_form_ddual=relu_ddual,
        kinks=(0.0,),
        arccos_form=True,
    ),
    relu_family(1.0, 0.01, "leaky_relu"),  # jax.nn.leaky_relu's default slope
    relu_family(1.0, -1.0, "abs"),
    softplus(1.0),
    Activation(
        name="tanh", fn=jnp.tanh, dfn=_dtanh, phi_lipschitz=True, dphi_lipschitz=True, polynomial=False, odd=True
    ),
    Activation(
        name="erf",
        fn=jax.lax.erf,
        dfn=_derf,
        phi_lipschitz=True,
        dphi_lipschitz=True,
        polynomial=False,
        odd=True,
        closed_form_dual=erf_dual,
        closed_form_ddual=erf_ddual,
    ),
    Activation(
        name="sigmoid", fn=jax.nn.sigmoid, dfn=_dsigmoid, phi_lipschitz=True, dphi_lipschitz=True, polynomial=False
    ),
    Activation(name="gelu", fn=_gelu, dfn=_dgelu, phi_lipschitz=True, dphi_lipschitz=True, polynomial=False),
    Activation(name="silu", fn=jax.nn.silu, dfn=_dsilu, phi_lipschitz=True, dphi_lipschitz=True, polynomial=False),
    Activation(
        name="quadratic",
        fn=lambda z: z * z,
        dfn=lambda z: 2.0 * z,
        phi_lipschitz=False,
        dphi_lipschitz=True,
        polynomial=True,
        closed_form_dual=quadratic_dual,
        closed_form_ddual=quadratic_ddual,
    ),
    Activation(
        name="identity",
        fn=lambda z: z,
        dfn=lambda z: jnp.ones_like(z),
        phi_lipschitz=True,
        dphi_lipschitz=True,
        polynomial=True,
        odd=True,
        closed_form_dual=identity_dual,
        closed_form_ddual=identity_ddual,
    ),
]
for _a in _BUILTIN:
    _REGISTRY[_a.name] = _a
_REGISTRY["swish"] = _REGISTRY["silu"]
