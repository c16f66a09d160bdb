"""Full-batch gradient descent on the Neural ODE / weight-tied ResNet, tracking Theorem 2.

Loss ``L(theta) = 1/2 ||f(X) - y||^2``. Steps run as a jitted ``lax.scan`` between record points;
at each record point the NTK ``H_k`` on the training set (structured method), its extreme
eigenvalues, its relative change, the distance from initialization (per block) and the
losses are stored, next to Theorem 2's bound ``(1 - eta lambda_0)^k L(theta_0)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import ArrayLike

from ._checks import ArrayOrNumpy, check_depth, check_inputs
from .empirical import empirical_ntk
from .gradients import GradMethod, batch_vjp, check_grad_method, warn_backprop_through_kinks
from .kernels import kernel_fn
from .model import NeuralODE, Params, Solver, SolverName, check_params, hyper_jit
from .results import ResumeError, atomic_write_npz, check_resume, exclusive, fingerprint, provenance, read_npz

__all__ = ["train", "TrainResult", "mse_loss", "resolve_grad_method"]

DIVERGENCE_FACTOR = 1e8  # a training loss this many times the initial one is called divergence


def mse_loss(f: ArrayLike, y: ArrayOrNumpy) -> jax.Array:
    """The training loss ``1/2 ||f - y||^2`` (a sum, not a mean; docs/theory.md section 5).

    Args:
        f: outputs (N,).
        y: targets (N,).

    Returns:
        The loss (a scalar).
    """
    return 0.5 * jnp.sum((jnp.asarray(f) - jnp.asarray(y)) ** 2)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        params: the final parameters.
        records: name -> array over record points (``step``, ``train_loss``, ``f_train``,
            distances from initialization, NTK extremes, ``bound``, and test losses).
        learning_rate: the learning rate used.
        lambda_0: the lambda_min of K_inf on the training inputs (or what was passed).
        config: the run's provenance (config, versions) and ``time_s``.
    """

    params: Params
    records: dict
    learning_rate: float
    lambda_0: float | None
    config: dict


def _check_targets(y, N, name):
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real array, got dtype {y.dtype}")
    y = y.astype(float)
    if y.shape != (N,):
        raise ValueError(f"{name} must have shape ({N},) to match the inputs, got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains non-finite values")
    return jnp.asarray(y)


@hyper_jit
def _run_chunk(model, params, opt_state, x, y, n_steps, depth, method, solver, optimizer):
    def step(carry, _):
        p, s, ok = carry
        f, ok_f = model.forward(p, x, depth, solver)
        g, ok_g = batch_vjp(model, p, x, f - y, depth, method, solver)
        upd, s = optimizer.update(g, s, p)
        return (optax.apply_updates(p, upd), s, ok & ok_f & ok_g), None

    (params, opt_state, ok), _ = jax.lax.scan(step, (params, opt_state, jnp.asarray(True)), None, length=n_steps)
    return params, opt_state, ok


def resolve_grad_method(model: NeuralODE, depth: int | None, method: str, solver: Solver) -> str:
    """Resolve ``method="auto"``: the adjoint for the ODE with a kinked activation and an adaptive
    solver (backprop through the step-size controller does not converge there), backprop otherwise.

    Args:
        model: the model.
        depth: None or L.
        method: "auto", "adjoint" or "backprop".
        solver: the ODE solver.

    Returns:
        "adjoint" or "backprop".

    Raises:
        ValueError: an unknown method.
    """
    check_grad_method(method, allow_auto=True)
    if method != "auto":
        return method
    kinked = bool(model.activation.kinks) or not model.activation.dphi_lipschitz
    return "adjoint" if (depth is None and solver.steps is None and kinked) else "backprop"


def _learning_rate(learning_rate, x, lam_max):
    if isinstance(learning_rate, str):
        if learning_rate == "auto":
            return 1.0 / lam_max
        if learning_rate == "theory":
            return 1.0 / np.linalg.norm(np.asarray(x), 2) ** 2
        raise ValueError(f"learning_rate must be 'auto', 'theory' or a positive number, got {learning_rate!r}")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating, np.integer)):
        raise ValueError(f"learning_rate must be 'auto', 'theory' or a positive number, got {learning_rate!r}")
    lr = float(learning_rate)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    return lr


