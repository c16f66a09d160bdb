"""Differentiable kernels: values against kernel_fn, derivatives against finite differences,
transformations, and hyperparameter fitting against a known generating kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from ntk_ode import NeuralODE, kernel_fn
from ntk_ode.hyper import fit_hyperparameters, hyperparameters, traceable_kernel_fn, with_hyperparameters

X = np.random.default_rng(0).standard_normal((4, 3)) * np.array([[1.0], [0.5], [2.0], [1.2]])
WEIGHTS = np.arange(1.0, 17.0).reshape(4, 4) / 16.0


def _fd(f, h, key, eps):
    """Central difference, Richardson-extrapolated (error O(eps^4))."""

    def d(e):
        hp, hm = dict(h), dict(h)
        hp[key] = h[key] + e
        hm[key] = h[key] - e
        return (f(hp) - f(hm)) / (2 * e)

    return (4 * d(eps / 2) - d(eps)) / 3


@pytest.mark.parametrize(
    "act, depth, tol",
    [("relu", None, 1e-7), ("softplus", None, 1e-8), ("erf", 4, 1e-8)],
)
def test_gradients_match_finite_differences(act, depth, tol):
    m = NeuralODE(act, T=1.3, sigma_w=1.2, sigma_u=0.8, sigma_v=1.1, head="phi" if act == "softplus" else "linear")
    kf = traceable_kernel_fn(m, depth, nodes=12, terms=48)
    h = hyperparameters(m)
    f = jax.jit(lambda hh: jnp.sum(kf(hh, X, None, get="ntk") * WEIGHTS) + jnp.sum(kf(hh, X, X[:2], get="nngp")))
    g = jax.jit(jax.grad(f))(h)
    _, jv = jax.jit(lambda hh, t: jax.jvp(f, (hh,), (t,)))(h, {k: jnp.asarray(1.0 if k == "T" else 0.0) for k in h})
    assert abs(float(jv) - float(g["T"])) <= 1e-12 * abs(float(jv))
    for key in h:
        fd = float(_fd(f, h, key, 1e-3))
        assert abs(float(g[key]) - fd) <= tol * abs(fd), (key, float(g[key]), fd)


def test_values_match_kernel_fn_on_the_same_grid():
    # the ResNet's recursion is exact in both; the ODE's collocation at the same nodes agrees
    # (erf's duals are closed forms, so nothing else differs)
    m = NeuralODE("erf", T=1.5, sigma_w=1.4, sigma_u=0.7, sigma_v=1.2)
    h = hyperparameters(m)
    for depth in (5, None):
        ours = traceable_kernel_fn(m, depth, nodes=14)(h, X, X[:3], get=("nngp", "ntk", "ntk_W"))
        ref = kernel_fn(m, depth, nodes=14)(X, X[:3], get=("nngp", "ntk", "ntk_W"))
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_moved_hyperparameters_give_the_moved_models_kernel():
    m = NeuralODE("softplus", T=1.0, sigma_w=1.0)
    new = {"sigma_w": 1.7, "sigma_u": 0.6, "sigma_v": 2.0, "T": 0.7}
    ours = traceable_kernel_fn(m, 6)(new, X, get="ntk")
    ref = kernel_fn(with_hyperparameters(m, new), 6)(X, get="ntk")
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_jit_vmap_and_input_derivatives():
    m = NeuralODE("erf", T=1.0)
    kf = traceable_kernel_fn(m, 3)
    h = hyperparameters(m)
    eager = kf(h, X, get="ntk")
    np.testing.assert_allclose(jax.jit(lambda hh: kf(hh, X, get="ntk"))(h), eager, rtol=1e-13)
    batch = {k: jnp.stack([v, 1.1 * v]) for k, v in h.items()}
    out = jax.vmap(lambda hh: kf(hh, X, get="ntk"))(batch)
    np.testing.assert_allclose(out[0], eager, rtol=1e-13)
    scaled = with_hyperparameters(m, {k: 1.1 * float(v) for k, v in h.items()})
    np.testing.assert_allclose(out[1], kernel_fn(scaled, 3)(X, get="ntk"), rtol=1e-11)
    gx = jax.grad(lambda x: jnp.sum(kf(h, x, get="ntk")))(jnp.asarray(X))
    assert np.all(np.isnan(gx))  # input derivatives are not provided, and say so


def test_bad_arguments():
    m = NeuralODE("erf")
    kf = traceable_kernel_fn(m)
    h = hyperparameters(m)
    with pytest.raises(ValueError, match="hyper must be a dict"):
        kf({"sigma_w": 1.0}, X)
    with pytest.raises(ValueError, match="get must be"):
        kf(h, X, get="bogus")
    with pytest.raises(ValueError, match="x2 has d=2"):
        kf(h, X, X[:, :2])
    with pytest.raises(ValueError, match="nodes must be"):
        traceable_kernel_fn(m, nodes=1)
    with pytest.raises(ValueError, match="objective must be"):
        fit_hyperparameters(m, X, X[:, 0], objective="loo")
    with pytest.raises(ValueError, match="needs x_val"):
        fit_hyperparameters(m, X, X[:, 0], objective="ntk_validation_mse")
    with pytest.raises(ValueError, match="y must have shape"):
        fit_hyperparameters(m, X, X[:3, 0])
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        with_hyperparameters(m, {"width": 3.0})


def test_marginal_likelihood_recovers_a_known_scale():
    # targets drawn from the GP with sigma_v = 1.5 and noise 0.05; fitting sigma_v and the noise
    # from sigma_v = 1 recovers them within the sampling error of N * C = 480 observations
    # (relative standard error of the scale ~ sqrt(2 / 480) / 2 ~ 3.2% in sigma_v)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((24, 3))
    true = NeuralODE("erf", T=1.0, sigma_v=1.5)
    k = np.asarray(traceable_kernel_fn(true, 4)(hyperparameters(true), x, get="nngp"))
    chol = np.linalg.cholesky(k + 0.05 * np.eye(24))
    y = chol @ rng.standard_normal((24, 20))
    fit = fit_hyperparameters(NeuralODE("erf", T=1.0), x, y, fit=("sigma_v",), depth=4, noise=0.2)
    assert fit.converged and fit.grad_norm <= 1e-5 and len(fit.objective) < 51
    assert fit.objective[-1] < fit.objective[0]
    assert abs(fit.hyper["sigma_v"] / 1.5 - 1) < 4 * 0.032
    assert fit.model.sigma_v == pytest.approx(fit.hyper["sigma_v"])
    assert 0.02 < fit.noise < 0.1
    # a second method: the NNGP is sigma_v^2 K0, so in K0's eigenbasis the objective is a sum
    # of scalar terms, minimised over (sigma_v^2, noise) by scipy; L-BFGS must land on its optimum
    lam, U = np.linalg.eigh(k / 1.5**2)
    r2 = np.sum((U.T @ y) ** 2, axis=1)

    def nll(p):
        d = np.exp(p[0]) * lam + np.exp(p[1])
        return 0.5 * np.sum(r2 / d + y.shape[1] * np.log(d))

    best = scipy.optimize.minimize(
        nll, [0.0, np.log(0.2)], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}
    )
    assert fit.hyper["sigma_v"] ** 2 == pytest.approx(np.exp(best.x[0]), rel=1e-4)
    assert fit.noise == pytest.approx(np.exp(best.x[1]), rel=1e-4)
    # the reported objective is the objective at the fitted values
    again = fit_hyperparameters(fit.model, x, y, fit=("sigma_v",), steps=1, depth=4, noise=fit.noise)
    assert again.objective[0] == pytest.approx(fit.objective[-1], rel=1e-10)


def test_validation_mse_decreases():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 3))
    y = np.sin(2 * x[:, :1]) + 0.1 * x[:, 1:2]
    fit = fit_hyperparameters(
        NeuralODE("erf", T=0.5, sigma_w=0.5),
        x[:14],
        y[:14],
        objective="ntk_validation_mse",
        x_val=x[14:],
        y_val=y[14:],
        fit=("sigma_w", "T"),
        optimizer=optax.adam(0.05),
        steps=20,
        tol=0.0,
        depth=3,
    )
    assert fit.objective[-1] < fit.objective[0]
    assert set(fit.trace) == {"sigma_w", "T"} and fit.trace["T"].shape == (21,)


def test_failed_picard_is_nan_on_request_and_loud_by_default():
    x = np.random.default_rng(3).standard_normal((3, 2))
    model = NeuralODE("erf", sigma_w=6.0, T=4.0)
    h = hyperparameters(model)
    with pytest.raises(Exception, match="Picard"):
        jax.block_until_ready(traceable_kernel_fn(model, nodes=2)(h, x, get="nngp"))
    k = traceable_kernel_fn(model, nodes=2, on_failure="nan")(h, x, get="nngp")
    assert np.all(np.isnan(np.asarray(k)))
    with pytest.raises(ValueError, match="on_failure"):
        traceable_kernel_fn(model, on_failure="zero")
