"""Activations and Gaussian duals: closed forms vs quadrature vs Monte Carlo; properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntk_ode import activations as A
from ntk_ode import gaussian as G

CLOSED = ["relu", "erf", "identity", "quadratic"]
SMOOTH_QUAD = ["softplus", "tanh", "sigmoid", "gelu", "silu"]
ALL = CLOSED + SMOOTH_QUAD

rng = np.random.default_rng(0)
A_ = rng.uniform(0.05, 4.0, 40)
B_ = rng.uniform(0.05, 4.0, 40)
R_ = np.concatenate([rng.uniform(-1, 1, 34), [1.0, -1.0, 1.0, -1.0, 0.0, 0.999]])
C_ = R_ * np.sqrt(A_ * B_)


@pytest.mark.parametrize("name", ["erf", "identity", "quadratic"])
def test_smooth_closed_forms_match_gauss_hermite(name):
    act = A.get_activation(name)
    for f, closed in ((act.fn, act.dual), (act.dfn, act.ddual)):
        ref = G.expect_2d(f, f, A_, B_, C_, order=120)
        np.testing.assert_allclose(closed(A_, B_, C_), ref, rtol=0, atol=1e-6 if name == "erf" else 1e-11)
        mehler = G.expect_2d_mehler(f, f, A_, B_, C_)
        np.testing.assert_allclose(closed(A_, B_, C_), mehler, rtol=0, atol=1e-8)


def test_erf_closed_form_matches_high_order_mehler():
    act = A.get_activation("erf")
    np.testing.assert_allclose(
        act.dual(A_, B_, C_), G.expect_2d_mehler(act.fn, act.fn, A_, B_, C_, terms=256), atol=1e-12
    )
    np.testing.assert_allclose(
        act.ddual(A_, B_, C_), G.expect_2d_mehler(act.dfn, act.dfn, A_, B_, C_, terms=256), atol=1e-10
    )


def test_relu_closed_form_matches_quadrature_to_its_algebraic_accuracy():
    # Gauss-Hermite converges only algebraically for the kink; the error must shrink with order.
    act = A.get_activation("relu")
    errs = []
    for order in (50, 200):
        q = G.expect_2d(act.fn, act.fn, A_, B_, C_, order=order)
        errs.append(np.max(np.abs(np.asarray(q) - np.asarray(act.dual(A_, B_, C_)))))
    assert errs[1] < 3e-3 and errs[1] < errs[0] / 3


@pytest.mark.parametrize("name", CLOSED)
def test_closed_forms_match_monte_carlo(name):
    act = A.get_activation(name)
    a, b, c = 1.3, 0.7, 0.5
    L = np.linalg.cholesky(np.array([[a, c], [c, b]]))
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (400_000, 2))) @ L.T
    for f, closed in ((act.fn, act.dual), (act.dfn, act.ddual)):
        s = np.asarray(f(jnp.asarray(z[:, 0])) * f(jnp.asarray(z[:, 1])))
        se = s.std() / np.sqrt(s.size)
        assert abs(s.mean() - float(closed(a, b, c))) < 4 * se + 1e-12


@pytest.mark.parametrize("name", SMOOTH_QUAD)
def test_quadrature_duals_two_methods_agree(name):
    # Mehler series of 1-D Gauss-Hermite coefficients vs tensor Gauss-Hermite at high order.
    act = A.get_activation(name)
    tol = {"tanh": 1e-6, "gelu": 1e-8}.get(name, 1e-9)
    for f, method_dual in ((act.fn, act.dual), (act.dfn, act.ddual)):
        ref = G.expect_2d(f, f, A_, B_, C_, order=300)
        np.testing.assert_allclose(method_dual(A_, B_, C_), ref, atol=tol * 10 if f is act.dfn else tol)


@pytest.mark.parametrize("name", ALL)
def test_derivative_matches_autodiff(name):
    act = A.get_activation(name)
    z = jnp.linspace(-3.0, 3.0, 41) + 0.013
    np.testing.assert_allclose(act.dfn(z), jax.vmap(jax.grad(act.fn))(z), atol=1e-12)


@st.composite
def covariances(draw):
    a = draw(st.floats(0.0, 5.0))
    b = draw(st.floats(0.0, 5.0))
    r = draw(st.one_of(st.just(1.0), st.just(-1.0), st.floats(-1.0, 1.0)))
    return a, b, r * np.sqrt(a * b)


_JITTED = {}


def _jitted(name):
    if name not in _JITTED:
        act = A.get_activation(name)
        _JITTED[name] = (jax.jit(act.dual), jax.jit(act.ddual))
    return _JITTED[name]


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=25, deadline=None)
@given(cov=covariances())
def test_duals_finite_symmetric_psd(name, cov):
    a, b, c = (np.float64(t) for t in cov)
    for dual in _jitted(name):
        k = np.array([[float(dual(a, a, a)), float(dual(a, b, c))], [float(dual(b, a, c)), float(dual(b, b, b))]])
        assert np.all(np.isfinite(k))
        assert k[0, 1] == pytest.approx(k[1, 0], abs=1e-12)
        # 1e-8: relu's order-0 arc-cosine kernel turns a rounding of rho near 1 into sqrt(eps)
        assert np.linalg.eigvalsh(k).min() >= -1e-8 * max(1.0, np.abs(k).max())


def test_zero_variance_and_perfect_correlation():
    for name in ALL:
        act = A.get_activation(name)
        # a = 0: u == 0, so E phi(u) phi(v) = phi(0) E phi(v)
        v = act.dual(0.0, 1.5, 0.0)
        assert np.isfinite(v)
        expect = float(act.fn(0.0)) * float(G.expect_1d(act.fn, 1.5, order=200))
        assert abs(float(v) - expect) < (1e-3 if name == "relu" else 1e-9)
        # rho = 1 with a = b: E phi(u)^2
        sq = float(G.expect_1d(lambda z: act.fn(z) ** 2, 2.0, order=200))
        assert abs(float(act.dual(2.0, 2.0, 2.0)) - sq) < (1e-3 if name == "relu" else 1e-8)


def test_duals_jit_vmap_grad():
    act = A.get_activation("softplus")
    f = jax.jit(jax.vmap(act.dual))
    out = f(jnp.array(A_[:5]), jnp.array(B_[:5]), jnp.array(C_[:5]))
    assert out.shape == (5,)
    # d/dc E phi(u) phi(v) = E phi'(u) phi'(v)  (Price's theorem)
    g = jax.grad(lambda c: act.dual(1.2, 0.8, c))(0.3)
    assert float(g) == pytest.approx(float(act.ddual(1.2, 0.8, 0.3)), abs=1e-9)


def test_properties():
    assert not A.get_activation("relu").dphi_lipschitz
    assert A.get_activation("quadratic").polynomial and not A.get_activation("quadratic").phi_lipschitz
    assert A.get_activation("identity").polynomial
    assert A.get_activation("tanh").odd and not A.get_activation("softplus").odd
    assert A.get_activation("swish") is A.get_activation("silu")


def test_softplus_beta():
    act = A.softplus(2.0)
    z = jnp.linspace(-2, 2, 9)
    np.testing.assert_allclose(act.fn(z), jnp.log1p(jnp.exp(2 * z)) / 2, atol=1e-14)
    assert A.softplus(2.0) is act
    with pytest.raises(ValueError, match="beta"):
        A.softplus(-1.0)


def test_register_and_errors():
    act = A.register_activation("cube_test", lambda z: z**3, polynomial=True, phi_lipschitz=False, overwrite=True)
    np.testing.assert_allclose(act.dfn(jnp.array([2.0])), [12.0])
    # E u^3 v^3 = 9 a b c + 6 c^3
    a, b, c = 1.1, 0.9, 0.4
    assert float(act.dual(a, b, c)) == pytest.approx(9 * a * b * c + 6 * c**3, abs=1e-9)
    assert A.get_activation("cube_test") is act
    with pytest.raises(ValueError, match="already registered"):
        A.register_activation("cube_test", lambda z: z)
    with pytest.raises(ValueError, match="activation"):
        A.get_activation("nope")
    with pytest.raises(ValueError, match="method"):
        A.get_activation("softplus").dual(1.0, 1.0, 0.5, method="bad")
    with pytest.raises(ValueError, match="closed-form"):
        A.get_activation("softplus").dual(1.0, 1.0, 0.5, method="closed")
