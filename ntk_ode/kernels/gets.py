"""The kernels' names and the one parser of ``get`` (as in neural-tangents).

``get`` a string returns that one array; a tuple returns a namedtuple of exactly those fields in
that order (:func:`kernel_type`), which unpacks like neural-tangents' ``Kernel``.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any

__all__ = ["GETS", "Kernel", "kernel_type", "parse_get", "select"]

Kernel = collections.namedtuple("Kernel", ["nngp", "ntk", "ntk_U", "ntk_W", "ntk_v"], defaults=(None, None, None))
Kernel.__doc__ = """Infinite-width kernels; ``ntk = ntk_U + ntk_W + ntk_v`` (the blocks of U, W and v)."""
GETS = ("nngp", "ntk", "ntk_U", "ntk_W", "ntk_v")


def parse_get(get: Any, allowed: Sequence[str] = GETS) -> tuple[tuple[str, ...], bool]:
    """Validate ``get``: a kernel name, a non-empty tuple of distinct names from ``allowed``, or
    None for all of ``allowed`` (as in neural-tangents, where ``get=None`` returns the whole
    Kernel).

    Args:
        get: the request.
        allowed: the names this caller provides.

    Returns:
        ``(names, single)``: the names in order, and whether one array (not a namedtuple) is
        returned.

    Raises:
        ValueError: anything else, naming ``get`` and the allowed names.
    """
    allowed = tuple(allowed)
    if get is None:  # neural-tangents: every kernel this caller provides
        return allowed, False
    single = isinstance(get, str)
    try:
        names = (get,) if single else tuple(get)
    except TypeError:
        names = ()
    bad = [g for g in names if g not in allowed]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"get must be one of {allowed} or a tuple of distinct ones, got {get!r}")
    return names, single


@functools.cache
def kernel_type(names: tuple) -> type:
    """The namedtuple returned for ``get=names``: exactly those fields, in that order (as in
    neural-tangents), so ``nngp, ntk = kfn(x1, None, ("nngp", "ntk"))`` unpacks. ``names`` equal
    to all five gives :class:`Kernel` itself.

    Args:
        names: kernel names.

    Returns:
        The namedtuple class.
    """
    if tuple(names) == GETS:
        return Kernel
    t = collections.namedtuple("Kernel", names)  # type: ignore[misc]
    t.__doc__ = f"Infinite-width kernels {', '.join(names)} (a selection of :class:`Kernel`'s fields)."
    return t


def select(values: dict, names: tuple, single: bool) -> Any:
    """What ``get`` asked for: one value, or the namedtuple of ``names``.

    Args:
        values: every computed kernel by name.
        names: from :func:`parse_get`.
        single: from :func:`parse_get`.

    Returns:
        ``values[names[0]]`` or ``kernel_type(names)(...)``.
    """
    return values[names[0]] if single else kernel_type(names)(*(values[g] for g in names))
