"""The engine's structure: hyperparameters as data (no recompilation), one core for every driver."""

import jax
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode import hyper
from ntk_ode.kernels import duals as duals_mod

jax.config.update("jax_enable_x64", True)

X = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (6, 4)))


@pytest.mark.parametrize("activation, depth", [("erf", None), ("relu", 8)])
def test_a_new_sigma_w_or_T_compiles_nothing(activation, depth, compilations):
    first = no.kernel_fn(no.NeuralODE(activation, sigma_w=1.0, T=1.0), depth)(X, get=("nngp", "ntk"))
    before = compilations.count
    other = no.NeuralODE(activation, sigma_w=1.37, T=0.61, sigma_v=1.2)
    second = no.kernel_fn(other, depth)(X, get=("nngp", "ntk"))
    assert compilations.count == before, f"{compilations.count - before} compilations for a new setting"
    assert not np.allclose(np.asarray(first.ntk), np.asarray(second.ntk))  # really another kernel


@pytest.mark.parametrize("depth", [None, 6])
def test_time_rescaling_leaves_the_kernels_unchanged(depth):
    # (sigma_w, T) -> (c sigma_w, T / c) leaves f unchanged (docs/theory.md section 1), so the
    # kernels too: a check of the grids scaled by a traced T against another T
    a, ea = no.kernel_fn(no.NeuralODE("tanh", sigma_w=1.5, T=1.0), depth)(X, get=("nngp", "ntk"), with_error=True)
    b, eb = no.kernel_fn(no.NeuralODE("tanh", sigma_w=0.6, T=2.5), depth)(X, get=("nngp", "ntk"), with_error=True)
    for name in ("nngp", "ntk"):
        diff = np.max(np.abs(np.asarray(getattr(a, name)) - np.asarray(getattr(b, name))))
        bound = getattr(ea, name) + getattr(eb, name)
        assert diff <= bound, (name, diff, bound)
        if depth is not None:  # exact recursions: rounding only
            assert diff <= 1e-12 * np.max(np.abs(np.asarray(getattr(a, name))))


def test_traceable_kernels_use_the_same_core_at_any_T():
    # the differentiable kernels are the engine's traced core on a fixed grid: they equal
    # kernel_fn with the same fixed grid, at T != 1 and in a vmapped batch of settings
    model = no.NeuralODE("erf", sigma_w=1.2, T=1.7, sigma_u=0.9, head="phi")
    tk = hyper.traceable_kernel_fn(model, nodes=16)
    direct = no.kernel_fn(model, nodes=16)(X, get="ntk")
    assert np.max(np.abs(np.asarray(tk(hyper.hyperparameters(model), X, get="ntk")) - np.asarray(direct))) <= 1e-12
    sw = np.array([0.7, 1.2, 1.9])
    batch = {k: np.full(3, float(getattr(model, k))) for k in hyper.HYPERPARAMETERS}
    batch["sigma_w"] = sw
    many = jax.vmap(lambda h: tk(h, X, get="ntk"))(batch)
    for i, s in enumerate(sw):
        one = no.kernel_fn(hyper.with_hyperparameters(model, {"sigma_w": s}), nodes=16)(X, get="ntk")
        assert np.max(np.abs(np.asarray(many[i]) - np.asarray(one))) <= 1e-13 * np.max(np.abs(np.asarray(one)))


def test_term_counts_come_from_a_coarse_ladder():
    rungs = {duals_mod.round_terms(k) for k in range(1, 700)}
    assert all(duals_mod.round_terms(k) >= k for k in range(1, 700))
    assert all(duals_mod.round_terms(k) <= max(16, 1.25 * k) for k in range(1, 700))
    assert len(rungs) <= 24


