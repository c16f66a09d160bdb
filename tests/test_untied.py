"""Untied ResNets: kernels against Monte Carlo of finite networks, the tied kernel at depth 1,
and their limits L -> infinity (neural-tangents' golden values are in test_nt_golden.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_ode import NeuralODE, kernel_fn
from ntk_ode.untied import UntiedResNet, untied_kernel

X = np.random.default_rng(0).standard_normal((3, 5))


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_kernels_match_monte_carlo_of_finite_networks(act):
    # over independent networks of width 512: the NNGP as E_v f(x) f(x') = the v block of the
    # empirical NTK (sigma_v^2 h_L . h_L' / n, the exact average over the readout), and the NTK as
    # the mean empirical NTK. Tolerance: 5 standard errors plus the O(1/n) finite-width bias
    # (bounded by 4/n of the scale). The same draws reject the weight-tied kernel of equal step.
    m = NeuralODE(act, T=1.0, sigma_w=1.5, sigma_u=1.2, sigma_v=1.0)
    net = UntiedResNet(m, depth=4, step="1/sqrt(L)")
    n, seeds = 512, 48

    @jax.jit
    def draw(key):
        p = net.init(key, X.shape[1], n)
        J = jax.jacrev(net.apply)(p, X)
        flat = jnp.concatenate([j.reshape(X.shape[0], -1) for j in jax.tree_util.tree_leaves(J)], axis=1)
        return J["v"] @ J["v"].T, flat @ flat.T

    draws = [draw(jax.random.PRNGKey(s)) for s in range(seeds)]
    ref = untied_kernel(m, X, depth=4, step="1/sqrt(L)")
    # the weight-tied ResNet with the same step sqrt(T / 4) = T' / 4, i.e. T' = 2
    tied = kernel_fn(NeuralODE(act, T=2.0, sigma_w=1.5, sigma_u=1.2, sigma_v=1.0), depth=4)(X)
    for i, name in enumerate(("nngp", "ntk")):
        samples = np.stack([np.asarray(d[i]) for d in draws])
        mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(seeds)
        k = np.asarray(getattr(ref, name))
        tol = 5 * se + 4.0 / n * np.abs(k).max()
        assert np.all(np.abs(mean - k) <= tol), (name, np.abs(mean - k) / tol)
        assert np.any(np.abs(mean - np.asarray(getattr(tied, name))) > tol), name


def test_depth_one_equals_the_tied_resnet():
    for act in ("softplus", "erf"):
        m = NeuralODE(act, T=0.8, sigma_w=1.4, head="phi")
        u, t = untied_kernel(m, X, X[:2], depth=1), kernel_fn(m, depth=1)(X, X[:2])
        np.testing.assert_allclose(u.nngp, t.nngp, rtol=1e-12)
        np.testing.assert_allclose(u.ntk, t.ntk, rtol=1e-12)


def test_limits():
    m = NeuralODE("erf", T=1.2, sigma_w=1.3)
    # step 1/L: increments O(1/L^2) per layer, the kernels tend to depth 0's like 1/L
    lim = untied_kernel(m, X, get="ntk")
    c2 = m.input_scale(X.shape[1]) ** 2 * X @ X.T
    np.testing.assert_allclose(lim, 2 * c2, rtol=1e-14)
    gaps = [np.abs(np.asarray(untied_kernel(m, X, depth=L, get="ntk")) - lim).max() for L in (64, 128)]
    assert gaps[0] / gaps[1] == pytest.approx(2.0, rel=0.02)
    # step 1/sqrt(L): Euler in t of the limit's ODE; Richardson over L = 256..2048 (a second method)
    # agrees with the RK4 solution
    from ntk_ode.limits import richardson

    Ls = (256, 512, 1024, 2048)
    ks = [np.asarray(untied_kernel(m, X, depth=L, step="1/sqrt(L)", get="ntk")) for L in Ls]
    ode = np.asarray(untied_kernel(m, X, step="1/sqrt(L)", get="ntk"))
    np.testing.assert_allclose(richardson(ks, Ls), ode, rtol=1e-10)
    assert np.abs(ks[-1] - ode).max() > 1e-5  # the finite depth differs (the limit is not trivial)


def test_jit_and_bad_arguments():
    m = NeuralODE("erf")
    k = jax.jit(lambda x: untied_kernel(m, x, depth=3, get="ntk"))(X)
    np.testing.assert_allclose(k, untied_kernel(m, X, depth=3, get="ntk"), rtol=1e-13)
    with pytest.raises(ValueError, match="step must be"):
        untied_kernel(m, X, depth=2, step="1/L^2")
    with pytest.raises(ValueError, match="depth must be"):
        UntiedResNet(m, depth=0)
    with pytest.raises(ValueError, match="get must be"):
        untied_kernel(m, X, get="ntk_W")
    net = UntiedResNet(m, depth=2)
    p = net.init(jax.random.PRNGKey(0), 5, 8)
    with pytest.raises(ValueError, match=r"params\['W'\] must have shape \(2, n, n\)"):
        net.apply({**p, "W": p["W"][0]}, X)
