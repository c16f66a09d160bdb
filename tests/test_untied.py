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


# An independent untied recursion: duals by the 2-D trapezoid rule on a fine grid (spectrally
# accurate for these analytic activations), not by Mehler series or tanh-sinh quadrature.
_Z = np.linspace(-11.0, 11.0, 1601)
_W = np.exp(-(_Z**2) / 2) / np.sqrt(2 * np.pi) * (_Z[1] - _Z[0])


def _erf(x):
    from scipy.special import erf

    return erf(x)


_ACTS = {
    "gelu": (
        lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
        lambda x: 0.5 * (1 + _erf(x / np.sqrt(2))) + x * np.exp(-(x**2) / 2) / np.sqrt(2 * np.pi),
    ),
    "softplus": (lambda x: np.logaddexp(0, x), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
}


def _dual(f, a, b, c):
    rho = np.clip(c / np.sqrt(a * b), -1, 1)
    v = np.sqrt(b) * (rho * _Z[:, None] + np.sqrt(max(1 - rho**2, 0.0)) * _Z[None, :])
    return float(_W @ (f(np.sqrt(a) * _Z)[:, None] * f(v)) @ _W)


def _reference(act, x1, x2, m, L, step):
    f, df = _ACTS[act]
    c2 = (m.T / L if step == "1/L" else np.sqrt(m.T / L)) ** 2 * m.sigma_w**2
    sc = m.input_scale(x1.size) ** 2
    S = [sc * x1 @ x1, sc * x2 @ x2, sc * x1 @ x2]
    Th = list(S)
    for _ in range(L):
        P = [_dual(f, S[0], S[0], S[0]), _dual(f, S[1], S[1], S[1]), _dual(f, S[0], S[1], S[2])]
        D = [_dual(df, S[0], S[0], S[0]), _dual(df, S[1], S[1], S[1]), _dual(df, S[0], S[1], S[2])]
        Th = [t * (1 + c2 * d) + c2 * p for t, d, p in zip(Th, D, P)]
        S = [s + c2 * p for s, p in zip(S, P)]
    if m.head == "phi":
        P, D = _dual(f, S[0], S[1], S[2]), _dual(df, S[0], S[1], S[2])
        return m.sigma_v**2 * P, m.sigma_v**2 * (P + D * Th[2])
    return m.sigma_v**2 * S[2], m.sigma_v**2 * (S[2] + Th[2])


@pytest.mark.parametrize(
    "act, step, head, L, T, sigma_w, norm",
    [
        # the case where the fixed 192-term series was off by 1e-3 (gelu) with no warning:
        # sigma_w sqrt(T) = 4.3, last-layer variances ~2000 (quadrature duals)
        ("gelu", "1/sqrt(L)", "phi", 16, 3.0, 2.5, 1.5),
        # large inputs: sigma_u |x| / sqrt(d) = 3
        ("softplus", "1/L", "linear", 8, 2.0, 2.5, 3.0),
        ("tanh", "1/sqrt(L)", "phi", 16, 3.0, 2.5, 3.0),
    ],
)
def test_certified_untied_kernels_match_an_independent_recursion(act, step, head, L, T, sigma_w, norm):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5))
    x *= norm * np.sqrt(5) / 1.5 / np.linalg.norm(x, axis=1, keepdims=True)  # sigma_u |x| / sqrt(d) = norm
    m = NeuralODE(act, T=T, sigma_w=sigma_w, sigma_u=1.5, head=head)
    k, e = untied_kernel(m, x, depth=L, step=step, with_error=True)
    ref = _reference(act, x[0], x[1], m, L, step)
    for i, name in enumerate(("nngp", "ntk")):
        err = abs(float(np.asarray(getattr(k, name))[0, 1]) - ref[i])
        assert err <= getattr(e, name), (name, err, getattr(e, name))
        assert getattr(e, name) <= 1e-8 * np.abs(np.asarray(getattr(k, name))).max(), (name, getattr(e, name))


def test_untied_errors_need_eager_evaluation():
    m = NeuralODE("tanh")
    with pytest.raises(ValueError, match="with_error"):
        jax.jit(lambda x: untied_kernel(m, x, depth=2, with_error=True))(X)