@pytest.mark.parametrize(
    "sigma_w, T, depth, nodes, terms",
    [
        (3.0, 1.0, 8, 24, 64),  # 64 Mehler terms off by 1e-3 (tanh, head phi, sigma_w T = 3): duals dominate
        (1.0, 1.5, None, 24, 64),  # the ODE, duals dominate
        (1.0, 1.5, None, 6, 256),  # the ODE on a coarse grid: the grid dominates
    ],
)
def test_traceable_error_estimates_bound_the_true_error(sigma_w, T, depth, nodes, terms):
    # the traced estimate against kernel_fn's certified kernel (rtol 1e-9)
    x = np.random.default_rng(0).standard_normal((3, 4))
    m = no.NeuralODE("tanh", sigma_w=sigma_w, T=T, head="phi")
    ref = np.asarray(no.kernel_fn(m, depth, rtol=1e-9)(x, get="ntk"))
    tk = hyper.traceable_kernel_fn(m, depth, nodes=nodes, terms=terms)
    k, e = tk(hyper.hyperparameters(m), x, get="ntk", with_error=True)
    err = np.max(np.abs(np.asarray(k) - ref))
    assert err <= float(e), (err, float(e))
    assert float(e) <= 1e4 * max(err, 1e-12 * np.abs(ref).max())  # and not absurdly loose


def test_traceable_errors_under_vmap_equal_one_by_one_and_gradients_match_differences():
    m = no.NeuralODE("softplus", sigma_w=2.0, T=1.5, sigma_u=2.0, head="phi")  # sigma_w T = 3, variances ~4
    tk = hyper.traceable_kernel_fn(m, 6, terms=64)
    h0 = hyper.hyperparameters(m)
    batch = {k: jnp_stack(h0[k], 2) for k in hyper.HYPERPARAMETERS}
    batch["sigma_w"] = np.array([1.5, 2.0])
    ks, es = jax.vmap(lambda h: tk(h, X, get="ntk", with_error=True))(batch)
    for i in range(2):
        k, e = tk({**h0, "sigma_w": batch["sigma_w"][i]}, X, get="ntk", with_error=True)
        assert np.max(np.abs(np.asarray(ks[i]) - np.asarray(k))) <= 1e-13 * np.abs(np.asarray(k)).max()
        # the estimate's dual part divides a kernel difference by eta = 1e-6: batched and single
        # rounding (~1e-16 of K) move it by ~1e-10 of itself, so agreement is asked to 1e-8
        assert abs(float(es[i]) - float(e)) <= 1e-8 * float(e)
    # reverse-mode derivatives in every hyperparameter against central differences (h = 1e-5:
    # truncation ~ h^2 |K'''| and rounding ~ eps |K| / h, both below 1e-7 relative here)
    f = lambda h: jnp_sum(tk(h, X, get="ntk"))
    g = jax.grad(f)(h0)
    for name in hyper.HYPERPARAMETERS:
        step = 1e-5 * float(h0[name])
        up, down = dict(h0), dict(h0)
        up[name], down[name] = h0[name] + step, h0[name] - step
        fd = (float(f(up)) - float(f(down))) / (2 * step)
        assert abs(float(g[name]) - fd) <= 1e-6 * max(abs(fd), 1.0), (name, float(g[name]), fd)


def jnp_stack(v, n):
    return np.full(n, float(v))


def jnp_sum(k):
    return k.sum()


def test_a_fit_warns_when_its_fixed_grid_kernel_is_inaccurate():
    x = np.random.default_rng(2).standard_normal((6, 3))
    y = np.sin(x[:, 0])
    m = no.NeuralODE("tanh", sigma_w=5.0, T=1.0, head="phi")
    with pytest.warns(RuntimeWarning, match="estimated relative error"):
        fit = hyper.fit_hyperparameters(m, x, y, steps=1, depth=8, terms=16, fit=("sigma_v",))
    assert fit.kernel_error > 1e-6


