"""The Neural ODE forward pass: ResNet exactness, solver convergence, options, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ode as no


def setup(width=48, d=5, N=4, **kw):
    model = no.NeuralODE(**kw)
    params = model.init(jax.random.PRNGKey(0), d=d, width=width)
    x = jax.random.normal(jax.random.PRNGKey(1), (N, d))
    return model, params, x


def resnet_reference(model, params, x, L):
    """A plain numpy loop of h^l = h^{l-1} + dt sigma_w/sqrt(n) W phi(h^{l-1})."""
    U, W, v = (np.asarray(params[k]) for k in "UWv")
    n, d = U.shape
    h = model.sigma_u / np.sqrt(d) * np.asarray(x) @ U.T
    for _ in range(L):
        h = h + model.T / L * model.sigma_w / np.sqrt(n) * np.asarray(model.activation.fn(h)) @ W.T
    z = np.asarray(model.activation.fn(h)) if model.head == "phi" else h
    return model.sigma_v / np.sqrt(n) * z @ v


@pytest.mark.parametrize("head", ["linear", "phi"])
def test_resnet_matches_numpy_loop_and_diffrax_euler(head):
    model, params, x = setup(activation="tanh", sigma_w=1.4, sigma_u=0.7, sigma_v=1.3, head=head, T=1.5)
    for L in (1, 7, 32):
        yL = model.apply(params, x, depth=L)
        np.testing.assert_allclose(yL, resnet_reference(model, params, x, L), rtol=0, atol=1e-12)
        ye = model.apply(params, x, solver="euler", steps=L)
        np.testing.assert_allclose(ye, yL, rtol=0, atol=1e-12)


def test_default_solve_matches_fine_rk4_and_rk4_converges_at_order_4():
    model, params, x = setup(activation="softplus", sigma_w=1.5, T=2.0)
    ref = model.apply(params, x, solver="rk4", steps=4000)
    np.testing.assert_allclose(model.apply(params, x), ref, rtol=0, atol=1e-8 * max(1.0, float(jnp.abs(ref).max())))
    errs = [float(jnp.max(jnp.abs(model.apply(params, x, solver="rk4", steps=s) - ref))) for s in (8, 16, 32)]
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((rates > 3.5) & (rates < 4.5)), rates


@pytest.mark.parametrize("solver", ["heun", "midpoint", "tsit5", "dopri5", "dopri8"])
def test_adaptive_solvers_agree(solver):
    model, params, x = setup()
    ref = model.apply(params, x, solver="rk4", steps=2000)
    y = model.apply(params, x, solver=solver, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_euler_converges_first_order():
    model, params, x = setup()
    y = model.apply(params, x)
    errs = [float(jnp.max(jnp.abs(model.apply(params, x, depth=L) - y))) for L in (16, 32, 64, 128)]
    slope = np.polyfit(np.log([16, 32, 64, 128]), np.log(errs), 1)[0]
    assert -1.1 < slope < -0.9


def test_time_rescaling_invariance_and_input_scaling():
    model, params, x = setup(sigma_w=1.0, T=1.0)
    y = model.apply(params, x)
    c = 2.5
    y2 = no.NeuralODE(sigma_w=c, T=1.0 / c).apply(params, x)
    np.testing.assert_allclose(y, y2, atol=1e-9)
    y3 = no.NeuralODE(input_scaling="none").apply(params, x / np.sqrt(x.shape[1]))
    np.testing.assert_allclose(y, y3, atol=1e-9)


def test_trajectory_endpoints():
    model, params, x = setup(head="linear")
    ts = jnp.linspace(0.0, model.T, 6)
    hs = model.trajectory(params, x, ts=ts)
    assert hs.shape == (x.shape[0], 6, params["W"].shape[0])
    np.testing.assert_allclose(hs[:, 0], model.embed(params, x), atol=1e-14)
    np.testing.assert_allclose(model.readout(params["v"], hs[:, -1]), model.apply(params, x), atol=1e-10)
    hL = model.trajectory(params, x, depth=5)
    assert hL.shape == (x.shape[0], 6, params["W"].shape[0])


def test_init_statistics_and_float32():
    model = no.NeuralODE()
    p = model.init(jax.random.PRNGKey(3), d=20, width=300)
    assert p["U"].shape == (300, 20) and p["W"].shape == (300, 300) and p["v"].shape == (300,)
    w = np.asarray(p["W"]).ravel()
    assert abs(w.mean()) < 4 / np.sqrt(w.size) and abs(w.var() - 1) < 4 * np.sqrt(2 / w.size)
    # float32: works, with the default float32 tolerance (1e-6) giving ~1e-5 relative accuracy
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p)
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 20))
    y64 = model.apply(p, x)
    y32 = model.apply(p32, x.astype(jnp.float32), solver=no.Solver("dopri5", rtol=1e-6, atol=1e-6))
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)


def test_jit_and_vmap_of_apply():
    model, params, x = setup()
    f = jax.jit(lambda p, x: model.apply(p, x, depth=8))
    np.testing.assert_allclose(f(params, x), model.apply(params, x, depth=8), atol=1e-14)
    g = jax.vmap(lambda xi: model.apply(params, xi[None], depth=8)[0])
    np.testing.assert_allclose(g(x), model.apply(params, x, depth=8), atol=1e-14)


def test_bad_input_errors():
    model, params, x = setup()
    with pytest.raises(ValueError, match="shape"):
        model.apply(params, x[0])
    with pytest.raises(ValueError, match="d=5"):
        model.apply(params, jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        model.apply(params, x.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="T must"):
        no.NeuralODE(T=0.0)
    with pytest.raises(ValueError, match="sigma_w"):
        no.NeuralODE(sigma_w=-1.0)
    with pytest.raises(ValueError, match="width"):
        model.init(jax.random.PRNGKey(0), d=3, width=0)
    with pytest.raises(ValueError, match="activation"):
        no.NeuralODE(activation="nope")
    with pytest.raises(ValueError, match="head"):
        no.NeuralODE(head="softmax")
    with pytest.raises(ValueError, match="input_scaling"):
        no.NeuralODE(input_scaling="l2")
    with pytest.raises(ValueError, match="solver"):
        model.apply(params, x, solver="rk45")
    with pytest.raises(ValueError, match="steps"):
        model.apply(params, x, solver="rk4")
    with pytest.raises(ValueError, match="depth"):
        model.apply(params, x, depth=0)
    with pytest.raises(ValueError, match="W"):
        model.apply({**params, "W": params["W"][:-1]}, x)
    with pytest.raises(ValueError, match="keys"):
        model.apply({"U": params["U"]}, x)
    with pytest.raises(RuntimeError, match="max_steps"):
        model.apply(params, x, max_steps=2)


def test_blow_up_is_loud():
    # quadratic activation: dh/dt ~ h^2 explodes in finite time at a large horizon
    model, params, x = setup(activation="quadratic", T=50.0, sigma_w=3.0)
    with pytest.raises((RuntimeError, FloatingPointError)):
        model.apply(params, x * 5, max_steps=2000)


def test_a_new_setting_of_the_finite_width_model_compiles_nothing(compilations):
    _, params, x = setup(width=16, d=3)
    calls = {
        "apply": lambda m: m.apply(params, x),
        "resnet": lambda m: m.apply(params, x, depth=4),
        "grad": lambda m: no.grad(m, params, x),
        "backprop": lambda m: no.grad(m, params, x, method="backprop"),
        "empirical_ntk": lambda m: no.empirical_ntk(m, params, x),
        "trajectory": lambda m: m.trajectory(params, x, ts=jnp.linspace(0.0, m.T, 3)),
    }
    first = no.NeuralODE("erf", T=0.7, sigma_w=1.1)
    outs = {k: f(first) for k, f in calls.items()}
    second = no.NeuralODE("erf", T=1.9, sigma_w=2.3, sigma_u=0.6, sigma_v=1.4)
    for k, f in calls.items():
        before = compilations.count
        out = f(second)
        assert compilations.count == before, f"{k}: {compilations.count - before} compilations for a new setting"
        a, b = jax.tree.leaves(outs[k])[0], jax.tree.leaves(out)[0]
        assert not np.allclose(np.asarray(a), np.asarray(b)), k  # really another model


def test_vmap_over_hyperparameters_equals_one_by_one_and_gradients_match_differences():
    _, params, x = setup()
    sws, Ts = jnp.array([0.6, 1.3, 2.1]), jnp.array([0.5, 1.0, 1.7])
    for depth in (None, 6):
        batched = jax.vmap(lambda sw, T: no.NeuralODE("tanh", T=T, sigma_w=sw).apply(params, x, depth=depth))(sws, Ts)
        single = [
            no.NeuralODE("tanh", T=float(T), sigma_w=float(sw)).apply(params, x, depth=depth) for sw, T in zip(sws, Ts)
        ]
        np.testing.assert_allclose(batched, np.stack(single), rtol=0, atol=1e-13)

    # depth L is exact (no solver tolerance), so central differences are accurate to ~1e-10
    def f(sw, su, sv, T):
        return (
            no.NeuralODE("softplus", T=T, sigma_w=sw, sigma_u=su, sigma_v=sv, head="phi")
            .apply(params, x, depth=5)
            .sum()
        )

    theta = (1.7, 0.8, 1.2, 1.4)
    g = jax.grad(f, argnums=(0, 1, 2, 3))(*theta)
    for i in range(4):
        h = 1e-5
        up, dn = list(theta), list(theta)
        up[i] += h
        dn[i] -= h
        fd = (f(*up) - f(*dn)) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=1e-8, atol=1e-10)


def test_hyperparameters_are_validated_and_models_stay_hashable():
    m = no.NeuralODE("erf", T=np.float32(1.5), sigma_w=jnp.asarray(2.0))
    assert isinstance(m.T, float) and isinstance(m.sigma_w, float) and m.T == 1.5
    assert hash(m) == hash(no.NeuralODE("erf", T=1.5, sigma_w=2.0))
    assert m == no.NeuralODE("erf", T=1.5, sigma_w=2.0)
    for bad in (jnp.ones(2), True, "1", 1 + 1j, np.asarray(True)):
        with pytest.raises(ValueError, match="sigma_w"):
            no.NeuralODE(sigma_w=bad)
    with pytest.raises(ValueError, match="T must be a real scalar"):
        jax.vmap(lambda T: no.NeuralODE(T=T))(jnp.ones((2, 3)))


def test_traced_hyperparameters_keep_float32_computations_in_float32():
    model, params, x = setup(width=16, d=3, activation="tanh", sigma_w=1.7, T=0.8)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    x32 = x.astype(jnp.float32)
    y32 = model.apply(p32, x32)  # the weakly typed hyperparameters must not promote to float64
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, model.apply(params, x), rtol=2e-4, atol=2e-5)  # float32 accuracy
    assert no.grad(model, p32, x32)["W"].dtype == jnp.float32
