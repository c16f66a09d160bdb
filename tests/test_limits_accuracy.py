"""Kernel error estimates away from the default settings: large pre-activation variance and
kinked activations. The estimate must never be smaller than the true error, and a missed rtol
must be loud (RuntimeWarning)."""

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import ntk_ode as no
from ntk_ode import activations as A
from ntk_ode.limits import kernel_fn


def _gauss(f, v):
    s = math.sqrt(v)
    return integrate.quad(
        lambda z: f(s * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
        -11,
        11,
        points=[0.0],
        epsabs=1e-16,
        epsrel=1e-13,
        limit=500,
    )[0]


def depth_one_diagonal(act, s00, c, head, sigma_v=1.0):
    """NNGP and NTK of one input with itself for the L = 1 ResNet (the recursion of
    docs/theory.md with dt = T, c = dt^2 sigma_w^2), by scipy's adaptive quadrature."""
    phi = lambda u: float(act.fn(jnp.asarray(u)))
    dphi = lambda u: float(act.dfn(jnp.asarray(u)))
    phi00 = _gauss(lambda u: phi(u) ** 2, s00)
    dphi00 = _gauss(lambda u: dphi(u) ** 2, s00)
    s11 = s00 + c * phi00
    if head == "phi":
        nngp = sigma_v**2 * _gauss(lambda u: phi(u) ** 2, s11)
        k11 = sigma_v**2 * _gauss(lambda u: dphi(u) ** 2, s11)
    else:
        nngp, k11 = sigma_v**2 * s11, sigma_v**2
    k00 = k11 * (1.0 + c * dphi00)
    return nngp, nngp + c * k11 * phi00 + s00 * k00


@pytest.mark.parametrize("name", ["tanh", "softplus", "gelu", "sigmoid", "silu", "relu", "erf"])
@pytest.mark.parametrize("head", ["linear", "phi"])
def test_large_variance_error_estimate_bounds_true_error(name, head):
    # sigma_u |x| / sqrt(d) = 3 and sigma_w T = 6: pre-activation variances 9 .. ~1e3
    model = no.NeuralODE(name, T=3.0, sigma_w=2.0, sigma_u=1.5, head=head)
    x = jnp.full((1, 4), 2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k, e = kernel_fn(model, depth=1)(x, with_error=True)
    nngp, ntk = depth_one_diagonal(model.activation, 9.0, 36.0, head)
    for got, est, exact in ((k.nngp, e.nngp, nngp), (k.ntk, e.ntk, ntk)):
        true = abs(float(got[0, 0]) - exact)
        assert est >= true, (name, head, true, est)
        if true > 1e-8 * abs(exact):  # inaccurate: must have been said
            assert any("rtol" in str(w.message) for w in caught), (name, head, true)


def test_registered_kinked_activation_kernel_estimate_is_honest():
    """A leaky relu registered without closed forms: its Mehler series cannot be certified, so
    the solver switches to quadrature duals; the estimate must bound the error against the
    closed-form relu_family kernel."""
    with pytest.warns(RuntimeWarning, match="non-smooth"):
        act = A.register_activation("test_leaky_kernel", lambda z: jnp.where(z > 0, z, 0.2 * z), overwrite=True)
    exact = A.relu_family(1.0, 0.2)
    x = np.asarray([[1.0, 0.2, -0.3], [0.1, 0.9, 0.4], [-0.5, 0.3, 0.8]])
    # (the ODE with quadrature duals works too, but takes minutes: collocation of a kink)
    for depth, xs in ((4, x),):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            k, e = kernel_fn(no.NeuralODE(act, T=1.0), depth=depth)(xs, get="ntk", with_error=True)
            ref = kernel_fn(no.NeuralODE(exact, T=1.0), depth=depth)(xs, get="ntk")
        true = float(np.max(np.abs(np.asarray(k) - np.asarray(ref))))
        assert e >= true, (depth, true, e)
        if depth is not None:
            assert true <= 1e-10 * float(np.max(np.abs(np.asarray(ref))))  # exact recursion, accurate duals


def _richardson_reference(model, x, Ls=tuple(24 * 2**j for j in range(8))):
    """Richardson over a depth ladder of its own (24, 48, ..., 3072; kernel_fn's is 16, 32, ...)."""
    from ntk_ode.limits import richardson

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return richardson([np.asarray(kernel_fn(model, depth=L)(x, get="ntk")) for L in Ls], list(Ls))


@pytest.mark.parametrize("sw,norm", [(1.0, 1.0), (6.0, 3.0)])
def test_relu_ode_kernel_of_an_input_with_itself_has_a_tight_estimate(sw, norm):
    """An input with itself: the kink along t = s, extrapolated from ResNet depths up to 8192 (each
    solved by substitution). At sigma_w T = 6 and |x| / sqrt(d) = 3 rtol 1e-8 is met, and the
    estimate bounds the error against an independent ladder of depths, by 10x to 100x (measured:
    ~100x at sigma_w T = 1, ~10x at 6), asserted within 200x."""
    x = np.asarray([[1.0, 0.2, -0.3, 0.5]])
    x = x * norm * 2.0 / np.linalg.norm(x)
    model = no.NeuralODE("relu", T=1.0, sigma_w=sw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # rtol 1e-8 is met: no warning
        k, e = kernel_fn(model)(x, get="ntk", with_error=True)
    ref = _richardson_reference(model, x, tuple(24 * 2**j for j in range(9)))
    true = float(np.max(np.abs(np.asarray(k) - ref)))
    assert true <= e <= 1e-8 * float(np.abs(ref).max())
    assert e <= 200 * max(true, 1e-13 * float(np.abs(ref).max())), (true, e)


def test_relu_ode_kernel_reaches_1e8_with_honest_estimate():
    """The kink of relu's dPhi along t = s (identical inputs) is handled by extrapolating the
    exact ResNet recursions; other pairs by collocation. Reference: Richardson over L <= 512."""
    x = np.asarray([[1.0, 0.2, -0.3, 0.5], [0.1, 0.9, 0.4, -1.2], [-0.5, 0.3, 0.8, 0.1]])
    model = no.NeuralODE("relu", T=1.0, sigma_w=1.2, sigma_v=1.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # rtol 1e-8 is met: no warning
        k, e = kernel_fn(model)(x, get="ntk", with_error=True)
    ref = _richardson_reference(model, x)
    true = float(np.max(np.abs(np.asarray(k) - ref)))
    assert true <= 1e-8 * np.max(np.abs(ref))
    assert e >= true


def test_relu_near_duplicate_inputs_estimate_is_honest():
    x = np.asarray([[1.0, 0.2, -0.3, 0.5], [1.0, 0.2, -0.3, 0.5 + 1e-4], [-0.5, 0.3, 0.8, 0.1]])
    model = no.NeuralODE("relu", T=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k, e = kernel_fn(model)(x, get="ntk", with_error=True)
    ref = _richardson_reference(model, x)
    true = float(np.max(np.abs(np.asarray(k) - ref)))
    assert e >= true - 1e-10, (true, e)
    assert true <= 1e-8 * np.max(np.abs(ref))  # near-duplicates are extrapolated too


def test_ode_kernel_with_quadrature_duals_end_to_end_has_an_honest_estimate():
    """softplus at sigma_w T = 6: node variances to ~1.6e3, beyond the certified Mehler series, so
    kernel_fn solves with quadrature duals (a warning on the "ntk_ode" logger says so) and the
    4096-term series stands in for the time-grid ladder. Reference: the same quadrature duals on
    48 Chebyshev intervals (the grid error of the 24 kernel_fn picks is ~1e-9 relative, of 48
    ~1e-12). rtol 1e-8 is met and the estimate bounds the error."""
    import jax.numpy as jnp

    from ntk_ode.kernels.duals import Duals
    from ntk_ode.kernels.grids import chebyshev_grid
    from ntk_ode.kernels.problem import Problem

    x = np.random.default_rng(0).standard_normal((1, 5))
    x = x * np.sqrt(5) / np.linalg.norm(x)
    model = no.NeuralODE("softplus", T=1.0, sigma_w=6.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # rtol 1e-8 is met: no warning
        k, e = kernel_fn(model)(x, get=("nngp", "ntk"), with_error=True)
    ref = Problem(model, Duals(model.activation, 192, quad=True), jnp.asarray(x), jnp.asarray(x), True)
    ref = ref.solve(chebyshev_grid(48, 1.0), shard=False)[0]
    for got, est, exact in ((k.nngp, e.nngp, ref[0]), (k.ntk, e.ntk, ref[1])):
        true = abs(float(got[0, 0]) - float(exact))
        assert 1e-12 * abs(exact) < true <= est <= 1e-8 * abs(exact), (true, est, exact)