def test_get_none_returns_every_kernel_as_in_neural_tangents():
    k = no.kernel_fn(no.NeuralODE("erf"), depth=3)(X, get=None)
    assert isinstance(k, no.Kernel) and k._fields == ("nngp", "ntk", "ntk_U", "ntk_W", "ntk_v")
    np.testing.assert_allclose(np.asarray(k.ntk), np.asarray(k.ntk_U + k.ntk_W + k.ntk_v), rtol=1e-12)
    u = no.untied.untied_kernel(no.NeuralODE("erf"), X, depth=2, get=None)
    assert u._fields == ("nngp", "ntk")


def test_float32_untied_and_traceable_estimates_bound_their_errors():
    # float32 (x64 off, in a fresh process) against the float64 kernels of this process
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import json, numpy as np, ntk_ode as no
        from ntk_ode import hyper
        from ntk_ode.untied import untied_kernel
        x = np.random.default_rng(0).standard_normal((3, 4))
        m = no.NeuralODE("tanh", sigma_w=1.5, T=1.0, head="phi")
        k, e = untied_kernel(m, x, depth=8, step="1/sqrt(L)", get="ntk", with_error=True)
        t, te = hyper.traceable_kernel_fn(m, 8)(hyper.hyperparameters(m), x, get="ntk", with_error=True)
        assert k.dtype == np.float32 and t.dtype == np.float32
        print(json.dumps([np.asarray(k, float).tolist(), float(e), np.asarray(t, float).tolist(), float(te)]))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    k, e, t, te = json.loads(r.stdout.strip().splitlines()[-1])
    x = np.random.default_rng(0).standard_normal((3, 4))
    m = no.NeuralODE("tanh", sigma_w=1.5, T=1.0, head="phi")
    k64 = np.asarray(no.untied.untied_kernel(m, x, depth=8, step="1/sqrt(L)", get="ntk"))
    ref = np.asarray(no.kernel_fn(m, 8)(x, get="ntk"))
    assert np.max(np.abs(np.asarray(k) - k64)) <= e <= 1e-3 * np.abs(k64).max()
    assert np.max(np.abs(np.asarray(t) - ref)) <= te <= 1e-2 * np.abs(ref).max()


def test_the_series_stands_in_for_quadrature_only_inside_and_only_where_it_is_certified(monkeypatch):
    # the time-grid ladder and the dual-sensitivity probe measure responses with the 4096-term
    # series in place of quadrature duals; the kernels themselves keep the quadrature
    import jax.numpy as jnp

    from ntk_ode.kernels import strategy
    from ntk_ode.kernels.duals import Duals
    from ntk_ode.kernels.grids import chebyshev_grid
    from ntk_ode.kernels.problem import Problem

    model = no.NeuralODE("softplus", T=1.0, sigma_w=1.0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4)))
    quad = Duals(model.activation, 192, quad=True)
    problem = Problem(model, quad, x, x, True)
    grid = chebyshev_grid(12, 1.0)
    with strategy.stand_in(problem, grid, np.arange(2)):
        assert problem.duals == Duals(model.activation, 4096)
        series = problem.solve(grid, shard=False)
    assert problem.duals is quad
    problem.duals = Duals(model.activation, 192)  # certified at these variances (unit scale)
    np.testing.assert_allclose(series, problem.solve(grid, shard=False), rtol=1e-12)
    problem.duals = quad
    monkeypatch.setattr(strategy, "STAND_IN_BOUND", 0.0)  # no series is good enough: no stand-in
    with strategy.stand_in(problem, grid, np.arange(2)):
        assert problem.duals is quad
    assert problem.duals is quad


