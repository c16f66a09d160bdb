"""Argument and result checks shared by the model, gradient and kernel modules.

Checks of *values* (a failed solve, a non-finite result) go through :func:`fail_if`: eagerly it
raises a plain Python exception with our message; under ``jax.jit``/``jax.vmap`` tracing it
becomes ``equinox.error_if``, which raises the same message at run time (as a RuntimeError).
So every public function keeps its checks under transformations. Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, TypeAlias, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ArrayOrNumpy",
    "check_depth",
    "check_inputs",
    "check_params",
    "default_rtol",
    "eager_errors",
    "fail_if",
    "is_traced",
    "positive_int",
]

A = TypeVar("A")
ArrayOrNumpy: TypeAlias = jax.Array | np.ndarray
"""Input arrays: JAX or numpy (shapes are given with jaxtyping, e.g. ``Float[ArrayOrNumpy, "N d"]``)."""


def is_traced(*xs: Any) -> bool:
    """True if any leaf of ``xs`` is a JAX tracer (we are inside jit, vmap, grad, ...).

    Args:
        *xs: pytrees.

    Returns:
        Whether a leaf is traced.
    """
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs))


def fail_if(value: A, bad: Any, message: str, exc: type[Exception] = RuntimeError) -> A:
    """Return ``value``, or fail with ``message`` where the boolean ``bad`` is true.

    Args:
        value: the pytree to pass through (under tracing the check is attached to it).
        bad: a boolean scalar or array (any true entry fails).
        message: what went wrong and what to do.
        exc: the exception raised eagerly.

    Returns:
        ``value`` unchanged.

    Raises:
        exc: eagerly, when ``bad`` holds; under tracing a RuntimeError at run time.
    """
    if is_traced(bad):  # the exception's name travels in the message (see eager_errors)
        return eqx.error_if(value, jnp.any(bad), f"[{exc.__name__}] {message}")
    if bool(np.any(np.asarray(bad))):
        raise exc(message)
    return value


_TRACED_ERROR = re.compile(r"EquinoxRuntimeError: \[(RuntimeError|FloatingPointError)\] ([^\n]+)")


@contextlib.contextmanager
def eager_errors() -> Iterator[None]:
    """Turn a failed :func:`fail_if` check inside a jitted call back into its own exception.

    A check that fails inside ``jax.jit`` surfaces as XLA's ``JaxRuntimeError`` ("INTERNAL:
    CpuCallback error" and a long traceback). A public function that jits internally and is
    called eagerly wraps the call in this context, so the caller gets the RuntimeError or
    FloatingPointError that the eager path raises, with the check's message. Other errors pass.

    Yields:
        Nothing.

    Raises:
        RuntimeError: a failed check (a solve that did not converge, ...).
        FloatingPointError: a failed finiteness check.
    """
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        m = _TRACED_ERROR.search(str(e))
        if m is None:
            raise
        exc = FloatingPointError if m.group(1) == "FloatingPointError" else RuntimeError
        raise exc(m.group(2).strip()) from None


def check_depth(depth: Any) -> int | None:
    """Validate ``depth``: None (the ODE) or a positive integer L (the ResNet).

    Args:
        depth: the value to check.

    Returns:
        None or ``int(depth)``.

    Raises:
        ValueError: anything else.
    """
    if depth is None:
        return None
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer, float)) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be None (the ODE) or a positive integer, got {depth!r}")
    return int(depth)


def check_inputs(x: Any, d: int | None = None, name: str = "x", expected_by: str = "the model expects") -> Any:
    """Validate an input batch: a finite real array of shape (N, d).

    Args:
        x: the inputs.
        d: the feature count required, or None.
        name: the argument's name in messages.
        expected_by: who requires ``d`` (for the message).

    Returns:
        ``x`` as a floating JAX array (in the default float dtype if it was an integer or a
        half-precision array);
        tracers pass through unchecked.

    Raises:
        ValueError: wrong type, shape, dtype (complex) or non-finite entries.
    """
    if isinstance(x, jax.core.Tracer):
        return x
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array of shape (N, d), got {type(x).__name__}") from e
    if raw.dtype == object or raw.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real (float or integer) array, got dtype {raw.dtype}")
    if raw.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got shape {raw.shape}")
    if raw.shape[0] < 1 or raw.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {raw.shape}")
    if d is not None and raw.shape[1] != d:
        raise ValueError(f"{name} has d={raw.shape[1]} features but {expected_by} d={d}")
    # integers and half precision (float16, bfloat16: 3 digits) compute in the default float
    low = raw.dtype.kind != "f" or raw.dtype.itemsize < 4
    dtype = jnp.result_type(float) if low else jax.dtypes.canonicalize_dtype(raw.dtype)
    with np.errstate(over="ignore"):
        finite = np.isfinite(raw.astype(dtype))  # after the cast: 1e39 overflows float32
    if not np.all(finite):
        raise ValueError(
            f"{name} contains non-finite values (nan or inf)"
            + (f" after conversion to {np.dtype(dtype).name}" if np.all(np.isfinite(raw)) else "")
        )
    return jnp.asarray(x, dtype=dtype)


def check_params(params: Any) -> tuple[int, int]:
    """Validate ``{"U": (n, d), "W": (n, n), "v": (n,)}``.

    Args:
        params: the parameters (traced leaves are checked for shape only).

    Returns:
        ``(n, d)``: width and input dimension.

    Raises:
        ValueError: wrong keys, shapes or non-finite entries, naming the leaf.
    """
    if not isinstance(params, dict) or set(params) != {"U", "W", "v"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a dict with keys 'U', 'W', 'v', got {got}")
    U, W, v = params["U"], params["W"], params["v"]
    if jnp.ndim(U) != 2:
        raise ValueError(f"params['U'] must have shape (n, d), got {jnp.shape(U)}")
    n, d = jnp.shape(U)
    if jnp.shape(W) != (n, n):
        raise ValueError(f"params['W'] must have shape (n, n) = ({n}, {n}) to match U, got {jnp.shape(W)}")
    if jnp.shape(v) != (n,):
        raise ValueError(f"params['v'] must have shape (n,) = ({n},) to match U, got {jnp.shape(v)}")
    for k in ("U", "W", "v"):
        if np.dtype(jnp.result_type(params[k])).kind not in "biuf":
            raise ValueError(f"params['{k}'] must be a real array, got dtype {jnp.result_type(params[k])}")
    if not is_traced(U, W, v):
        for k in ("U", "W", "v"):
            if not np.all(np.isfinite(np.asarray(params[k]))):
                raise ValueError(f"params['{k}'] contains non-finite values")
    return int(n), int(d)


def default_rtol(dtype: Any) -> float:
    """The kernels' default target accuracy in ``dtype``: 1e-8 in float64, 1e-5 in float32.

    Args:
        dtype: the working dtype.

    Returns:
        The relative tolerance.
    """
    return 1e-8 if float(jnp.finfo(dtype).eps) < 1e-10 else 1e-5


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, refusing anything but a positive integer.

    Args:
        name: the argument's name (for the message).
        value: the value.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: not a positive integer (bools, fractions, 0 and negatives included).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
