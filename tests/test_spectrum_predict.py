"""Spectra, Assumption-1 checks, Gegenbauer coefficients, kernel predictions."""

import jax
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode.data import sphere, to_sphere
from ntk_ode.predict import gp_inference, gradient_descent_mse, max_learning_rate
from ntk_ode.spectrum import check_assumption1, check_psd, condition_number, eigenvalues, gegenbauer_coefficients


def test_identity_activation_kernels_are_rank_deficient_softplus_is_not():
    d, N = 3, 10
    x = sphere(N, d, seed=0)
    for depth in (None,):
        k_id = np.asarray(no.kernel_fn(no.NeuralODE("identity"), depth=depth)(x, get="ntk"))
        ev = eigenvalues(k_id)
        assert ev[0] < 1e-10 * ev[-1]
        k_sp = np.asarray(no.kernel_fn(no.NeuralODE("softplus"), depth=depth)(x, get="ntk"))
        ev = eigenvalues(k_sp)
        assert ev[0] > 1e-9 * ev[-1]  # ~3.5e-7: small (smooth kernel, d = 3) but far from the identity's ~1e-16
    model = no.NeuralODE("identity")
    p = model.init(jax.random.PRNGKey(0), d=d, width=64)
    H = np.asarray(no.empirical_ntk(model, p, x, depth=4))
    ev = eigenvalues(H)
    assert ev[0] < 1e-10 * ev[-1]


def test_assumption1_flags():
    x = sphere(6, 4, seed=1)
    assert check_assumption1(no.NeuralODE("softplus"), x).ok
    r = check_assumption1(no.NeuralODE("identity"), x)
    assert not r.ok and any("polynomial" in s for s in r.reasons)
    r = check_assumption1(no.NeuralODE("quadratic"), x)
    assert any("polynomial" in s for s in r.reasons) and any("not Lipschitz" in s for s in r.reasons)
    xa = np.concatenate([x, -x[:1]])
    r = check_assumption1(no.NeuralODE("tanh"), xa)
    assert r.antipodal_pairs == [(0, 6)] and any("antipodal" in s for s in r.reasons)
    assert check_assumption1(no.NeuralODE("softplus"), xa).ok  # not odd: antipodes are harmless
    r = check_assumption1(no.NeuralODE("softplus"), 2 * x)
    assert not r.on_sphere and any("sphere" in s for s in r.reasons)
    r = check_assumption1(no.NeuralODE("relu"), x)
    assert any("phi'" in s for s in r.reasons)
    xa = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (10, 3)))
    # tanh, no bias, antipodal pair: the Gram matrix is singular (Prop 3's caveat)
    xs = to_sphere(np.concatenate([xa[:4], -xa[:1]]))
    K = np.asarray(no.kernel_fn(no.NeuralODE("tanh"))(xs, get="ntk"))
    assert eigenvalues(K)[0] < 1e-10 * eigenvalues(K)[-1]


def test_gegenbauer_coefficients():
    # k(t) = t^2 in d = 3: t^2 = 1/3 P0 + 2/3 P2 (Legendre)
    a = gegenbauer_coefficients(lambda t: t**2, 3, 4)
    np.testing.assert_allclose(a, [1 / 3, 0, 2 / 3, 0, 0], atol=1e-12)
    # identity activation: the zonal kernel is affine in t -> only degrees 0 and 1
    d = 5
    kfn = no.kernel_fn(no.NeuralODE("identity"))

    def zonal(t):
        e1 = np.eye(d)[:1]
        pts = np.stack([t, np.sqrt(1 - t**2)] + [np.zeros_like(t)] * (d - 2), axis=1)
        return np.asarray(kfn(e1, pts, get="ntk"))[0]

    a = gegenbauer_coefficients(zonal, d, 5, nodes=24)
    assert np.all(np.abs(a[2:]) < 1e-10 * np.abs(a[:2]).max()) and a[1] > 0
    kfs = no.kernel_fn(no.NeuralODE("softplus"))
    zs = lambda t: np.asarray(
        kfs(np.eye(d)[:1], np.stack([t, np.sqrt(1 - t**2)] + [np.zeros_like(t)] * (d - 2), axis=1), get="ntk")
    )[0]
    a = gegenbauer_coefficients(zs, d, 5, nodes=24)
    assert np.all(a > 0)