def test_a_series_within_the_stand_in_bound_measures_the_time_grid_change_of_quadrature():
    # softplus, sigma_w T = 6 (node variances to ~1.6e3): the change of the kernels from 24 to 32
    # Chebyshev intervals (1e-9 relative, the figure behind the grid estimate) measured with a
    # Mehler series whose Parseval bound is just below STAND_IN_BOUND, and with the largest rung,
    # against quadrature duals on the same grids: within the factor 2 the grid estimate's factor
    # 4 covers
    import jax.numpy as jnp

    from ntk_ode.kernels import strategy
    from ntk_ode.kernels.adapt import TERMS_LADDER
    from ntk_ode.kernels.duals import Duals, mehler_certificate
    from ntk_ode.kernels.grids import chebyshev_grid
    from ntk_ode.kernels.problem import Problem

    model = no.NeuralODE("softplus", T=1.0, sigma_w=6.0)
    x = np.random.default_rng(0).standard_normal((1, 5))
    x = jnp.asarray(x * np.sqrt(5) / np.linalg.norm(x))
    grids = chebyshev_grid(24, 1.0), chebyshev_grid(32, 1.0)

    def change(duals):
        problem = Problem(model, duals, x, x, True)
        a, b = (problem.solve(g, shard=False)[:, :2] for g in grids)
        bound = 0.0 if duals.quad else mehler_certificate(duals, problem.probed_variances(grids[1], [0]))
        return float(np.max(np.abs(a - b) / np.abs(b))), bound

    exact, _ = change(Duals(model.activation, 192, quad=True))
    bounds = {k: change(Duals(model.activation, k)) for k in TERMS_LADDER[3:]}
    near = max((k for k, (_, b) in bounds.items() if b <= strategy.STAND_IN_BOUND), key=lambda k: bounds[k][1])
    assert bounds[near][1] > 1e-2 * strategy.STAND_IN_BOUND  # a series near the bound is measured
    for k in (near, TERMS_LADDER[-1]):
        assert 0.5 * exact <= bounds[k][0] <= 2.0 * exact, (k, bounds[k], exact)


