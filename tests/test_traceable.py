"""The pure core under jax transformations: jit, vmap over parameters and seeds, checks that survive."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ode as no

X = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 4)))


def _params(model, seeds, width=8):
    return jax.vmap(lambda k: model.init(k, 4, width))(jax.random.split(jax.random.PRNGKey(1), seeds))


@pytest.mark.parametrize("depth", [None, 3])
def test_jit_and_vmap_over_parameters_equal_eager(depth):
    model = no.NeuralODE("tanh")
    ps = _params(model, 2)
    s = no.Solver(rtol=1e-7, atol=1e-7)
    one = jax.tree_util.tree_map(lambda a: a[1], ps)
    for fn in (
        lambda p: model.apply(p, X, depth=depth, solver=s),
        lambda p: no.grad(model, p, X, depth=depth, solver=s)["W"],
        lambda p: no.empirical_ntk(model, p, X, depth=depth, solver=s, quad_nodes=4),
    ):
        eager = fn(one)
        np.testing.assert_allclose(jax.jit(fn)(one), eager, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(jax.vmap(fn)(ps)[1], eager, rtol=1e-10, atol=1e-12)


def test_monte_carlo_kernels_under_jit():
    model = no.NeuralODE("tanh")
    f = jax.jit(lambda k: no.monte_carlo_kernels(model, k, X, width=8, n_samples=3, depth=2)["ntk"][0])
    np.testing.assert_allclose(
        f(jax.random.PRNGKey(2)),
        no.monte_carlo_kernels(model, jax.random.PRNGKey(2), X, width=8, n_samples=3, depth=2)["ntk"][0],
        rtol=1e-12,
    )


def test_checks_survive_jit_a_failed_solve_raises():
    model = no.NeuralODE("tanh")
    p = model.init(jax.random.PRNGKey(0), 4, 8)
    tight = no.Solver(max_steps=2, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="solve failed"):
        model.apply(p, X, solver=tight)
    with pytest.raises(RuntimeError, match="solve failed"):
        jax.block_until_ready(jax.jit(lambda p: model.apply(p, X, solver=tight))(p))
    with pytest.raises(RuntimeError, match="solve failed"):
        jax.block_until_ready(jax.jit(lambda p: no.empirical_ntk(model, p, X, solver=tight, quad_nodes=4))(p))


def test_blow_up_is_loud_everywhere():
    """A quadratic ResNet at sigma_w T = 10 overflows: every public function says so (it used to
    return NaN from empirical_ntk, trajectory, adjoint_trajectory, monte_carlo_kernels)."""
    model = no.NeuralODE("quadratic", T=10.0)
    p = model.init(jax.random.PRNGKey(0), 4, 64)
    x = 30.0 * X
    calls = {
        "apply": lambda: model.apply(p, x, depth=64),
        "trajectory": lambda: model.trajectory(p, x, depth=64),
        "grad": lambda: no.grad(model, p, x, depth=64),
        "adjoint_trajectory": lambda: no.adjoint_trajectory(model, p, x, depth=64),
        "empirical_ntk": lambda: no.empirical_ntk(model, p, x, depth=64),
        "empirical_ntk jacobian": lambda: no.empirical_ntk(model, p, x, depth=64, method="jacobian"),
        "monte_carlo_kernels": lambda: no.monte_carlo_kernels(
            model, jax.random.PRNGKey(0), x, width=64, n_samples=2, depth=64
        ),
        "empirical_ntk_fn": lambda: no.empirical_ntk_fn(lambda q, z: model.forward(q, z, 64, no.Solver())[0])(
            x, None, p
        ),
    }
    for name, call in calls.items():
        with pytest.raises(FloatingPointError, match="not finite"):
            call()
            pytest.fail(f"{name} returned without an error")


def test_params_are_validated_when_built():
    model = no.NeuralODE()
    p = no.NeuralODE.params(jnp.ones((3, 2)), jnp.eye(3), jnp.ones(3))
    assert model.apply(p, np.ones((1, 2))).shape == (1,)
    with pytest.raises(ValueError, match="W"):
        no.NeuralODE.params(jnp.ones((3, 2)), jnp.eye(2), jnp.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        no.NeuralODE.params(jnp.ones((3, 2)), jnp.eye(3) * jnp.nan, jnp.ones(3))
    with pytest.raises(ValueError, match="real"):
        model.apply(p, np.ones((1, 2)) + 1j)
