"""Tests of numerics run in float64. Compiled programs are shared between the test processes
(and the command-line runs the tests start) through JAX's persistent compilation cache in
.pytest_cache/jax, unless NTK_ODE_CACHE_DIR names another folder (empty: off)."""

import os

import jax

from ntk_ode.cli import enable_compilation_cache

jax.config.update("jax_enable_x64", True)
os.environ.setdefault(
    "NTK_ODE_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax")
)
enable_compilation_cache()
