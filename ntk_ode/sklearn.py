"""The infinite-width kernels as scikit-learn kernels (needs the ``sklearn`` extra).

:class:`NeuralODEKernel` is a ``sklearn.gaussian_process.kernels.Kernel``: it works in
``GaussianProcessRegressor`` and ``GaussianProcessClassifier`` (with their optimizers: the
gradient in the log-hyperparameters comes from the differentiable kernels of
:func:`ntk_ode.hyper.traceable_kernel_fn`, docs/theory.md section 11), in ``SVC(kernel=k)`` and
in ``KernelRidge(kernel=k)``, and it composes with scikit-learn's other kernels
(``ConstantKernel() * k + WhiteKernel()``).

Its hyperparameters are the identifiable ones: the weight-tied kernels depend on ``sigma_w`` and
``T`` only through their product (docs/theory.md section 3), so it has ``sigma_w_T``, and
``sigma_u``, ``sigma_v``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from .hyper import traceable_kernel_fn
from .model import Head, NeuralODE

__all__ = ["NeuralODEKernel"]


class NeuralODEKernel(Kernel):
    """The NNGP or NTK of the weight-tied Neural ODE (or its ResNet) as a scikit-learn kernel.

    Values come from the fixed-grid differentiable kernels (``nodes`` Chebyshev intervals,
    ``terms`` Mehler terms); check them against :func:`ntk_ode.kernel_fn` at the fitted point
    when it matters (their error estimate: ``traceable_kernel_fn(..., with_error=True)``).

    Args:
        activation: the activation's name.
        kind: ``"nngp"`` or ``"ntk"``.
        depth: None for the Neural ODE, L for the weight-tied ResNet of depth L.
        sigma_w_T: the product sigma_w T.
        sigma_u: the input weights' scale.
        sigma_v: the readout's scale.
        sigma_w_T_bounds: bounds for the optimizers, or ``"fixed"``.
        sigma_u_bounds: likewise.
        sigma_v_bounds: likewise.
        head: the model's head (``"linear"`` or ``"phi"``).
        nodes: Chebyshev intervals of the ODE's time grid.
        terms: Mehler terms of the duals.
    """

    def __init__(
        self,
        activation: str = "erf",
        kind: str = "ntk",
        depth: int | None = None,
        sigma_w_T: float = 1.0,
        sigma_u: float = 1.0,
        sigma_v: float = 1.0,
        sigma_w_T_bounds: Any = (1e-2, 10.0),
        sigma_u_bounds: Any = (1e-2, 1e2),
        sigma_v_bounds: Any = (1e-2, 1e2),
        head: Head = "linear",
        nodes: int = 16,
        terms: int = 64,
    ):
        self.activation = activation
        self.kind = kind
        self.depth = depth
        self.sigma_w_T = sigma_w_T
        self.sigma_u = sigma_u
        self.sigma_v = sigma_v
        self.sigma_w_T_bounds = sigma_w_T_bounds
        self.sigma_u_bounds = sigma_u_bounds
        self.sigma_v_bounds = sigma_v_bounds
        self.head = head
        self.nodes = nodes
        self.terms = terms

    @property
    def hyperparameter_sigma_w_T(self) -> Hyperparameter:
        """sigma_w T (log-scaled by the optimizers)."""
        return Hyperparameter("sigma_w_T", "numeric", self.sigma_w_T_bounds)

    @property
    def hyperparameter_sigma_u(self) -> Hyperparameter:
        """sigma_u."""
        return Hyperparameter("sigma_u", "numeric", self.sigma_u_bounds)

    @property
    def hyperparameter_sigma_v(self) -> Hyperparameter:
        """sigma_v."""
        return Hyperparameter("sigma_v", "numeric", self.sigma_v_bounds)

    def _kernel_fn(self):
        if self.kind not in ("nngp", "ntk"):
            raise ValueError(f"kind must be 'nngp' or 'ntk', got {self.kind!r}")
        model = NeuralODE(self.activation, head=self.head)
        return traceable_kernel_fn(model, self.depth, nodes=self.nodes, terms=self.terms)

    def _values(self, log_free: Any) -> dict:
        """The hyperparameters by name, the free ones ``exp(log_free)`` in scikit-learn's order.

        (scikit-learn orders ``theta`` by the hyperparameters' names, fixed ones left out.)
        """
        values, k = {}, 0
        for hp in self.hyperparameters:
            if hp.fixed:
                values[hp.name] = jnp.asarray(float(getattr(self, hp.name)))
            else:
                values[hp.name] = jnp.exp(log_free[k])
                k += 1
        return values

    def __call__(self, X: Any, Y: Any = None, eval_gradient: bool = False) -> Any:
        """The kernel matrix ``k(X, Y)`` and, with ``eval_gradient``, its gradient.

        Args:
            X: inputs (N, d).
            Y: inputs (M, d), or None for ``k(X, X)``.
            eval_gradient: also return the gradient in the log of the free hyperparameters
                (only for ``Y=None``, as scikit-learn asks).

        Returns:
            ``K`` (N, M), or ``(K, dK)`` with ``dK`` of shape (N, N, number of free hyperparameters).

        Raises:
            ValueError: ``eval_gradient`` with ``Y``, or bad inputs.
        """
        if eval_gradient and Y is not None:
            raise ValueError("eval_gradient is only supported when Y is None")
        kfn = self._kernel_fn()
        X = np.asarray(X, np.float64)
        Y = None if Y is None else np.asarray(Y, np.float64)

        def k_of(log_free):
            v = self._values(log_free)
            hyper = {"sigma_w": jnp.ones_like(v["sigma_w_T"]), "sigma_u": v["sigma_u"], "sigma_v": v["sigma_v"]}
            return kfn({**hyper, "T": v["sigma_w_T"]}, X, Y, get=self.kind)

        theta = jnp.asarray(self.theta)
        K = np.array(k_of(theta))  # a writable copy (scikit-learn adds to the diagonal in place)
        if not eval_gradient:
            return K
        if theta.size == 0:
            return K, np.empty(K.shape + (0,))
        return K, np.array(jax.jacfwd(k_of)(theta))

    def diag(self, X: Any) -> np.ndarray:
        """The diagonal ``k(x, x)`` for each row of ``X`` (one 1 x 1 kernel per row).

        Args:
            X: inputs (N, d).

        Returns:
            (N,).
        """
        X = np.asarray(X, np.float64)
        return np.array([float(self(X[i : i + 1])[0, 0]) for i in range(X.shape[0])])

    def is_stationary(self) -> bool:
        """False: the kernels depend on the inputs' norms, not only on their difference.

        Returns:
            False.
        """
        return False

    @property
    def requires_vector_input(self) -> bool:
        """True: inputs are feature vectors.

        Returns:
            True.
        """
        return True