def _optimizer_identity(optimizer, params) -> str:
    """What a checkpoint records of the optimizer: its state's structure and a fingerprint of its
    initial state (two optax optimizers with the same state shape but other hyperparameters are
    told apart by the config's learning_rate / the user's own config)."""
    st = optimizer.init(params)
    return str(jax.tree_util.tree_structure(st)) + ":" + fingerprint(*jax.tree_util.tree_leaves(st))


class _Recorder:
    """Evaluates the tracked quantities at a record point and appends them to ``records``."""

    def __init__(self, model, x, y, x_test, y_test, depth, solver, p0, H0, track_ntk):
        self.model, self.x, self.y, self.x_test, self.y_test = model, x, np.asarray(y), x_test, y_test
        self.depth, self.solver, self.p0, self.H0, self.track_ntk = depth, solver, p0, H0, track_ntk
        self.norm0 = {b: float(np.linalg.norm(np.asarray(p0[b]))) for b in "UWv"}

    def __call__(self, records: dict, p, step: int) -> None:
        m, depth, solver = self.model, self.depth, self.solver
        f = np.asarray(m.apply(p, self.x, depth=depth, solver=solver))
        row: dict[str, Any] = {"step": step, "train_loss": float(mse_loss(f, self.y)), "f_train": f.tolist()}
        if self.x_test is not None:
            ft = np.asarray(m.apply(p, self.x_test, depth=depth, solver=solver))
            row["test_loss"] = float(mse_loss(ft, self.y_test))
            row["f_test"] = ft.tolist()
        for b in "UWv":
            row[f"dist_{b}"] = float(np.linalg.norm(np.asarray(p[b]) - np.asarray(self.p0[b])))
            row[f"rel_dist_{b}"] = row[f"dist_{b}"] / self.norm0[b]
        row["dist"] = math.sqrt(sum(row[f"dist_{b}"] ** 2 for b in "UWv"))
        row["rel_dist"] = row["dist"] / math.sqrt(sum(v**2 for v in self.norm0.values()))
        if self.track_ntk:
            H = self.H0 if step == 0 else np.asarray(empirical_ntk(m, p, self.x, depth=depth, solver=solver))
            ev = np.linalg.eigvalsh(H)
            row.update(
                lambda_min=float(ev[0]),
                lambda_max=float(ev[-1]),
                ntk_rel_change=float(np.linalg.norm(H - self.H0) / np.linalg.norm(self.H0)),
            )
        for key, val in row.items():
            records.setdefault(key, []).append(val)


