"""Full-batch gradient descent on the Neural ODE / weight-tied ResNet, tracking Theorem 2.

Loss ``L(theta) = 1/2 ||f(X) - y||^2``. Steps run as a jitted ``lax.scan`` between record points;
at each record point the NTK ``H_k`` on the training set (structured method), its extreme
eigenvalues, its relative change, the distance from initialization (per block) and the
losses are stored, next to Theorem 2's bound ``(1 - eta lambda_0)^k L(theta_0)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .empirical import empirical_ntk
from .gradients import batch_vjp, warn_backprop_through_kinks
from .limits import kernel_fn
from .model import NeuralODE, Solver, check_depth, check_inputs, check_params
from .sweep import atomic_write_json, versions

__all__ = ["train", "TrainResult", "mse_loss"]


def mse_loss(f, y):
    return 0.5 * jnp.sum((f - y) ** 2)


@dataclasses.dataclass
class TrainResult:
    params: dict
    records: dict  # name -> np.ndarray over record points
    learning_rate: float | None
    lambda_0: float | None
    config: dict


def _check_targets(y, N, name):
    y = np.asarray(y, float)
    if y.shape != (N,):
        raise ValueError(f"{name} must have shape ({N},) to match the inputs, got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains non-finite values")
    return jnp.asarray(y)


@eqx.filter_jit
def _run_chunk(model, params, opt_state, x, y, n_steps, depth, method, solver, optimizer):
    def step(carry, _):
        p, s = carry
        f = model.readout(p["v"], model.final_state(p, x, depth, solver))
        g, _ = batch_vjp(model, p, x, f - y, depth, method, solver)
        upd, s = optimizer.update(g, s, p)
        return (optax.apply_updates(p, upd), s), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), None, length=n_steps)
    return params, opt_state


def train(
    model: NeuralODE,
    params,
    x,
    y,
    steps: int,
    *,
    learning_rate: str | float = "auto",
    optimizer: optax.GradientTransformation | None = None,
    depth: int | None = None,
    gradient: str = "auto",
    record_every: int = 50,
    x_test=None,
    y_test=None,
    lambda_0: str | float | None = "auto",
    track_ntk: bool = True,
    solver=None,
    checkpoint: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` from ``params`` on ``(x, y)`` by full-batch gradient descent.

    Args:
        learning_rate: "auto" (1 / lambda_max(H_0), H_0 the initial NTK on x), "theory"
            (1 / ||X||^2, ||X|| the spectral norm of the data matrix) or a positive number.
            A warning is issued above the stability limit 2 / lambda_max(H_0).
        optimizer: any optax GradientTransformation; default ``optax.sgd(learning_rate)``.
            The theory bound is only reported for plain SGD.
        depth: None (the ODE) or L (the weight-tied ResNet).
        gradient: "backprop", "adjoint" (continuous adjoint; depth=None only) or "auto" (default):
            "adjoint" for the ODE with a kinked activation and an adaptive solver, where backprop
            through the step-size controller does not converge to the true gradient; "backprop"
            otherwise.
        lambda_0: "auto" (lambda_min of kernel_fn(model, depth) on x), a number, or None.
        checkpoint: path prefix; state is saved after every record point and a rerun resumes.
    """
    n, d = check_params(params)
    x = check_inputs(x, d)
    N = x.shape[0]
    y = _check_targets(y, N, "y")
    depth = check_depth(depth)
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if int(record_every) != record_every or record_every < 1:
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}")
    if gradient not in ("auto", "backprop", "adjoint"):
        raise ValueError(f"gradient must be 'auto', 'backprop' or 'adjoint', got {gradient!r}")
    if x_test is not None:
        x_test = check_inputs(x_test, d, "x_test")
        y_test = _check_targets(y_test, x_test.shape[0], "y_test")
    solver = Solver.make(solver)
    if gradient == "auto":
        kinked = bool(model.activation.kinks) or not model.activation.dphi_lipschitz
        gradient = "adjoint" if (depth is None and solver.steps is None and kinked) else "backprop"
    warn_backprop_through_kinks(model, depth, gradient, solver)

    H0 = np.asarray(empirical_ntk(model, params, x, depth=depth, solver=solver))
    ev0 = np.linalg.eigvalsh(H0)
    if isinstance(learning_rate, str):
        if learning_rate == "auto":
            lr = 1.0 / ev0[-1]
        elif learning_rate == "theory":
            lr = 1.0 / np.linalg.norm(np.asarray(x), 2) ** 2
        else:
            raise ValueError(f"learning_rate must be 'auto', 'theory' or a positive number, got {learning_rate!r}")
    else:
        lr = float(learning_rate)
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    if optimizer is None:
        if lr > 2.0 / ev0[-1]:
            warnings.warn(f"learning_rate {lr:.3g} exceeds the stability limit 2 / lambda_max(H_0) = "
                          f"{2.0 / ev0[-1]:.3g}: gradient descent may diverge", RuntimeWarning, stacklevel=2)
        optimizer = optax.sgd(lr)
        plain_sgd = True
    else:
        plain_sgd = False
    if lambda_0 == "auto":
        lam0 = float(np.linalg.eigvalsh(np.asarray(kernel_fn(model, depth=depth)(x, get="ntk")))[0])
    else:
        lam0 = None if lambda_0 is None else float(lambda_0)

    config = {"activation": model.activation.name, "T": model.T, "sigma_w": model.sigma_w, "sigma_u": model.sigma_u,
              "sigma_v": model.sigma_v, "head": model.head, "depth": depth, "width": n, "N": N, "steps": int(steps),
              "record_every": int(record_every), "learning_rate": lr, "gradient": gradient, "solver": solver.name}
    p0 = params
    state = _load_checkpoint(checkpoint, config, params, optimizer)
    if state is None:
        opt_state = optimizer.init(params)
        records, k = {}, 0
    else:
        params, opt_state, records, k = state

    def record(p, step):
        f = np.asarray(model.apply(p, x, depth=depth, solver=solver))
        row = {"step": step, "train_loss": float(0.5 * np.sum((f - np.asarray(y)) ** 2)), "f_train": f.tolist()}
        if x_test is not None:
            ft = np.asarray(model.apply(p, x_test, depth=depth, solver=solver))
            row["test_loss"] = float(0.5 * np.sum((ft - np.asarray(y_test)) ** 2))
            row["f_test"] = ft.tolist()
        for b in "UWv":
            dist = float(np.linalg.norm(np.asarray(p[b]) - np.asarray(p0[b])))
            row[f"dist_{b}"] = dist
            row[f"rel_dist_{b}"] = dist / float(np.linalg.norm(np.asarray(p0[b])))
        row["dist"] = math.sqrt(sum(row[f"dist_{b}"] ** 2 for b in "UWv"))
        row["rel_dist"] = row["dist"] / math.sqrt(sum(float(np.sum(np.asarray(p0[b]) ** 2)) for b in "UWv"))
        if track_ntk:
            H = H0 if step == 0 else np.asarray(empirical_ntk(model, p, x, depth=depth, solver=solver))
            ev = np.linalg.eigvalsh(H)
            row.update(lambda_min=float(ev[0]), lambda_max=float(ev[-1]),
                       ntk_rel_change=float(np.linalg.norm(H - H0) / np.linalg.norm(H0)))
        for key, val in row.items():
            records.setdefault(key, []).append(val)

    if k == 0 and not records:
        record(params, 0)
    bar = None
    if progress and steps > k:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(steps), initial=k, desc="gradient descent", unit="step")
    t0 = time.perf_counter()
    while k < steps:
        m = min(record_every, steps - k)
        params, opt_state = _run_chunk(model, params, opt_state, x, y, m, depth, gradient, solver, optimizer)
        if not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(params)):
            raise FloatingPointError(f"training diverged (non-finite parameters) before step {k + m}; "
                                     f"lower the learning rate (now {lr:.3g})")
        k += m
        record(params, k)
        _save_checkpoint(checkpoint, config, params, opt_state, records, k)
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    out = {key: np.asarray(v) for key, v in records.items()}
    if plain_sgd and lam0 is not None:
        out["bound"] = (1.0 - lr * lam0) ** out["step"] * out["train_loss"][0]
    config["time_s"] = time.perf_counter() - t0
    return TrainResult(params=params, records=out, learning_rate=lr, lambda_0=lam0, config=config)


def _save_checkpoint(path, config, params, opt_state, records, k):
    if path is None:
        return
    leaves = jax.tree_util.tree_leaves((params, opt_state))
    tmp = path + ".tmp.npz"
    np.savez(tmp, *[np.asarray(a) for a in leaves])
    os.replace(tmp, path + ".npz")
    atomic_write_json(path + ".json", {"config": config, "step": k, "records": records, "versions": versions()})


def _load_checkpoint(path, config, params, optimizer):
    if path is None or not os.path.exists(path + ".json") or not os.path.exists(path + ".npz"):
        return None
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        arrays = np.load(path + ".npz")
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is unreadable ({e}); remove it to start over") from e
    if meta.get("config") != config:
        raise ValueError(f"checkpoint {path} belongs to another configuration; use another path")
    template = (params, optimizer.init(params))
    leaves, tree = jax.tree_util.tree_flatten(template)
    loaded = [jnp.asarray(arrays[f"arr_{i}"]) for i in range(len(leaves))]
    params, opt_state = jax.tree_util.tree_unflatten(tree, loaded)
    return params, opt_state, meta["records"], int(meta["step"])
