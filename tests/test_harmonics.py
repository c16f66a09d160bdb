"""Gegenbauer spectra: orthogonality of the basis, a closed form (identity activation), and the
series rebuilt from the eigenvalues against direct kernel values."""

import math

import numpy as np
import pytest

from ntk_ode import NeuralODE, kernel_fn
from ntk_ode.harmonics import (
    decay_fit,
    gegenbauer,
    gegenbauer_spectrum,
    harmonic_dimension,
    predicted_lambda_min,
    sphere_pair_inputs,
)


@pytest.mark.parametrize("d", [3, 5])
def test_gegenbauer_basis_is_orthogonal_with_the_right_norms(d):
    # c_d int P_j P_k (1 - t^2)^((d-3)/2) dt = delta_jk / N(d, k); N(3, k) = 2k + 1
    theta, w = np.polynomial.legendre.leggauss(200)
    theta, w = math.pi * (theta + 1) / 2, math.pi * w / 2
    c = math.exp(math.lgamma(d / 2) - math.lgamma((d - 1) / 2)) / math.sqrt(math.pi)
    P = gegenbauer(12, d, np.cos(theta))
    G = c * (P * (w * np.sin(theta) ** (d - 2))) @ P.T
    N = np.array([harmonic_dimension(d, k) for k in range(13)])
    np.testing.assert_allclose(G, np.diag(1.0 / N), atol=1e-13)
    assert harmonic_dimension(3, 4) == 9 and harmonic_dimension(5, 2) == 14


def test_identity_activation_has_one_degree():
    # phi = identity: the NTK is c x . x' = c d t (radius sqrt(d)), so mu_1 = c and mu_k = 0 otherwise
    m = NeuralODE("identity", T=0.7, sigma_w=1.2)
    d = 4
    s = gegenbauer_spectrum(m, d, 8, depth=8, nodes=24)
    x0, xs = sphere_pair_inputs(d, math.sqrt(d), [0.0])
    c = float(np.asarray(kernel_fn(m, depth=8)(x0, xs, get="ntk"))[0, 0]) / d
    assert abs(s.mu[1] - c) <= s.error[1] and s.error[1] < 1e-10 * c
    others = np.delete(np.arange(9), 1)
    assert np.all(np.abs(s.mu[others]) <= s.error[others])


def test_series_rebuilds_the_kernel_and_the_bounds_hold():
    m = NeuralODE("erf", T=1.0, sigma_w=1.3)
    s = gegenbauer_spectrum(m, 3, 40, depth=8)
    x0, xs = sphere_pair_inputs(3, math.sqrt(3), np.array([0.0, 0.4, 1.3, 2.2, math.pi]))
    k = np.asarray(kernel_fn(m, depth=8)(x0, xs, get="ntk"))[0]
    # the tail beyond k = 40 is below 1e-12 for erf (geometric decay); each term's error <= error_k
    assert np.abs(s.kernel(np.cos([0.0, 0.4, 1.3, 2.2, math.pi])) - k).max() <= np.sum(s.multiplicity * s.error) + 1e-12
    fit = decay_fit(s)
    assert fit["exp_rms"] < fit["power_rms"]  # smooth activation: geometric decay fits better
    pred = predicted_lambda_min(s, 10)
    assert pred["k_star"] == 3 and pred["rank_N"] > 0 and pred["tail"] > 0


def test_relu_decays_like_a_power():
    s = gegenbauer_spectrum(NeuralODE("relu"), 3, 24, depth=8)
    fit = decay_fit(s)
    assert fit["power_rms"] < fit["exp_rms"] and 2.5 < fit["power"] < 5.0


def test_bad_arguments():
    m = NeuralODE("erf")
    with pytest.raises(ValueError, match="d must be"):
        gegenbauer_spectrum(m, 1, 4)
    with pytest.raises(ValueError, match="get must be"):
        gegenbauer_spectrum(m, 3, 4, get="ntk_W")
    with pytest.raises(ValueError, match="nodes must be"):
        gegenbauer_spectrum(m, 3, 10, nodes=5)


@pytest.mark.parametrize("act, depth", [("erf", None), ("relu", 6)])
def test_zonal_kernel_function_matches_direct_values_within_its_bound(act, depth):
    import jax

    from ntk_ode.harmonics import zonal_kernel

    m = NeuralODE(act, T=1.0, sigma_w=1.2)
    zk = zonal_kernel(m, 4, depth=depth, rtol=1e-9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4))
    x = 2.0 * x / np.linalg.norm(x, axis=1, keepdims=True)  # radius sqrt(4)
    x[1] = -x[0]  # antipodal
    x[2] = x[0] + 1e-4 * x[3]
    x[2] *= 2.0 / np.linalg.norm(x[2])  # near-duplicate
    direct, derr = kernel_fn(m, depth, equal_norm=False)(x, get="ntk", with_error=True)
    direct = np.asarray(direct)
    ours = np.asarray(jax.jit(zk.gram)(x))
    assert np.abs(ours - direct).max() <= zk.error + float(derr), (np.abs(ours - direct).max(), zk.error, derr)
    assert zk.error <= 1e-7 * np.abs(direct).max()
    assert float(zk(1.0)) == pytest.approx(direct[0, 0], rel=1e-8)
    assert float(zk(1.0 + 1e-12)) == float(zk(1.0))  # rounding past 1 is clipped
    for bad in (1.5, -1.01, np.nan):  # the interpolant does not extend beyond [-1, 1]
        with pytest.raises(ValueError, match="cos must hold finite cosines"):
            zk(bad)
