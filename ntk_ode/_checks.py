"""Argument checks shared by the model and the kernel modules (imports nothing of ours)."""


def check_depth(depth) -> int | None:
    if depth is None:
        return None
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be None (the ODE) or a positive integer, got {depth!r}")
    return int(depth)
