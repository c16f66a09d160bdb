"""Tests of numerics run in float64. Compiled programs are shared between the test processes
(and the command-line runs the tests start) through JAX's persistent compilation cache in
.pytest_cache/jax, unless NTK_ODE_CACHE_DIR names another folder (empty: off)."""

import os

import jax
import pytest

from ntk_ode.cli import enable_compilation_cache

jax.config.update("jax_enable_x64", True)
os.environ.setdefault(
    "NTK_ODE_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax")
)
enable_compilation_cache()


class _Lowerings:
    """Counts in-process compilations: every one lowers to MLIR, whether or not the persistent
    compilation cache then serves the executable."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, event, duration, **_):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            self.count += 1


_LOWERINGS = _Lowerings()


@pytest.fixture
def compilations():
    """The process's compilation counter (read ``.count`` before and after a call)."""
    return _LOWERINGS


# The slow tier: `make test-slow` (and CI) runs these, `make test` leaves them out so that the
# README's test command stays near 10 minutes on 2 cores. Each took over a minute on 2 loaded
# cores (pytest --durations); they are end-to-end runs (demo, tutorials, kill-and-resume,
# subprocess clusters) and the longest accuracy checks, each with a faster sibling in the
# default tier.
SLOW = (
    "tests/test_tutorials.py::test_tutorial_runs[06_fit_hyperparameters]",
    "tests/test_tutorials.py::test_tutorial_runs[04_activation_comparison]",
    "tests/test_cli.py::test_demo_smallest",
    "tests/test_docs.py::test_python_blocks_in_the_docs_run[README.md#0]",
    "tests/test_limits.py::test_ode_kernel_matches_richardson_of_resnet_kernels_and_rate",
    "tests/test_limits.py::test_relu_closed_form_vs_quadrature",
    "tests/test_untied.py::test_kernels_match_monte_carlo_of_finite_networks[tanh]",
    "tests/test_faults.py::test_killed_sweep_resumes_to_the_uninterrupted_result",
    "tests/test_limits_accuracy.py::test_relu_ode_kernel_reaches_1e8_with_honest_estimate",
    "tests/test_traceable.py::test_jit_and_vmap_over_parameters_equal_eager[None]",
    "tests/test_empirical.py::test_batched_empirical_ntk_equals_the_unbatched_call",
    "tests/test_tiles.py::test_two_processes_deal_the_seeds_of_a_width_sweep",
    "tests/test_untied.py::test_certified_untied_kernels_match_an_independent_recursion[gelu-1/sqrt(L)-phi-16-3.0-2.5-1.5]",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW:
            item.add_marker(pytest.mark.slow)
