"""The engine's structure: hyperparameters as data (no recompilation), one core for every driver."""

import jax
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode import hyper
from ntk_ode.kernels import duals as duals_mod

jax.config.update("jax_enable_x64", True)

X = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (6, 4)))


class _Compilations:
    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, event, duration, **_):
        # lowerings: every in-process compilation lowers, whether or not the persistent
        # compilation cache (tests/conftest.py) then serves the executable
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            self.count += 1


_COUNTER = _Compilations()


@pytest.mark.parametrize("activation, depth", [("erf", None), ("relu", 8)])
def test_a_new_sigma_w_or_T_compiles_nothing(activation, depth):
    first = no.kernel_fn(no.NeuralODE(activation, sigma_w=1.0, T=1.0), depth)(X, get=("nngp", "ntk"))
    before = _COUNTER.count
    other = no.NeuralODE(activation, sigma_w=1.37, T=0.61, sigma_v=1.2)
    second = no.kernel_fn(other, depth)(X, get=("nngp", "ntk"))
    assert _COUNTER.count == before, f"{_COUNTER.count - before} compilations for a new setting"
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
