"""ntk_ode.sklearn: the kernels in scikit-learn, against kernel_fn, finite differences,
scikit-learn's kernel conventions, and fit_hyperparameters."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
from sklearn.kernel_ridge import KernelRidge
from sklearn.svm import SVC

import ntk_ode as no
from ntk_ode.data import digits
from ntk_ode.hyper import fit_hyperparameters
from ntk_ode.sklearn import NeuralODEKernel

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 3))
Y = RNG.normal(size=(3, 3))


def test_values_are_kernel_fn_at_sigma_w_T():
    k = NeuralODEKernel("erf", "ntk", depth=4, sigma_w_T=1.3, sigma_u=0.8, sigma_v=1.1)
    # sigma_w T = 1.3 as sigma_w = 0.65, T = 2: the tied kernel depends on the product only
    ref = no.kernel_fn(no.NeuralODE("erf", sigma_w=0.65, T=2.0, sigma_u=0.8, sigma_v=1.1), 4)
    np.testing.assert_allclose(k(X), np.asarray(ref(X, get="ntk")), rtol=1e-12)
    np.testing.assert_allclose(k(X, Y), np.asarray(ref(X, Y, get="ntk")), rtol=1e-12)
    # the ODE kernels on the fixed grid, against the certified adaptive ones
    ode = NeuralODEKernel("tanh", "nngp", sigma_w_T=1.5, sigma_u=0.9)
    ref = no.kernel_fn(no.NeuralODE("tanh", sigma_w=1.5, sigma_u=0.9))(X, get="nngp")
    np.testing.assert_allclose(ode(X), np.asarray(ref), rtol=1e-6)


def test_gradient_in_log_hyperparameters_equals_central_differences():
    for bounds in ((1e-2, 10.0), "fixed"):
        k = NeuralODEKernel("softplus", "ntk", depth=3, sigma_w_T=1.2, sigma_u=0.7, sigma_w_T_bounds=bounds)
        K, dK = k(X, eval_gradient=True)
        theta, h = k.theta, 1e-5
        assert dK.shape == (5, 5, theta.size) and theta.size == (3 if bounds != "fixed" else 2)
        for i in range(theta.size):
            up, down = theta.copy(), theta.copy()
            up[i] += h
            down[i] -= h
            fd = (k.clone_with_theta(up)(X) - k.clone_with_theta(down)(X)) / (2 * h)
            assert np.max(np.abs(fd - dK[..., i])) <= 1e-7 * np.max(np.abs(dK[..., i]))


def test_scikit_learn_kernel_conventions():
    k = NeuralODEKernel("erf", "nngp", depth=2, sigma_u=0.5)
    # hyperparameters, theta in log space ordered by name, bounds, clone, set_params, pickle
    assert [h.name for h in k.hyperparameters] == ["sigma_u", "sigma_v", "sigma_w_T"]
    np.testing.assert_allclose(k.theta, np.log([0.5, 1.0, 1.0]))
    assert k.bounds.shape == (3, 2)
    assert clone(k).get_params() == k.get_params()
    np.testing.assert_allclose(k.clone_with_theta(np.log([0.5, 2.0, 1.0]))(X), 4 * k(X), rtol=1e-12)  # sigma_v^2
    np.testing.assert_allclose(pickle.loads(pickle.dumps(k))(X), k(X), rtol=0)
    # diag, k(X) = k(X, X), symmetric positive semidefinite, no gradient with Y
    K = k(X)
    np.testing.assert_allclose(k.diag(X), np.diag(K), rtol=1e-13)
    np.testing.assert_allclose(k(X, X), K, rtol=1e-13)
    assert np.allclose(K, K.T) and np.linalg.eigvalsh(K)[0] > -1e-12 * np.abs(K).max()
    with pytest.raises(ValueError, match="eval_gradient"):
        k(X, Y, eval_gradient=True)
    with pytest.raises(ValueError, match="kind"):
        NeuralODEKernel(kind="ntk_W")(X)
    assert not k.is_stationary() and k.requires_vector_input
    # composition with scikit-learn's kernels: values and gradients
    combo = ConstantKernel(2.0) * k + WhiteKernel(0.1)
    Kc, dKc = combo(X, eval_gradient=True)
    np.testing.assert_allclose(Kc, 2.0 * K + 0.1 * np.eye(5), rtol=1e-12)
    assert dKc.shape == (5, 5, 5)


def test_gaussian_process_fit_finds_the_optimum_of_fit_hyperparameters():
    # targets drawn from the GP itself (sigma_w T = 1.5, sigma_v = 1.2, noise 0.05): an interior optimum
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3))
    K = np.asarray(no.kernel_fn(no.NeuralODE("erf", sigma_w=1.5, sigma_v=1.2), 4)(x, get="nngp"))
    y = np.linalg.cholesky(K + 0.05 * np.eye(60)) @ rng.normal(size=60)
    kernel = NeuralODEKernel("erf", "nngp", depth=4) + WhiteKernel(1e-2, (1e-6, 1.0))
    gp = GaussianProcessRegressor(kernel, optimizer="fmin_l_bfgs_b", normalize_y=False).fit(x, y)
    fitted = gp.kernel_.get_params()
    fit = fit_hyperparameters(
        no.NeuralODE("erf"), x, y, fit=("sigma_w", "sigma_u", "sigma_v"), noise=1e-2, depth=4, steps=200, tol=1e-8
    )
    assert fit.converged
    ours = {
        "k1__sigma_w_T": fit.hyper["sigma_w"],
        "k1__sigma_u": fit.hyper["sigma_u"],
        "k1__sigma_v": fit.hyper["sigma_v"],
    }
    ours["k2__noise_level"] = fit.noise
    for name, value in ours.items():
        assert abs(np.log(fitted[name] / float(value))) < 2e-3, (name, fitted[name], float(value))
    # the noise found is near the one drawn, and the GP predicts with it
    assert 0.02 < fitted["k2__noise_level"] < 0.15
    mean, sd = gp.predict(x, return_std=True)
    assert sd.shape == (60,) and np.all(sd > 0)


def test_svc_and_kernel_ridge_take_the_kernel_and_equal_precomputed_matrices():
    x, y = digits((3, 8), n=40, seed=1)
    xtr, ytr, xte = x[:30], y[:30], x[30:]
    k = NeuralODEKernel("relu", "ntk", depth=4)
    Ktr, Kte = k(xtr), k(xte, xtr)
    svc = SVC(kernel=k, C=10.0).fit(xtr, ytr > 0)
    pre = SVC(kernel="precomputed", C=10.0).fit(Ktr, ytr > 0)
    np.testing.assert_allclose(svc.decision_function(xte), pre.decision_function(Kte), rtol=1e-8, atol=1e-10)
    kr = KernelRidge(kernel=k, alpha=1e-3).fit(xtr, ytr)
    kp = KernelRidge(kernel="precomputed", alpha=1e-3).fit(Ktr, ytr)
    np.testing.assert_allclose(kr.predict(xte), kp.predict(Kte), rtol=1e-10)