def train(
    model: NeuralODE,
    params: Params,
    x: ArrayOrNumpy,
    y: ArrayOrNumpy,
    steps: int,
    *,
    learning_rate: Literal["auto", "theory"] | float = "auto",
    optimizer: optax.GradientTransformation | None = None,
    depth: int | None = None,
    method: GradMethod | Literal["auto"] = "auto",
    record_every: int = 50,
    x_test: ArrayOrNumpy | None = None,
    y_test: ArrayOrNumpy | None = None,
    lambda_0: Literal["auto"] | float | None = "auto",
    track_ntk: bool = True,
    solver: Solver | SolverName | None = None,
    checkpoint: str | None = None,
    progress: bool = True,
    gradient: str | None = None,
) -> TrainResult:
    """Train ``model`` from ``params`` on ``(x, y)`` by full-batch gradient descent.

    The loss is ``1/2 ||f(X) - y||^2``. Steps run as a jitted ``lax.scan`` between record
    points. Runs eagerly (it shows progress and writes checkpoints).

    Args:
        model: the model.
        params: initial parameters.
        x: training inputs (N, d).
        y: targets (N,).
        steps: number of gradient steps (>= 0).
        learning_rate: "auto" (1 / lambda_max(H_0), H_0 the initial NTK on x), "theory"
            (1 / ||X||^2, ||X|| the spectral norm of the data matrix) or a positive number.
            A warning is issued above the stability limit 2 / lambda_max(H_0).
        optimizer: any optax GradientTransformation; default ``optax.sgd(learning_rate)``.
            The theory bound is only reported for plain SGD.
        depth: None (the ODE) or L (the weight-tied ResNet).
        method: the gradient method as in :func:`ntk_ode.grad` ("adjoint", "backprop"), or
            "auto" (default; :func:`resolve_grad_method`).
        record_every: steps between record points.
        x_test: optional test inputs.
        y_test: their targets.
        lambda_0: "auto" (lambda_min of kernel_fn(model, depth) on x), a number, or None.
        track_ntk: record the NTK's extreme eigenvalues and relative change.
        solver: as in :meth:`NeuralODE.apply`.
        checkpoint: path prefix; ``<checkpoint>.npz`` (parameters, optimizer state, records and
            provenance in one file) is written after every record point. A rerun resumes; more
            ``steps`` extend a finished run; a different config, data, initial parameters or
            optimizer is refused (:class:`~ntk_ode.results.ResumeError`).
        progress: show a progress bar.
        gradient: deprecated name of ``method``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad arguments (named).
        ResumeError: the checkpoint belongs to another run or is not readable.
        LockedError: another process is writing the checkpoint.
        RuntimeError: a solve failed.
        FloatingPointError: training diverged (non-finite parameters, or the loss grew
            1e8-fold); lower the learning rate.
    """
    if gradient is not None:
        warnings.warn(
            "train(gradient=...) is deprecated; use method=... (the name grad uses)", DeprecationWarning, stacklevel=2
        )
        method = gradient  # type: ignore[assignment]  # validated by resolve_grad_method
    n, d = check_params(params)
    x = check_inputs(x, d)
    N = x.shape[0]
    y = _check_targets(y, N, "y")
    depth = check_depth(depth)
    for name, val, lo in (("steps", steps, 0), ("record_every", record_every, 1)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
    if x_test is not None:
        x_test = check_inputs(x_test, d, "x_test")
        y_test = _check_targets(y_test, x_test.shape[0], "y_test")
    solver = Solver.make(solver)
    resolved = resolve_grad_method(model, depth, method, solver)
    warn_backprop_through_kinks(model, depth, resolved, solver)

    H0 = np.asarray(empirical_ntk(model, params, x, depth=depth, solver=solver))
    lam_max = float(np.linalg.eigvalsh(H0)[-1])
    lr = _learning_rate(learning_rate, x, lam_max)
    plain_sgd = optimizer is None
    if optimizer is None:
        if lr > 2.0 / lam_max:
            warnings.warn(
                f"learning_rate {lr:.3g} exceeds the stability limit 2 / lambda_max(H_0) = "
                f"{2.0 / lam_max:.3g}: gradient descent may diverge",
                RuntimeWarning,
                stacklevel=2,
            )
        optimizer = optax.sgd(lr)
    lam0: float | None
    if lambda_0 == "auto":
        lam0 = float(np.linalg.eigvalsh(np.asarray(kernel_fn(model, depth=depth)(x, get="ntk")))[0])
    else:
        lam0 = None if lambda_0 is None else float(lambda_0)

    config = {
        **model.config(),
        "depth": depth,
        "width": n,
        "N": N,
        "steps": int(steps),
        "record_every": int(record_every),
        "learning_rate": lr,
        "method": resolved,
        "solver": dataclasses.asdict(solver),
        "optimizer": "sgd" if plain_sgd else _optimizer_identity(optimizer, params),
        "data": fingerprint(x, y, x_test, y_test),
        "init_params": fingerprint(*(params[k] for k in "UWv")),
        "track_ntk": bool(track_ntk),
    }
    record = _Recorder(model, x, y, x_test, y_test, depth, solver, params, H0, track_ntk)
    with contextlib.ExitStack() as stack:
        if checkpoint is not None:
            stack.enter_context(exclusive(checkpoint + ".npz"))
        state = _load_checkpoint(checkpoint, config, params, optimizer)
        if state is None:
            records: dict[str, list] = {}
            opt_state, k = optimizer.init(params), 0
            record(records, params, 0)
        else:
            params, opt_state, records, k = state
        return _descend(
            model,
            params,
            opt_state,
            optimizer,
            x,
            y,
            steps,
            k,
            records,
            record,
            config,
            checkpoint,
            progress,
            plain_sgd,
            lam0,
        )


def _descend(
    model, params, opt_state, optimizer, x, y, steps, k, records, record, config, checkpoint, progress, plain_sgd, lam0
) -> TrainResult:
    """The loop between record points: scan, check, record, checkpoint."""
    depth, method, lr = config["depth"], config["method"], config["learning_rate"]
    solver = Solver(**config["solver"])
    bar = None
    if progress and steps > k:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(steps), initial=k, desc="gradient descent", unit="step")
    t0 = time.perf_counter()
    while k < steps:
        m = min(config["record_every"], steps - k)
        params, opt_state, ok = _run_chunk(model, params, opt_state, x, y, m, depth, method, solver, optimizer)
        if not bool(ok):
            raise RuntimeError(
                f"train: an ODE solve failed between steps {k} and {k + m} ({solver.name}); "
                "raise max_steps or lower the learning rate"
            )
        if not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(params)):
            raise FloatingPointError(
                f"training diverged (non-finite parameters) before step {k + m}; lower the learning rate (now {lr:.3g})"
            )
        k += m
        record(records, params, k)
        if records["train_loss"][-1] > DIVERGENCE_FACTOR * max(records["train_loss"][0], 1e-300):
            raise FloatingPointError(
                f"training diverged: the loss grew from {records['train_loss'][0]:.3g} to "
                f"{records['train_loss'][-1]:.3g} by step {k}; lower the learning rate "
                f"(now {lr:.3g})"
            )
        _save_checkpoint(checkpoint, config, params, opt_state, records, k)
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    n_rec = 1 + sum(1 for s in records["step"][1:] if s <= steps)
    out = {key: np.asarray(v[:n_rec]) for key, v in records.items()}
    if plain_sgd and lam0 is not None:
        out["bound"] = (1.0 - lr * lam0) ** out["step"] * out["train_loss"][0]
    return TrainResult(
        params=params,
        records=out,
        learning_rate=lr,
        lambda_0=lam0,
        config=provenance(config, time_s=time.perf_counter() - t0),
    )


