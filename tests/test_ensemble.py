"""predict.gradient_descent_mse_ensemble: against closed forms, a second method, and Monte Carlo
ensembles of trained finite-width networks."""

import jax
import numpy as np
import pytest
from scipy.linalg import expm

import ntk_ode as no
from ntk_ode import predict
from ntk_ode.experiments.ensembles import trained_outputs, variance_z

RNG = np.random.default_rng(0)
D, N, M = 3, 6, 4
X_TRAIN, X_TEST = RNG.normal(size=(N, D)), RNG.normal(size=(M, D))
Y_TRAIN = np.sin(2 * X_TRAIN[:, 0])
MODEL = no.NeuralODE("erf")
DEPTH = 4


def _kernels():
    k = no.kernel_fn(MODEL, DEPTH)(np.vstack([X_TRAIN, X_TEST]), None, ("nngp", "ntk"))
    return np.asarray(k.nngp), np.asarray(k.ntk)


def test_ensemble_equals_gp_inference_gradient_descent_and_matrix_exponentials():
    kfn = no.kernel_fn(MODEL, DEPTH)
    Kn, Kt = _kernels()
    tr, te = slice(0, N), slice(N, N + M)
    eta = 0.7
    pf = predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN, learning_rate=eta)
    # t = infinity, NNGP: the GP posterior
    g = pf(None, X_TEST, "nngp", True)
    gp = predict.gp_inference(Kn[tr, tr], Y_TRAIN)(Kn[te, tr], Kn[te, te])
    np.testing.assert_allclose(g.mean, gp.mean, atol=1e-12)
    np.testing.assert_allclose(g.covariance, gp.covariance, atol=1e-12)
    for t in (0.0, 3.0, 50.0):
        both = pf(t, X_TEST, None, True)
        # the mean is kernel gradient descent's prediction from f_0 = 0
        gd = predict.gradient_descent_mse(Kt[tr, tr], Y_TRAIN, learning_rate=eta, k_test_train=Kt[te, tr])
        np.testing.assert_allclose(both.ntk.mean, gd(t, 0.0, 0.0)[1], atol=1e-12)
        # covariances by explicit matrix exponentials (scipy), the formulas of Lee et al. (2019)
        A = Kt[te, tr] @ np.linalg.solve(Kt[tr, tr], np.eye(N) - expm(-eta * t * Kt[tr, tr] / N))
        C = Kn[te, te] + A @ Kn[tr, tr] @ A.T - A @ Kn[tr, te] - Kn[te, tr] @ A.T
        np.testing.assert_allclose(both.ntk.covariance, C, atol=1e-10)
        B = Kn[te, tr] @ np.linalg.solve(Kn[tr, tr], np.eye(N) - expm(-2 * eta * t * Kn[tr, tr] / N))
        np.testing.assert_allclose(both.nngp.covariance, Kn[te, te] - B @ Kn[tr, te], atol=1e-10)
        if t == 0.0:  # the prior: mean 0, covariance the NNGP
            np.testing.assert_allclose(both.ntk.mean, 0.0, atol=0)
            np.testing.assert_allclose(both.ntk.covariance, Kn[te, te], atol=1e-12)
    # an array of times adds a leading axis; the diagonal is the full covariance's diagonal;
    # batches of test inputs give the same numbers
    ts = np.array([1.0, 5.0])
    full = pf(ts, X_TEST, "ntk", True)
    diag = predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN, learning_rate=eta, batch_size=3)(
        ts, X_TEST, "ntk", "diagonal"
    )
    assert full.covariance.shape == (2, M, M) and diag.covariance.shape == (2, M)
    np.testing.assert_allclose(diag.covariance, np.diagonal(full.covariance, axis1=1, axis2=2), atol=1e-13)
    np.testing.assert_allclose(diag.mean, full.mean, atol=1e-13)
    # on the training inputs at infinite time: the targets, with no spread left
    train = pf(None, None, "ntk", True)
    np.testing.assert_allclose(train.mean, Y_TRAIN, atol=1e-9)
    np.testing.assert_allclose(train.covariance, 0.0, atol=1e-9)
    # the discrete iteration of gradient descent: matrix powers in place of exponentials
    dis = predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN, learning_rate=eta, discrete=True)
    for t in (1, 7):
        P = np.linalg.matrix_power(np.eye(N) - eta * Kt[tr, tr] / N, t)
        A = Kt[te, tr] @ np.linalg.solve(Kt[tr, tr], np.eye(N) - P)
        C = Kn[te, te] + A @ Kn[tr, tr] @ A.T - A @ Kn[tr, te] - Kn[te, tr] @ A.T
        g = dis(t, X_TEST, "ntk", True)
        np.testing.assert_allclose(g.mean, A @ Y_TRAIN, atol=1e-12)
        np.testing.assert_allclose(g.covariance, C, atol=1e-10)
    # several output columns are independent copies; the loss is divided by y_train.size (as in
    # neural-tangents), so two columns run at half the speed
    two = predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, np.stack([Y_TRAIN, -Y_TRAIN], 1), learning_rate=eta)
    m2 = two(3.0, X_TEST, "ntk")
    np.testing.assert_allclose(m2[:, 0], -m2[:, 1], atol=1e-13)
    np.testing.assert_allclose(m2[:, 0], pf(1.5, X_TEST, "ntk"), atol=1e-13)


