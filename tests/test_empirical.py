"""Finite-width NTK: three methods, generic function, Monte Carlo vs kernel_fn, width sweep."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode.empirical import empirical_ntk, empirical_ntk_fn, monte_carlo_kernels
from ntk_ode.limits import kernel_fn
from ntk_ode.sweep import fit_slope, slope_standard_error, width_sweep

X = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3, 4)))


def setup(width=48, **kw):
    model = no.NeuralODE(**kw)
    return model, model.init(jax.random.PRNGKey(0), d=4, width=width)


@pytest.mark.parametrize("depth", [6, None])
@pytest.mark.parametrize("head", ["linear", "phi"])
def test_three_methods_agree(depth, head):
    model, params = setup(activation="tanh", head=head, sigma_w=1.3, sigma_u=0.7)
    kw = {} if depth else dict(rtol=1e-13, atol=1e-13)
    K = {
        m: np.asarray(empirical_ntk(model, params, X, depth=depth, method=m, **kw))
        for m in ("structured", "jacobian", "ntvp")
    }
    scale = np.abs(K["jacobian"]).max()
    assert np.abs(K["structured"] - K["jacobian"]).max() <= 1e-10 * scale
    assert np.abs(K["ntvp"] - K["jacobian"]).max() <= 1e-10 * scale


def test_generic_fn_on_plain_jax_resnet_matches_structured():
    model, params = setup(activation="softplus", sigma_w=1.4, head="phi")
    L, n = 5, params["W"].shape[0]

    def resnet(p, x):  # written independently of the package
        h = 0.5 * x @ p["U"].T  # sigma_u / sqrt(d) = 1 / 2
        for _ in range(L):
            h = h + (1.0 / L) * 1.4 / jnp.sqrt(n) * jax.nn.softplus(h) @ p["W"].T
        return jax.nn.softplus(h) @ p["v"] / jnp.sqrt(n)

    np.testing.assert_allclose(resnet(params, X), model.apply(params, X, depth=L), atol=1e-13)
    ref = empirical_ntk(model, params, X, depth=L)
    for method in ("jacobian", "ntvp"):
        np.testing.assert_allclose(empirical_ntk_fn(resnet, method)(X, None, params), ref, atol=1e-11)


def test_symmetry_psd_blocks_and_x2_none():
    model, params = setup(activation="softplus")
    K = np.asarray(empirical_ntk(model, params, X, depth=8))
    np.testing.assert_allclose(K, K.T, atol=1e-13)
    assert np.linalg.eigvalsh(K).min() > -1e-12
    np.testing.assert_allclose(empirical_ntk(model, params, X, X, depth=8), K, atol=1e-13)
    U, W, v = empirical_ntk(model, params, X, depth=8, blocks=True)
    np.testing.assert_allclose(U + W + v, K, atol=1e-13)
    x2 = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (2, 4)))
    np.testing.assert_allclose(
        empirical_ntk(model, params, x2, X, depth=8),
        np.asarray(empirical_ntk(model, params, X, x2, depth=8)).T,
        atol=1e-13,
    )


def test_symmetric_structured_tiles_equal_the_rectangular_call():
    # depth 64: the W block's symmetric tiles hold 64 inputs, so 70 inputs take 3 of 4 tiles
    model, params = setup(activation="tanh", width=8)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (70, 4)))
    K = np.asarray(empirical_ntk(model, params, x, depth=64))
    assert np.array_equal(K, K.T)
    Kr = np.asarray(empirical_ntk(model, params, x, x, depth=64))
    assert np.max(np.abs(K - Kr)) <= 1e-13 * np.max(np.abs(Kr))


@pytest.mark.parametrize("act,head", [("softplus", "linear"), ("softplus", "phi"), ("tanh", "linear"), ("tanh", "phi")])
def test_monte_carlo_mean_matches_kernel_fn(act, head):
    model = no.NeuralODE(act, sigma_w=1.2, sigma_v=0.9, head=head)
    mc = monte_carlo_kernels(
        model, jax.random.PRNGKey(11), X, width=2048, n_samples=8, solver=no.Solver(rtol=1e-8, atol=1e-8), quad_nodes=24
    )
    mean, se = (np.asarray(a) for a in mc["ntk"])
    K = np.asarray(kernel_fn(model)(X, get="ntk"))
    assert np.all(np.abs(mean - K) <= 4 * se), (mean - K) / se


def test_slope_standard_error_matches_the_spread_of_replicated_fits():
    # synthetic sweeps: mean distance C w^-1/2 times independent seed noise of 20% (gamma)
    rng = np.random.default_rng(0)
    widths, seeds, reps = np.array([64.0, 128, 256, 512, 1024]), 6, 4000
    truth = 3.0 * widths**-0.5
    samples = truth[None, :, None] * rng.gamma(25.0, 1 / 25.0, size=(reps, widths.size, seeds))
    slopes = np.array([fit_slope(widths, s.mean(axis=1)) for s in samples])
    ses = np.array([slope_standard_error(widths, s) for s in samples])
    spread = slopes.std(ddof=1)  # the true standard error, to ~1.1% (4000 replications)
    assert abs(np.median(ses) / spread - 1) < 0.1, (np.median(ses), spread)
    assert abs(slopes.mean() + 0.5) < 4 * spread / np.sqrt(reps)  # the fit is unbiased at this noise
    assert np.isnan(slope_standard_error(widths, samples[0][:, :1]))  # one seed: no error
    with pytest.raises(ValueError, match="samples of shape"):
        slope_standard_error(widths, samples[0][:3])


def test_width_sweep_slope_and_resume(tmp_path):
    model = no.NeuralODE("softplus")
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (4, 5)))
    widths = [128, 256, 512, 1024, 2048, 4096]
    out = str(tmp_path / "sweep")
    r = width_sweep(model, x, widths, 6, depth=8, out=out, progress=False)
    assert -0.7 <= r["slope"] <= -0.3, r["slope"]
    assert 0 < r["slope_se"] < 0.2 and abs(r["slope"] + 0.5) <= 4 * r["slope_se"] + 0.05, (r["slope"], r["slope_se"])
    r2 = width_sweep(model, x, widths, 6, depth=8, out=out, progress=False)
    np.testing.assert_array_equal(r["dist"], r2["dist"])
    # fewer widths or seeds reuse the stored ones; more seeds extend them (seed s does not depend
    # on how many seeds run), giving what a fresh run gives
    r3 = width_sweep(model, x, widths[:2], 3, depth=8, out=out, progress=False)
    np.testing.assert_array_equal(r3["dist"], r["dist"][:2, :3])
    r4 = width_sweep(model, x, widths[:1], 8, depth=8, out=out, progress=False)
    np.testing.assert_array_equal(r4["dist"][:, :6], r["dist"][:1])
    fresh = width_sweep(model, x, widths[:1], 8, depth=8, progress=False)
    np.testing.assert_allclose(r4["dist"], fresh["dist"], rtol=1e-12)
    # anything else is refused, naming the field
    with pytest.raises(ValueError, match="depth"):
        width_sweep(model, x, widths[:2], 3, depth=4, out=out, progress=False)
    with pytest.raises(ValueError, match="solver"):
        width_sweep(model, x, widths[:2], 3, depth=8, out=out, progress=False, solver=no.Solver("rk4", steps=1))


def test_width_sweep_sharded_over_devices_equals_single_device():
    code = textwrap.dedent(
        """
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        import ntk_ode as no
        assert len(jax.local_devices()) == 4
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 4)))
        m = no.NeuralODE("tanh")
        a = no.width_sweep(m, x, [16, 32], 3, depth=4, shard=True, progress=False)
        b = no.width_sweep(m, x, [16, 32], 3, depth=4, shard=False, progress=False)
        assert a["dist"].shape == (2, 3)
        assert np.max(np.abs(a["dist"] - b["dist"])) <= 1e-12, np.max(np.abs(a["dist"] - b["dist"]))
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_bad_input():
    model, params = setup()
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(model, params, X, method="nope")
    with pytest.raises(ValueError, match="W"):
        empirical_ntk(model, {**params, "W": params["W"][:, :-1]}, X)
    with pytest.raises(ValueError, match="d=4"):
        empirical_ntk(model, params, X, np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        empirical_ntk(
            model,
            params,
            X.at[0, 0].set(np.inf) if hasattr(X, "at") else np.where(np.arange(12).reshape(3, 4) == 0, np.inf, X),
        )
    with pytest.raises(ValueError, match="non-finite"):
        empirical_ntk(model, {**params, "v": params["v"].at[0].set(jnp.nan)}, X)
    with pytest.raises(ValueError, match="blocks"):
        empirical_ntk(model, params, X, method="jacobian", blocks=True)


def test_batched_empirical_ntk_equals_the_unbatched_call():
    m = no.NeuralODE("tanh", T=1.0)
    p = m.init(jax.random.PRNGKey(3), 4, 16)
    x1 = np.random.default_rng(1).standard_normal((7, 4))
    x2 = np.random.default_rng(2).standard_normal((5, 4))
    # the ODE with fixed steps (an adaptive solver picks its steps per batch, so tiles then agree
    # only to the solver's tolerance)
    for depth, method, solver in ((None, "structured", no.Solver("rk4", steps=16)), (3, "jacobian", None)):
        ref_sym = np.asarray(empirical_ntk(m, p, x1, None, depth, method, solver))
        ref = np.asarray(empirical_ntk(m, p, x1, x2, depth, method, solver))
        for b in (3, 50):
            got = empirical_ntk(m, p, x1, None, depth, method, solver, batch_size=b)
            np.testing.assert_allclose(got, ref_sym, rtol=1e-12, atol=1e-13)
            got = empirical_ntk(m, p, x1, x2, depth, method, solver, batch_size=b)
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13)
    blocks = empirical_ntk(m, p, x1, x2, 3, blocks=True, batch_size=3)
    for a, r in zip(blocks, empirical_ntk(m, p, x1, x2, 3, blocks=True)):
        np.testing.assert_allclose(a, r, rtol=1e-12)
    jitted = jax.jit(lambda q: empirical_ntk(m, q, x1, None, 3, batch_size=3))(p)
    np.testing.assert_allclose(jitted, empirical_ntk(m, p, x1, None, 3), rtol=1e-12)
    with pytest.raises(ValueError, match="batch_size must be"):
        empirical_ntk(m, p, x1, batch_size=0)