def _save_checkpoint(path, config, params, opt_state, records, k):
    if path is None:
        return
    leaves = jax.tree_util.tree_leaves((params, opt_state))
    atomic_write_npz(
        path + ".npz",
        {f"leaf_{i}": np.asarray(a) for i, a in enumerate(leaves)},
        meta={**provenance(config), "step": k, "records": records, "n_leaves": len(leaves)},
    )


def _load_checkpoint(path, config, params, optimizer):
    if path is None or not os.path.exists(path + ".npz"):
        return None
    arrays, meta = read_npz(path + ".npz")
    if meta is None or not {"config", "step", "records", "n_leaves"} <= set(meta):
        raise ResumeError(f"{path}.npz is not an ntk_ode training checkpoint; move it away or delete it")
    check_resume(path + ".npz", meta["config"], config, extendable=("steps",))
    if int(meta["step"]) > config["steps"]:
        raise ResumeError(
            f"{path}.npz is at step {meta['step']}, beyond the {config['steps']} steps asked for; "
            "ask for at least that many steps, or use another checkpoint path"
        )
    template = (params, optimizer.init(params))
    leaves, tree = jax.tree_util.tree_flatten(template)
    if meta["n_leaves"] != len(leaves) or len(arrays) != len(leaves):
        raise ResumeError(f"{path}.npz holds {meta['n_leaves']} arrays, this run's state has {len(leaves)}")
    loaded = []
    for i, t in enumerate(leaves):
        a = arrays[f"leaf_{i}"]
        if a.shape != np.shape(t):
            raise ResumeError(f"{path}.npz: array {i} has shape {a.shape}, expected {np.shape(t)}")
        loaded.append(jnp.asarray(a, dtype=jnp.asarray(t).dtype))
    params, opt_state = jax.tree_util.tree_unflatten(tree, loaded)
    return params, opt_state, meta["records"], int(meta["step"])