def test_variance_z_is_standard_normal_for_gaussian_samples():
    rng = np.random.default_rng(3)
    samples = rng.normal(0.0, 2.0, size=(20000, 64))
    z = variance_z(samples.var(1, ddof=1), 4.0, 64)
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.std() - 1) < 0.02  # the chi-square's skew is gone
    assert abs(np.mean(z > 3) - 0.00135) < 0.001


def _check_against_monte_carlo(kfn, apply, width, members, steps):
    Kt = np.asarray(kfn(X_TRAIN, None, "ntk"))
    eta = 0.25 * N / np.linalg.eigvalsh(Kt)[-1]  # eta lambda_max / N = 0.25
    pf = predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN, learning_rate=eta, discrete=True)
    init = lambda key: MODEL.init(key, D, width)
    keys = jax.random.split(jax.random.PRNGKey(1), members)
    out = trained_outputs(apply, init, X_TRAIN, Y_TRAIN, X_TEST, steps, eta, keys)
    for i, s in enumerate(steps):
        g = pf(s, X_TEST, "ntk", "diagonal")
        mean, var = out[:, i].mean(0), out[:, i].var(0, ddof=1)
        # standard scores if the prediction is right: the mean's with its standard error, the
        # sample variance's on the scale where chi-square / dof is nearly normal (it is skewed)
        z_mean = (mean - g.mean) / np.sqrt(g.covariance / members)
        z_var = variance_z(var, g.covariance, members)
        assert np.all(np.abs(z_mean) < 3) and np.all(np.abs(z_var) < 3), (width, s, z_mean, z_var)
        if s > 0:  # training moved the ensemble: the check is not only the prior's
            assert np.all(g.covariance < pf(0.0, X_TEST, "ntk", "diagonal").covariance)


def test_ensemble_matches_64_trained_resnets_of_width_256():
    # the weight-tied ResNet of depth 4, erf; 64 members trained for 0, 4, 40, 160 steps
    apply = lambda p, x: MODEL.apply(p, x, depth=DEPTH)
    _check_against_monte_carlo(no.kernel_fn(MODEL, DEPTH), apply, 256, 64, (0, 4, 40, 160))


def test_ensemble_matches_64_trained_neural_odes_of_width_256():
    # the Neural ODE (RK4, 4 steps: its discretization error is far below the Monte Carlo error)
    apply = lambda p, x: MODEL.apply(p, x, solver=no.Solver("rk4", steps=4))
    _check_against_monte_carlo(no.kernel_fn(MODEL), apply, 256, 64, (0, 4, 40))


def test_ensemble_arguments_are_named():
    kfn = no.kernel_fn(MODEL, DEPTH)
    with pytest.raises(ValueError, match="learning_rate"):
        predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN, learning_rate=0.0)
    with pytest.raises(ValueError, match="y_train must have shape"):
        predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN[:3])
    with pytest.raises(ValueError, match="batch_size"):
        predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN, batch_size=0)
    pf = predict.gradient_descent_mse_ensemble(kfn, X_TRAIN, Y_TRAIN)
    with pytest.raises(ValueError, match="t must be None"):
        pf(-1.0, X_TEST)
    with pytest.raises(ValueError, match="x_test must have shape"):
        pf(1.0, X_TEST[:, :2])
    with pytest.raises(ValueError, match="compute_cov"):
        pf(1.0, X_TEST, "ntk", "full")
    with pytest.raises(ValueError, match="get"):
        pf(1.0, X_TEST, "ntk_W")
