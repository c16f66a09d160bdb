"""Argument checks shared by the model and the kernel modules (imports nothing of ours)."""

import jax
import jax.numpy as jnp
import numpy as np


def check_depth(depth) -> int | None:
    if depth is None:
        return None
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be None (the ODE) or a positive integer, got {depth!r}")
    return int(depth)


def check_inputs(x, d: int | None = None, name: str = "x", expected_by: str = "the model expects"):
    """Validate an input batch: a finite float array of shape (N, d)."""
    if isinstance(x, jax.core.Tracer):
        return x
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"{name} must be an array of shape (N, d), got {type(x).__name__}") from e
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} has d={arr.shape[1]} features but {expected_by} d={d}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if not isinstance(arr, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x, dtype=float))):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return arr
