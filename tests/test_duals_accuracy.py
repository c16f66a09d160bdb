"""Gaussian duals at any variance and correlation: every activation against an independent
reference (adaptive Gauss-Kronrod, scipy's QUADPACK, nested over the conditional density), and
error estimates that are never smaller than the measured error."""

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from ntk_ode import activations as A
from ntk_ode import gaussian as G

Z = 11.0


def _pdf(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


EPSABS = 1e-15


def _quad(fun, pts):
    pts = sorted(set(pts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QUADPACK's roundoff notes near 1e-16
        return sum(
            integrate.quad(fun, lo, hi, epsabs=EPSABS, epsrel=1e-13, limit=100)[0] for lo, hi in zip(pts[:-1], pts[1:])
        )


def reference(f, g, a, b, rho, kinks=(0.0,)):
    """E f(u) g(v) by nested adaptive quadrature in float64 (independent of ntk_ode)."""
    sa, sb = math.sqrt(a), math.sqrt(b)
    sr = math.sqrt(max(1.0 - rho * rho, 0.0))
    clip = lambda z: max(-Z, min(Z, z))

    def inner(z1):
        m = sb * rho * z1
        if sr * sb == 0.0:
            return g(m)
        s = sb * sr
        return _quad(lambda z2: g(m + s * z2) * _pdf(z2), [-Z, Z, *[clip((k - m) / s) for k in kinks]])

    pts = [-Z, Z, 0.0, *[clip(k / sa) for k in kinks if sa > 0]]
    pts += [clip(k / (sb * rho)) for k in kinks if rho != 0 and sb > 0]
    return _quad(lambda z1: f(sa * z1) * _pdf(z1) * inner(z1), pts)


def second_moment(f, a, kinks=(0.0,)):
    sa = math.sqrt(a)
    return _quad(lambda z: f(sa * z) ** 2 * _pdf(z), [-Z, Z, 0.0, *[max(-Z, min(Z, k / sa)) for k in kinks]])


def _sig(u):
    return 0.5 * (1.0 + math.tanh(0.5 * u))


# plain-math versions (independent of the package's JAX code, and fast as scalar callbacks)
SCALAR = {
    "softplus": (lambda u: max(u, 0.0) + math.log1p(math.exp(-abs(u))), _sig),
    "tanh": (math.tanh, lambda u: 1.0 - math.tanh(u) ** 2),
    "sigmoid": (_sig, lambda u: _sig(u) * (1.0 - _sig(u))),
    "gelu": (
        lambda u: 0.5 * u * (1.0 + math.erf(u / math.sqrt(2.0))),
        lambda u: 0.5 * (1.0 + math.erf(u / math.sqrt(2.0))) + u * math.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi),
    ),
    "silu": (lambda u: u * _sig(u), lambda u: _sig(u) * (1.0 + u * (1.0 - _sig(u)))),
    "relu": (lambda u: max(u, 0.0), lambda u: 1.0 if u > 0 else 0.0),
    "leaky_relu": (lambda u: u if u > 0 else 0.01 * u, lambda u: 1.0 if u > 0 else (0.01 if u < 0 else 0.0)),
    "abs": (abs, lambda u: 1.0 if u > 0 else (-1.0 if u < 0 else 0.0)),
    "erf": (math.erf, lambda u: 2.0 / math.sqrt(math.pi) * math.exp(-u * u)),
}


# variance pairs and correlations: tiny, moderate, large (1e4), rho = +-1 and near-1
CASES = [
    (1e-8, 1.0, 0.5),
    (0.3, 2.0, -1.0),
    (9.0, 9.0, 1.0),
    (45.0, 9.0, 0.7),
    (45.0, 45.0, -0.999),
    (1e4, 1e4, -0.999),
    (1e4, 3.0, 1.0),
    (300.0, 1e4, 0.0),
]

QUAD = ["softplus", "tanh", "sigmoid", "gelu", "silu"]
CLOSED = ["relu", "leaky_relu", "abs", "erf", "identity", "quadratic"]


@pytest.mark.parametrize("name", QUAD + ["relu", "leaky_relu", "abs", "erf"])
@pytest.mark.parametrize("deriv", [False, True])
def test_duals_match_independent_reference_with_honest_estimates(name, deriv):
    act = A.get_activation(name)
    fs = SCALAR[name][1 if deriv else 0]
    kinks = act.breakpoints
    a = np.array([c[0] for c in CASES])
    b = np.array([c[1] for c in CASES])
    r = np.array([c[2] for c in CASES])
    c = r * np.sqrt(a * b)
    val, err = (act.ddual_and_error if deriv else act.dual_and_error)(a, b, c)
    for i, (ai, bi, ri) in enumerate(CASES):
        ref = reference(fs, fs, ai, bi, ri, kinks)
        scale = math.sqrt(second_moment(fs, ai, kinks) * second_moment(fs, bi, kinks))
        true = abs(float(val[i]) - ref)
        assert true <= 1e-12 * scale + 1e-300, (name, deriv, CASES[i], true / scale)
        # the estimate bounds the error (the reference itself is good to ~1e-14 of the scale)
        assert float(err[i]) + 2e-14 * scale >= true, (name, deriv, CASES[i], true, float(err[i]))


@pytest.mark.parametrize("name", CLOSED)
def test_closed_forms_agree_with_robust_quadrature(name):
    act = A.get_activation(name)
    a = np.array([1e-8, 0.5, 30.0, 1e4, 2.0])
    b = np.array([1.0, 0.5, 7.0, 1e4, 5.0])
    r = np.array([0.3, 1.0, -1.0, 0.999999, -0.2])
    c = r * np.sqrt(a * b)
    for f, closed in ((act.fn, act.dual), (act.dfn, act.ddual)):
        q, e = G.expect_2d_quad(f, f, a, b, c, act.breakpoints, act.breakpoints)
        scale = np.sqrt(
            np.asarray(G.expect_1d_quad(lambda z: f(z) ** 2, a)[0])
            * np.asarray(G.expect_1d_quad(lambda z: f(z) ** 2, b)[0])
        )
        np.testing.assert_array_less(np.abs(np.asarray(q) - np.asarray(closed(a, b, c))), 1e-12 * scale + 1e-300)


def test_relu_family_special_cases():
    a, b, c = 1.7, 0.6, -0.4
    assert float(A.relu_family(1.0, 1.0).dual(a, b, c)) == pytest.approx(c, abs=1e-15)  # identity
    assert float(A.relu_family(1.0, 1.0).ddual(a, b, c)) == pytest.approx(1.0, abs=1e-15)
    assert float(A.relu_family(1.0, 0.0).dual(a, b, c)) == pytest.approx(
        float(A.get_activation("relu").dual(a, b, c)), abs=1e-15
    )
    # abs: E|u||v| at rho = 0 is 2 sqrt(ab) / pi
    assert float(A.get_activation("abs").dual(a, b, 0.0)) == pytest.approx(2 * math.sqrt(a * b) / math.pi, rel=1e-14)
    with pytest.raises(ValueError, match="pos and neg"):
        A.relu_family(float("nan"), 0.0)


def test_registered_kinked_activation_is_probed_and_accurate():
    with pytest.warns(RuntimeWarning, match="non-smooth near"):
        act = A.register_activation("test_leaky_probe", lambda z: jnp.where(z > 0, z, 0.2 * z), overwrite=True)
    assert act.kinks == (0.0,)
    ref = A.relu_family(1.0, 0.2)
    a, b = np.array([0.7, 400.0, 2.0]), np.array([1.3, 400.0, 2.0])
    c = np.array([0.5, 399.9, -2.0])
    for mine, exact in ((act.dual_and_error, ref.dual), (act.ddual_and_error, ref.ddual)):
        v, e = mine(a, b, c)
        true = np.abs(np.asarray(v) - np.asarray(exact(a, b, c)))
        assert np.all(true <= 1e-12 * np.abs(np.asarray(exact(a, a, a)) * np.asarray(exact(b, b, b))) ** 0.5)
        assert np.all(np.asarray(e) >= true)
    # a kink away from 0 is found to ~1e-12
    assert A.probe_kinks(lambda z: jnp.where(z > 1.3, 1.0, jnp.exp(z - 1.3)))[0] == pytest.approx(1.3, abs=1e-10)
    assert A.probe_kinks(lambda z: 1.0 / (1.0 + jnp.exp(-z))) == ()
    with pytest.raises(ValueError, match="kinks"):
        A.register_activation("test_bad_kinks", jnp.tanh, kinks=(float("inf"),), overwrite=True)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_float32_duals_with_honest_estimates(name):
    act = A.get_activation(name)
    a = np.array([0.3, 45.0, 1e4], np.float32)
    c = np.array([0.3, -45.0 * 0.7, 1e4], np.float32)
    for mine, ref in ((act.dual_and_error, act.dual), (act.ddual_and_error, act.ddual)):
        v, e = mine(a, a, c)
        assert v.dtype == jnp.float32
        exact = np.asarray(ref(a.astype(np.float64), a.astype(np.float64), c.astype(np.float64)))
        true = np.abs(np.asarray(v, np.float64) - exact)
        scale = np.sqrt(
            np.asarray(
                G.expect_1d_quad(
                    lambda z: (act.dfn if mine == act.ddual_and_error else act.fn)(z) ** 2, a.astype(np.float64)
                )[0]
            )
        )
        assert np.all(true <= 1e-5 * scale**2 + 1e-30), (name, true / scale**2)
        assert np.all(np.asarray(e, np.float64) >= true), (name, true, e)


# (a, b, rho) across the range the Mehler ladder covers and beyond it (where it must hand over)
LADDER_CASES = [
    (0.5, 2.0, -1.0),
    (9.0, 9.0, 1.0),
    (30.0, 45.0, 0.999),
    (45.0, 45.0, -1.0),
    (120.0, 60.0, 0.3),
    (1e4, 1e4, 1.0),
]


@pytest.mark.parametrize("name", QUAD)
def test_engine_duals_at_any_variance_match_the_reference_within_their_certificate(name):
    """The duals the engine picks (Mehler up to 4096 terms, screened in one table, else
    quadrature) at a pair of node variances, against the nested adaptive reference: within their
    certified relative bound (1e-11 wanted), both derivatives, rho = +-1 included."""
    from ntk_ode.kernels.adapt import TERMS_LADDER, pick_duals
    from ntk_ode.kernels.duals import Duals, mehler_certificate, mehler_screen, quad_certificate

    act = A.get_activation(name)
    used = set()
    for a, b, rho in LADDER_CASES:
        v = np.array([a, b])
        certify = lambda d, v=v: quad_certificate(d, v) if d.quad else mehler_certificate(d, v)
        duals, bound = pick_duals(Duals(act, 192), certify, 1e-11, screen=lambda ks, v=v: mehler_screen(act, v, ks))
        used.add("quad" if duals.quad else duals.terms)
        va, vb, S = (jnp.asarray([x], jnp.float64) for x in (a, b, rho * math.sqrt(a * b)))
        ta, tb = duals.tables(va), duals.tables(vb)
        for which, fs in enumerate(SCALAR[name]):
            got = float((duals.dphi if which else duals.phi)(va, vb, S[:, None], ta, tb)[0, 0])
            ref = reference(fs, fs, a, b, rho, act.breakpoints)
            scale = math.sqrt(second_moment(fs, a, act.breakpoints) * second_moment(fs, b, act.breakpoints))
            true = abs(got - ref) / scale
            assert true <= 1e-11, (name, which, (a, b, rho), duals, true)
            assert bound + 2e-14 >= true, (name, which, (a, b, rho), duals, bound, true)  # reference: ~1e-14
    # the ladder was climbed (at least one rung past 640) and handed over to quadrature at 1e4
    assert "quad" in used and any(k != "quad" and k > 640 for k in used), used
    assert max(TERMS_LADDER) == 4096
