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