def test_psd_helpers():
    assert check_psd(np.eye(3)) == 1.0
    with pytest.raises(ValueError, match="positive semi-definite"):
        check_psd(np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        check_psd(np.array([[1.0, 0.5], [0.0, 1.0]]))
    assert condition_number(np.diag([1.0, 4.0])) == 4.0


def _problem(k=None):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    K = A @ A.T + 0.1 * np.eye(6)
    B = rng.standard_normal((3, 6))
    y = rng.standard_normal(6 if k is None else (6, k))
    return K, B @ A.T, y


@pytest.mark.parametrize("k", [None, 3])
def test_discrete_prediction_matches_explicit_iteration(k):
    K, Kte, y = _problem(k)
    eta = 1.0 / np.linalg.eigvalsh(K)[-1]
    f, ft = np.zeros(y.shape), np.zeros((3,) + y.shape[1:])
    for _ in range(37):
        r = f - y
        f, ft = f - eta * K @ r, ft - eta * Kte @ r
    fn = gradient_descent_mse(K, y, eta, discrete=True, normalization="sum")
    pf, pt = fn(37, 0.0, 0.0, Kte)
    np.testing.assert_allclose(pf, f, atol=1e-12)
    np.testing.assert_allclose(pt, ft, atol=1e-12)
    # an array of times gives a leading time axis; k_test_train can be fixed at build time
    pf2, pt2 = gradient_descent_mse(K, y, eta, discrete=True, normalization="sum", k_test_train=Kte)(
        np.array([0, 37]), 0.0, 0.0
    )
    np.testing.assert_allclose(pt2[1], ft, atol=1e-12)
    np.testing.assert_allclose(pf2[0], 0.0, atol=1e-12)


@pytest.mark.parametrize("k", [None, 2])
def test_flow_follows_the_neural_tangents_ode_and_t_none_is_the_gp_mean(k):
    """d f/dt = -eta / |y| K (f - y) (neural-tangents' normalization), by central differences;
    t = None (Cholesky) equals t = 1e9 (eigenbasis) and the noiseless GP posterior mean."""
    K, Kte, y = _problem(k)
    fn = gradient_descent_mse(K, y, 0.5)
    h = 1e-5
    f1 = fn(1.0, 0.3)
    deriv = (fn(1.0 + h, 0.3) - fn(1.0 - h, 0.3)) / (2 * h)
    np.testing.assert_allclose(deriv, -0.5 / y.size * K @ (f1 - y), atol=1e-8)
    a, b = fn(None, 0.0, 0.0, Kte)
    mean = gp_inference(K, y)(Kte)
    np.testing.assert_allclose(a, y, atol=1e-12)
    np.testing.assert_allclose(b, mean, atol=1e-9)
    np.testing.assert_allclose(fn(1e9, 0.0, 0.0, Kte)[1], mean, atol=1e-9)
    assert fn(2.0, None, 0.0, Kte).shape == (3,) + y.shape[1:]  # only the test outputs
    # traceable
    jitted = jax.jit(lambda K: gradient_descent_mse(K, y, 0.5)(2.0, 0.0, 0.0, Kte)[1])(K)
    np.testing.assert_allclose(jitted, fn(2.0, 0.0, 0.0, Kte)[1], atol=1e-12)


def test_gp_inference_posterior_against_the_schur_complement():
    K, Kte, y = _problem()
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((9, 9))
    full = Z @ Z.T  # a joint prior over 6 train + 3 test points
    Ktr, Kte, Ktt = full[:6, :6], full[6:, :6], full[6:, 6:]
    post = gp_inference(Ktr, y, diag_reg=0.1, diag_reg_absolute_scale=True)(Kte, Ktt)
    S = Ktr + 0.1 * np.eye(6)
    np.testing.assert_allclose(post.mean, Kte @ np.linalg.solve(S, y), atol=1e-10)
    np.testing.assert_allclose(post.covariance, Ktt - Kte @ np.linalg.solve(S, Kte.T), atol=1e-10)


def test_predict_bad_input_and_stability_warning():
    K, Kte, y = _problem()
    eta = 1.0 / np.linalg.eigvalsh(K)[-1]
    with pytest.raises(ValueError, match="y_train"):
        gradient_descent_mse(K, y[:3], eta)
    with pytest.raises(ValueError, match="learning_rate"):
        gradient_descent_mse(K, y, -1.0)
    with pytest.raises(ValueError, match="k_test_train"):
        gradient_descent_mse(K, y, eta)(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="diag_reg"):
        gradient_descent_mse(K, y, eta, diag_reg=-1.0)
    with pytest.raises(ValueError, match="positive definite"):
        gp_inference(-K, y)
    with pytest.warns(RuntimeWarning, match="stability limit"):
        gradient_descent_mse(K, y, 2.5 * eta, discrete=True, normalization="sum")
    assert 2.0 / np.linalg.eigvalsh(K)[-1] == pytest.approx(max_learning_rate(K, normalization="sum"))


def test_infinite_time_is_the_limit_also_for_a_singular_kernel():
    from ntk_ode import predict

    K = np.ones((2, 2))  # rank one: the residual's component along (1, -1) never moves
    y = np.array([1.0, -1.0])
    for f0 in (0.0, np.array([0.3, 0.1])):
        f = predict.gradient_descent_mse(K, y, learning_rate=1.0)
        np.testing.assert_allclose(f(None, fx_train_0=f0), f(1e8, fx_train_0=f0), atol=1e-12)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 3))
    K, y = A @ A.T, rng.standard_normal(5)  # rank 3 of 5
    f = predict.gradient_descent_mse(K, y)
    kte = rng.standard_normal((2, 3)) @ A.T
    a, b = f(None, 0.0, 0.0, k_test_train=kte), f(1e6, 0.0, 0.0, k_test_train=kte)
    np.testing.assert_allclose(a[0], b[0], atol=1e-8)
    np.testing.assert_allclose(a[1], b[1], atol=1e-8)
