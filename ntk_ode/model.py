"""The Neural ODE of docs/theory.md section 1, its weight-tied Euler ResNet, and their dynamics.

    h_0   = sigma_u / sqrt(d) U x                 (input_scaling "sqrt_d"; "none": sigma_u U x)
    dh/dt = sigma_w / sqrt(n) W phi(h_t),  t in [0, T]   (one W for all t)
    f(x)  = sigma_v / sqrt(n) v . h_T  (head "linear")  or  sigma_v / sqrt(n) v . phi(h_T)  ("phi")

``depth=None`` everywhere means the continuous model, solved with diffrax; ``depth=L`` the
weight-tied ResNet ``h^l = h^{l-1} + dt sigma_w / sqrt(n) W phi(h^{l-1})``, ``dt = T / L``,
computed exactly. A batch of inputs is solved as one ODE with state ``(N, n)`` (one matrix
product per stage), compiled once per shape.

The dynamics live here, forward and adjoint (section 1 of docs/theory.md):
:meth:`NeuralODE.vector_field` (``dh/dt``), :meth:`NeuralODE.adjoint_field` (``dlambda/dt``),
:meth:`NeuralODE.head_features` and :meth:`NeuralODE.terminal_adjoint` (the head and its
derivative), :meth:`NeuralODE.solve` (one diffrax solve) and :meth:`NeuralODE.forward` (the
traceable ``(f(x), ok)``). Everything is pure JAX: ``apply`` and ``trajectory`` work under
``jax.jit`` and ``jax.vmap``, and their checks survive tracing (:func:`ntk_ode._checks.fail_if`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, TypeAlias, get_args

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ._checks import ArrayOrNumpy, check_depth, check_inputs, check_params, is_traced, positive_int
from .activations import Activation, get_activation
from .solvers import RK4, SOLVERS, Solver, SolverName, check_solve, check_times

__all__ = [
    "NeuralODE",
    "Solver",
    "RK4",
    "SOLVERS",
    "Params",
    "Head",
    "InputScaling",
    "SolverName",
    "check_params",
    "check_hyperparameter",
    "hyper_jit",
    "check_inputs",
    "check_depth",
    "check_times",
    "check_solve",
]

Head = Literal["linear", "phi"]
InputScaling = Literal["sqrt_d", "none"]
HEADS: tuple[str, ...] = get_args(Head)
INPUT_SCALINGS: tuple[str, ...] = get_args(InputScaling)


Params: TypeAlias = dict[str, Array]
"""The parameters: a plain dict pytree ``{"U": (n, d), "W": (n, n), "v": (n,)}``.

