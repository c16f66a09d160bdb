"""Gradients: continuous adjoint vs backprop vs finite differences; Prop 2 rates in L."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode.gradients import adjoint_trajectory, grad


def setup(width=32, d=4, N=3, seed=0, **kw):
    model = no.NeuralODE(**kw)
    params = model.init(jax.random.PRNGKey(seed), d=d, width=width)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (N, d))
    return model, params, x


def rel(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize("act", ["softplus", "tanh"])
@pytest.mark.parametrize("head", ["linear", "phi"])
def test_adjoint_matches_backprop(act, head):
    model, params, x = setup(activation=act, head=head, sigma_w=1.3, sigma_u=0.8, sigma_v=1.2)
    ga = grad(model, params, x, method="adjoint", rtol=1e-12, atol=1e-12)
    gb = grad(model, params, x, method="backprop", rtol=1e-12, atol=1e-12)
    for k in "UWv":
        assert ga[k].shape == (x.shape[0],) + params[k].shape
        assert rel(ga[k], gb[k]) < 1e-6


@pytest.mark.parametrize("depth", [None, 6])
def test_gradients_match_central_finite_differences(depth):
    model, params, x = setup(width=8, d=3, N=2, activation="softplus", head="phi", sigma_w=1.2)
    kw = dict(depth=depth, rtol=1e-12, atol=1e-12) if depth is None else dict(depth=depth)
    grads = {m: grad(model, params, x, method=m, **kw) for m in ("adjoint", "backprop")}
    key = jax.random.PRNGKey(7)
    eps = 1e-5
    for _ in range(3):
        key, sub = jax.random.split(key)
        leaves, tree = jax.tree_util.tree_flatten(params)
        dirs = jax.tree_util.tree_unflatten(
            tree, [jax.random.normal(k, leaf.shape) for k, leaf in zip(jax.random.split(sub, len(leaves)), leaves)]
        )
        shift = lambda s: jax.tree_util.tree_map(lambda p, u: p + s * u, params, dirs)
        fd = (model.apply(shift(eps), x, **kw) - model.apply(shift(-eps), x, **kw)) / (2 * eps)
        for m, g in grads.items():
            dd = sum(jnp.einsum("n...,...->n", g[k], dirs[k]) for k in "UWv")
            np.testing.assert_allclose(dd, fd, rtol=1e-6, atol=1e-8, err_msg=m)


def test_discrete_adjoint_equals_backprop_for_resnet():
    model, params, x = setup(activation="tanh", head="phi", T=2.0)
    ga = grad(model, params, x, depth=20, method="adjoint")
    gb = grad(model, params, x, depth=20, method="backprop")
    for k in "UWv":
        np.testing.assert_allclose(ga[k], gb[k], atol=1e-13)


@pytest.mark.parametrize("depth,steps", [(8, None), (None, 12)])
def test_per_example_backprop_equals_jacrev_of_the_batched_map(depth, steps):
    # backprop runs one reverse pass per example (vmapped); with the same discrete steps this is
    # exactly the Jacobian of the batched forward map
    model, params, x = setup(activation="tanh", head="phi", N=5)
    solver = no.Solver(steps=steps)
    g = grad(model, params, x, depth=depth, method="backprop", solver=solver)
    j, ok = jax.jacrev(lambda p: model.forward(p, x, depth, solver), has_aux=True)(params)
    assert bool(ok)
    for k in "UWv":
        np.testing.assert_allclose(g[k], j[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("depth", [None, 10])
def test_adjoint_trajectory_consistency(depth):
    model, params, x = setup(activation="softplus", head="linear")
    ts = None if depth else jnp.linspace(0.0, model.T, 9)
    kw = {} if depth else dict(rtol=1e-12, atol=1e-12)
    h, lam = adjoint_trajectory(model, params, x, ts=ts, depth=depth, **kw)
    n = params["W"].shape[0]
    np.testing.assert_allclose(
        lam[:, -1], jnp.broadcast_to(model.sigma_v / np.sqrt(n) * params["v"], lam[:, -1].shape), atol=1e-14
    )
    g = grad(model, params, x, depth=depth, **kw)
    # grad_U = sigma_u/sqrt(d) lambda_0 x^T
    gU = model.input_scale(x.shape[1]) * lam[:, 0, :, None] * x[:, None, :]
    np.testing.assert_allclose(gU, g["U"], atol=1e-9)
    np.testing.assert_allclose(h[:, 0], model.embed(params, x), atol=1e-9)


@pytest.mark.parametrize("width", [64, 256])
def test_prop2_rates_softplus(width):
    """|f^L - f| and ||grad f^L - grad f|| fall like 1/L (softplus: phi, phi' Lipschitz)."""
    model, params, x = setup(width=width, d=6, N=4, activation="softplus", sigma_w=1.5)
    f = model.apply(params, x, rtol=1e-12, atol=1e-12)
    g = grad(model, params, x, rtol=1e-12, atol=1e-12)
    Ls = np.array([8, 16, 32, 64, 128, 256])
    out, gr = [], []
    for L in Ls:
        out.append(float(jnp.max(jnp.abs(model.apply(params, x, depth=L) - f))))
        gL = grad(model, params, x, depth=int(L), method="backprop")
        gr.append(float(jnp.sqrt(sum(jnp.sum((gL[k] - g[k]) ** 2) for k in "UWv"))))
    s_out = np.polyfit(np.log(Ls), np.log(out), 1)[0]
    s_grad = np.polyfit(np.log(Ls), np.log(gr), 1)[0]
    assert -1.2 <= s_out <= -0.8, s_out
    assert -1.2 <= s_grad <= -0.8, s_grad


def test_grad_bad_input():
    model, params, x = setup()
    with pytest.raises(ValueError, match="method"):
        grad(model, params, x, method="magic")
    with pytest.raises(ValueError, match="d=4"):
        grad(model, params, jnp.ones((2, 3)))
    with pytest.raises(RuntimeError):
        grad(model, params, x, max_steps=2)