@pytest.mark.parametrize("activation, sigma_w", [("softplus", 3.0), ("tanh", 4.0)])
def test_newton_with_quadrature_duals_matches_the_certified_series(activation, sigma_w):
    # quadrature duals solve Sigma by Newton's method (dPhi and E phi'' phi as derivatives), from
    # far away at sigma_w T = 3, 4: the same discrete kernels as the certified 4096-term series
    import jax.numpy as jnp

    from ntk_ode.kernels.duals import Duals, mehler_certificate
    from ntk_ode.kernels.grids import chebyshev_grid
    from ntk_ode.kernels.problem import Problem

    model = no.NeuralODE(activation, T=1.0, sigma_w=sigma_w)
    x = np.random.default_rng(0).standard_normal((1, 4))
    x = jnp.asarray(np.concatenate([x, -x, 1.001 * x]))  # antipodal and near-duplicate
    grid = chebyshev_grid(6, 1.0)
    series = Problem(model, Duals(model.activation, 4096), x, x, True)
    ref = series.solve(grid, shard=False)
    assert mehler_certificate(series.duals, series.probed_variances(grid, np.arange(3))) < 1e-11
    quad = Problem(model, Duals(model.activation, 192, quad=True), x, x, True)
    np.testing.assert_allclose(quad.solve(grid, shard=False), ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def test_quadrature_self_pairs_reuse_the_single_input_solution_and_warm_starts_change_nothing():
    # with quadrature duals an input with itself takes its single-input Sigma (no forward solve)
    # and the single-input solves start from a kept series solution on the same grid: the
    # kernels equal those of the pair solver started from Sigma00, to rounding
    import jax.numpy as jnp

    from ntk_ode.kernels.core import solve_pairs
    from ntk_ode.kernels.duals import Duals
    from ntk_ode.kernels.grids import chebyshev_grid
    from ntk_ode.kernels.problem import Problem, input_covariance

    model = no.NeuralODE("gelu", T=1.0, sigma_w=3.0, head="phi")
    x = np.random.default_rng(3).standard_normal((2, 4))
    x = jnp.asarray(np.concatenate([x, x[:1]]))  # a duplicate row: three equal pairs, two Sigmas
    grid = chebyshev_grid(6, 1.0)
    quad = Duals(model.activation, 192, quad=True)
    cold = Problem(model, quad, x, x, True)
    got = cold.solve(grid, shard=False)
    # the pair solver from Sigma00 on every pair, the self pairs included
    v, tabs = cold.singles(grid)
    s00 = input_covariance(model, x[cold.i1], x[cold.i2])
    ref = solve_pairs(
        quad, grid, cold.hyper, model.head, s00, cold.slot[cold.i1], cold.slot[cold.i2], v, tabs, 8, False, False
    )
    ref = np.concatenate([ref[0][:, None], ref[1][:, None], ref[2]], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-14 * np.abs(ref).max())
    # warm start: a series solution on the grid first, then the quadrature singles from it
    warm = Problem(model, Duals(model.activation, 4096), x, x, True)
    warm.singles(grid)
    warm.duals = quad
    np.testing.assert_allclose(warm.solved(grid, np.arange(3)).S, cold.solved(grid, np.arange(3)).S, rtol=1e-13)
    np.testing.assert_allclose(warm.solve(grid, shard=False), got, rtol=1e-13, atol=1e-14 * np.abs(ref).max())


def test_newton_with_quadrature_duals_works_in_float32():
    # float32 inputs: the Newton solves, the reused self pairs and the quadrature run in float32
    # and match float64 to ~100 eps32 (sigma_w T = 3: the kernels grow ~e^3 over the horizon)
    import jax.numpy as jnp

    from ntk_ode.kernels.duals import Duals
    from ntk_ode.kernels.grids import chebyshev_grid
    from ntk_ode.kernels.problem import Problem

    model = no.NeuralODE("softplus", T=1.0, sigma_w=3.0)
    x = np.random.default_rng(4).standard_normal((2, 4))
    grid = chebyshev_grid(6, 1.0)
    quad = Duals(model.activation, 192, quad=True)
    ref = Problem(model, quad, jnp.asarray(x), jnp.asarray(x), True).solve(grid, shard=False)
    got = Problem(model, quad, jnp.asarray(x, jnp.float32), jnp.asarray(x, jnp.float32), True).solve(grid, shard=False)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_newton_converges_for_a_kinked_activation_without_closed_forms(relu_without_closed_forms):
    # relu registered without closed forms: Newton's variance derivative misses the Dirac mass
    # of relu'' (the steps converge linearly), and still reaches the closed forms' solution
    import jax.numpy as jnp

    from ntk_ode.kernels.duals import Duals
    from ntk_ode.kernels.grids import chebyshev_grid
    from ntk_ode.kernels.problem import Problem

    relu_q = relu_without_closed_forms
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4)))
    grid = chebyshev_grid(6, 1.0)
    closed = no.NeuralODE("relu", T=1.0, sigma_w=2.0)
    ref = Problem(closed, Duals(closed.activation, 0), x, x, True).solve(grid, shard=False)
    model = no.NeuralODE(relu_q, T=1.0, sigma_w=2.0)
    got = Problem(model, Duals(relu_q, 192, quad=True), x, x, True).solve(grid, shard=False)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def test_symmetric_quadrature_duals_mirror_the_full_grid():
    # one input with itself: Phi and dPhi from the upper triangle, mirrored, equal the full grid
    import jax.numpy as jnp

    from ntk_ode.kernels.duals import Duals

    duals = Duals(no.get_activation("gelu"), 192, quad=True)
    v = jnp.asarray([0.3, 2.0, 40.0, 900.0])
    rho = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (4, 4)))
    rho = (rho + rho.T) / 2
    S = jnp.sqrt(v[:, None] * v[None, :]) * rho.at[jnp.diag_indices(4)].set(1.0)
    for f in (duals.phi, duals.dphi):
        full, tri = f(v, v, S, (), ()), f(v, v, S, (), (), symmetric=True)
        np.testing.assert_allclose(tri, full, rtol=1e-14, atol=0)
        np.testing.assert_array_equal(tri, tri.T)