Built (and validated) by :meth:`NeuralODE.init` or :meth:`NeuralODE.params`; every public
function validates the shapes again (:func:`check_params`). A plain dict keeps optax, jax.tree_util
and neural-tangents-style code working unchanged.
"""


# ----------------------------------------------------------------------------- validation


def check_hyperparameter(name: str, val: Any) -> Any:
    """A hyperparameter (T or a sigma) as a float, or a scalar tracer passed through unchecked.

    Args:
        name: the argument's name (for the message).
        val: a real number, or a traced scalar (inside jit/vmap/grad).

    Returns:
        ``float(val)``, or the tracer.

    Raises:
        ValueError: not a real number, not finite, not > 0, or a traced value that is not a
            real scalar.
    """
    if is_traced(val):
        if jnp.shape(val) != () or not jnp.issubdtype(jnp.result_type(val), jnp.floating):
            raise ValueError(f"{name} must be a real scalar, got a traced {jnp.result_type(val)}{jnp.shape(val)}")
        return val
    if isinstance(val, bool) or not isinstance(val, (int, float, np.floating, np.integer)):
        if not (isinstance(val, (np.ndarray, jax.Array)) and np.shape(val) == () and np.dtype(val.dtype).kind in "iuf"):
            raise ValueError(f"{name} must be a real number, got {val!r}")
    val = float(val)
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"{name} must be finite and > 0, got {val!r}")
    return val


def hyper_jit(fn: Any) -> Any:
    """``eqx.filter_jit(fn)`` that traces the hyperparameters of every :class:`NeuralODE` argument.

    ``eqx.filter_jit`` holds Python floats static, so a new sigma_w would recompile. Here each
    model's float leaves become weakly typed scalar arrays first (dtype promotion is that of the
    Python float: a float32 computation stays float32), so one compilation serves every setting
    of an activation, head, input scaling and depth. Models nested in other pytrees (e.g. an
    untied ResNet) are found too.

    Args:
        fn: the function to compile.

    Returns:
        The compiled function.
    """
    jitted = eqx.filter_jit(fn)

    def lift(a: Any) -> Any:
        return jax.tree.map(jnp.asarray, a) if isinstance(a, NeuralODE) else a

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = jax.tree.map(lift, (args, kwargs), is_leaf=lambda a: isinstance(a, NeuralODE))
        return jitted(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- the model


class NeuralODE(eqx.Module):
    """Immutable configuration of the weight-tied Neural ODE (docs/theory.md section 1).

    Args:
        activation: a registered name (``ntk_ode.activations.available_activations()``) or an
            :class:`~ntk_ode.activations.Activation`.
        T: time horizon (> 0).
        sigma_w: scale of the shared hidden weight W (> 0).
        sigma_u: scale of the input weight U (> 0).
        sigma_v: scale of the readout weight v (> 0).
        head: ``"linear"`` (``v . h_T``) or ``"phi"`` (``v . phi(h_T)``).
        input_scaling: ``"sqrt_d"`` (divide by sqrt(d)) or ``"none"``.

    The hyperparameters ``T``, ``sigma_w``, ``sigma_u`` and ``sigma_v`` are the model's pytree
    leaves (Python floats, or tracers when the model is built inside a transformation); the
    activation, head and input scaling are static. So a new hyperparameter never recompiles
    ``apply``, ``grad`` or ``empirical_ntk`` (their jitted cores trace the leaves, see
    :func:`hyper_jit`), a model built from a traced value works under ``jax.vmap``::

        jax.vmap(lambda sw: NeuralODE("erf", sigma_w=sw).apply(params, x))(jnp.linspace(0.5, 2, 8))

    and a model of Python floats stays hashable (usable as a static argument or a cache key).
    """

    activation: Activation = eqx.field(static=True)
    T: float
    sigma_w: float
    sigma_u: float
    sigma_v: float
    head: Head = eqx.field(static=True)
    input_scaling: InputScaling = eqx.field(static=True)

    def __init__(
        self,
        activation: str | Activation = "softplus",
        T: float = 1.0,
        sigma_w: float = 1.0,
        sigma_u: float = 1.0,
        sigma_v: float = 1.0,
        head: Head = "linear",
        input_scaling: InputScaling = "sqrt_d",
    ):
        self.activation = get_activation(activation)
        self.T, self.sigma_w, self.sigma_u, self.sigma_v = (
            check_hyperparameter(name, val)
            for name, val in (("T", T), ("sigma_w", sigma_w), ("sigma_u", sigma_u), ("sigma_v", sigma_v))
        )
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"input_scaling must be one of {INPUT_SCALINGS}, got {input_scaling!r}")
        self.head = head
        self.input_scaling = input_scaling

    def config(self) -> dict:
        """The model's fields as a JSON-able dict (the activation by name), for provenance.

        Returns:
            ``{"activation", "T", "sigma_w", "sigma_u", "sigma_v", "head", "input_scaling"}``.
        """
        return {
            "activation": self.activation.name,
            "T": self.T,
            "sigma_w": self.sigma_w,
            "sigma_u": self.sigma_u,
            "sigma_v": self.sigma_v,
            "head": self.head,
            "input_scaling": self.input_scaling,
        }

    # -- parameters ---------------------------------------------------------------------------

    def init(self, key: jax.Array, d: int, width: int, dtype: Any = None) -> Params:
        """Draw parameters with i.i.d. N(0, 1) entries.

        Args:
            key: a PRNG key.
            d: input dimension.
            width: hidden width n.
            dtype: float dtype (default: JAX's default float).

        Returns:
            ``{"U": (n, d), "W": (n, n), "v": (n,)}``.

        Raises:
            ValueError: d or width not a positive integer.
        """
        d, width = positive_int("d", d), positive_int("width", width)
        dtype = dtype or jnp.result_type(float)
        ku, kw, kv = jax.random.split(key, 3)
        n, d = int(width), int(d)
        return {
            "U": jax.random.normal(ku, (n, d), dtype),
            "W": jax.random.normal(kw, (n, n), dtype),
            "v": jax.random.normal(kv, (n,), dtype),
        }

    @staticmethod
    def params(U: ArrayLike, W: ArrayLike, v: ArrayLike) -> Params:
        """Build validated parameters from arrays.

        Args:
            U: input weights (n, d).
            W: the shared hidden weights (n, n).
            v: readout weights (n,).

        Returns:
            The parameter dict.

        Raises:
            ValueError: shapes that do not fit together, or non-finite entries.
        """
        p = {"U": jnp.asarray(U), "W": jnp.asarray(W), "v": jnp.asarray(v)}
        check_params(p)
        return p

    # -- the maps and dynamics of section 1 ---------------------------------------------------

    def input_scale(self, d: int) -> float:
        """The factor of ``h_0 = c U x``: ``sigma_u / sqrt(d)`` (``sqrt_d``) or ``sigma_u``.

        Args:
            d: input dimension.

        Returns:
            The scale c.
        """
        return self.sigma_u / math.sqrt(d) if self.input_scaling == "sqrt_d" else self.sigma_u

    def embed(self, params: Params, x: Float[Array, "N d"]) -> Float[Array, "N n"]:
        """``h_0 = input_scale(d) U x`` for a batch.

        Args:
            params: the parameters.
            x: inputs (N, d).

        Returns:
            ``h_0`` (N, n).
        """
        return self.input_scale(x.shape[-1]) * x @ params["U"].T

    def vector_field(self, W: Float[Array, "n n"], h: Float[Array, "*B n"]) -> Float[Array, "*B n"]:
        """The forward dynamics ``dh/dt = sigma_w / sqrt(n) W phi(h)`` for a batch of states.

        Args:
            W: the shared weights (n, n).
            h: states (..., n).

        Returns:
            ``dh/dt`` (..., n).
        """
        return (self.sigma_w / math.sqrt(W.shape[0])) * self.activation.fn(h) @ W.T

    def adjoint_field(
        self, W: Float[Array, "n n"], h: Float[Array, "*B n"], lam: Float[Array, "*B n"]
    ) -> Float[Array, "*B n"]:
        """The adjoint dynamics ``dlambda/dt = -sigma_w / sqrt(n) diag(phi'(h)) W^T lambda``.

        Args:
            W: the shared weights (n, n).
            h: forward states (..., n).
            lam: adjoints ``df/dh`` (..., n).

        Returns:
            ``dlambda/dt`` (..., n).
        """
        return -(self.sigma_w / math.sqrt(W.shape[0])) * self.activation.dfn(h) * (lam @ W)

    def head_features(self, hT: Float[Array, "*B n"]) -> Float[Array, "*B n"]:
        """What the readout weights multiply: ``h_T`` (head linear) or ``phi(h_T)`` (head phi).

        Args:
            hT: final states (..., n).

        Returns:
            The features (..., n).
        """
        return self.activation.fn(hT) if self.head == "phi" else hT

    def readout(self, v: Float[Array, " n"], hT: Float[Array, "N n"]) -> Float[Array, " N"]:
        """The head ``f = sigma_v / sqrt(n) v . head_features(h_T)``.

        Args:
            v: readout weights (n,).
            hT: final states (N, n).

        Returns:
            Outputs (N,).
        """
        return (self.sigma_v / math.sqrt(v.shape[0])) * self.head_features(hT) @ v

    def terminal_adjoint(self, v: Float[Array, " n"], hT: Float[Array, "N n"]) -> Float[Array, "N n"]:
        """``lambda_T = df/dh_T``: ``sigma_v v / sqrt(n)``, times ``phi'(h_T)`` for head phi.

        Args:
            v: readout weights (n,).
            hT: final states (N, n).

        Returns:
            ``lambda_T`` (N, n).
        """
        lam = (self.sigma_v / math.sqrt(v.shape[0])) * jnp.broadcast_to(v, hT.shape)
        return lam * self.activation.dfn(hT) if self.head == "phi" else lam

    # -- solves ---------------------------------------------------------------------------------

    def resnet_states(self, params: Params, x: Float[Array, "N d"], depth: int) -> Float[Array, "L1 N n"]:
        """All states ``h^0..h^L`` of the weight-tied ResNet ``h^l = h^{l-1} + dt F(h^{l-1})``.

        Args:
            params: the parameters.
            x: inputs (N, d).
            depth: L.

        Returns:
            States (L + 1, N, n).
        """
        dt = self.T / depth
        W = params["W"]

        def step(h, _):
            h = h + dt * self.vector_field(W, h)
            return h, h

        h0 = self.embed(params, x)
        _, hs = jax.lax.scan(step, h0, None, length=depth)
        return jnp.concatenate([h0[None], hs], axis=0)

    def solve(
        self,
        W: Float[Array, "n n"],
        h0: Float[Array, "N n"],
        solver: Solver,
        saveat: diffrax.SaveAt,
        t0: float,
        t1: float,
        *,
        terms: diffrax.AbstractTerm | None = None,
        y0: Any = None,
    ) -> diffrax.Solution:
        """One diffrax solve of the forward field (or of ``terms``) from ``t0`` to ``t1``.

        Never throws: the caller checks ``sol.result`` (see :func:`check_solve`).

        Args:
            W: the shared weights, passed to the field as ``args``.
            h0: the initial state (its dtype sets the precision of the times).
            solver: method, steps or tolerances.
            saveat: what to save.
            t0: start time (may exceed ``t1``: backward solves).
            t1: end time.
            terms: another field ``(t, y, W) -> dy/dt`` (e.g. the augmented adjoint system).
            y0: its initial state (default ``h0``).

        Returns:
            The diffrax Solution.
        """
        term = terms or diffrax.ODETerm(lambda t, h, W: self.vector_field(W, h))
        dtype = h0.dtype  # times in the state's precision keep float32 solves in float32
        t0a, t1a = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
        return diffrax.diffeqsolve(
            term,
            solver.diffrax_solver(),
            t0a,
            t1a,
            solver.dt0(t0a, t1a),
            h0 if y0 is None else y0,
            args=W,
            saveat=saveat,
            stepsize_controller=solver.controller(dtype),
            max_steps=solver.max_steps if solver.steps is None else max(solver.max_steps, solver.steps),
            throw=False,
            adjoint=diffrax.DirectAdjoint() if solver.forward_mode else diffrax.RecursiveCheckpointAdjoint(),
        )

    def final_state(
        self, params: Params, x: Float[Array, "N d"], depth: int | None, solver: Solver
    ) -> tuple[Float[Array, "N n"], Bool[Array, ""]]:
        """``h_T`` (depth=None) or ``h^L``, with the solve's success flag (traceable).

        Args:
            params: the parameters.
            x: inputs (N, d).
            depth: None or L.
            solver: the ODE solver (unused for depth=L).

        Returns:
            ``(h_T (N, n), ok)``.
        """
        if depth is not None:
            dt = self.T / depth
            W = params["W"]
            hT = jax.lax.fori_loop(0, depth, lambda _, h: h + dt * self.vector_field(W, h), self.embed(params, x))
            return hT, jnp.asarray(True)
        sol = self.solve(params["W"], self.embed(params, x), solver, diffrax.SaveAt(t1=True), 0.0, self.T)
        return sol.ys[-1], sol.result == diffrax.RESULTS.successful  # type: ignore[index,return-value]

    def forward(
        self, params: Params, x: Float[Array, "N d"], depth: int | None, solver: Solver
    ) -> tuple[Float[Array, " N"], Bool[Array, ""]]:
        """``(f(x), ok)``: the unchecked, traceable forward map (used inside other computations).

        Args:
            params: the parameters.
            x: inputs (N, d).
            depth: None or L.
            solver: the ODE solver.

        Returns:
            Outputs (N,) and the solve's success flag.
        """
        hT, ok = self.final_state(params, x, depth, solver)
        return self.readout(params["v"], hT), ok

    def apply(
        self,
        params: Params,
        x: Float[ArrayOrNumpy, "N d"],
        depth: int | None = None,
        solver: Solver | SolverName | None = None,
        *,
        steps: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        max_steps: int | None = None,
    ) -> Float[Array, " N"]:
        """The network output ``f(x)``: (N, d) -> (N,).

        Pure JAX: works under ``jax.jit`` and ``jax.vmap`` (over parameters or inputs).

        Args:
            params: the parameters.
            x: inputs (N, d).
            depth: None (the Neural ODE) or L (the weight-tied Euler ResNet ``f^L``, exactly).
            solver: a :class:`Solver`, a solver name, or None (Dopri8, rtol = atol = 1e-10 in
                float64, 1e-6 in float32).
            steps: override the solver's number of fixed steps.
            rtol: override the solver's relative tolerance.
            atol: override the solver's absolute tolerance.
            max_steps: override the solver's step budget.

        Returns:
            Outputs (N,).

        Raises:
            ValueError: bad shapes or options.
            RuntimeError: the solve failed (e.g. exhausted ``max_steps``).
            FloatingPointError: the output is not finite (blow-up).
        """
        n, d = check_params(params)
        x = check_inputs(x, d)
        depth = check_depth(depth)
        solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
        y, ok = _forward_jit(self, params, x, depth, solver)
        return check_solve(y, ok, solver, "apply")

    def trajectory(
        self,
        params: Params,
        x: Float[ArrayOrNumpy, "N d"],
        ts: ArrayLike | None = None,
        depth: int | None = None,
        solver: Solver | SolverName | None = None,
        *,
        steps: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        max_steps: int | None = None,
    ) -> Float[Array, "N M n"]:
        """Forward states on a time grid.

        Args:
            params: the parameters.
            x: inputs (N, d).
            ts: save times (ascending, in [0, T]); must be None for depth=L.
            depth: None (the ODE) or L (all ResNet states ``h^0..h^L``, M = L + 1).
            solver: as in :meth:`apply`.
            steps: override the solver's number of fixed steps.
            rtol: override the solver's relative tolerance.
            atol: override the solver's absolute tolerance.
            max_steps: override the solver's step budget.

        Returns:
            States (N, M, n).

        Raises:
            ValueError: bad shapes, times or options.
            RuntimeError: the solve failed.
            FloatingPointError: a state is not finite.
        """
        n, d = check_params(params)
        x = check_inputs(x, d)
        depth = check_depth(depth)
        solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
        if depth is not None:
            if ts is not None:
                raise ValueError("ts must be None when depth is given (the grid is l = 0..L)")
            hs, ok = _resnet_states_jit(self, params, x, depth), jnp.asarray(True)
        else:
            hs, ok = _trajectory_jit(self, params, x, check_times(ts, self.T), solver)
        return jnp.swapaxes(check_solve(hs, ok, solver, "trajectory"), 0, 1)


@hyper_jit
def _forward_jit(model, params, x, depth, solver):
    return model.forward(params, x, depth, solver)


@hyper_jit
def _resnet_states_jit(model, params, x, depth):
    return model.resnet_states(params, x, depth)


@hyper_jit
def _trajectory_jit(model, params, x, ts, solver):
    sol = model.solve(params["W"], model.embed(params, x), solver, diffrax.SaveAt(ts=ts), 0.0, model.T)
    return sol.ys, sol.result == diffrax.RESULTS.successful
