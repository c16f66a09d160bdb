"""ntk_ode: NTK and NNGP theory of wide weight-tied Neural ODEs.

Public API (the mathematics is in docs/theory.md)::

    model  = NeuralODE(activation="softplus", T=1.0, ...)
    params = model.init(key, d, width)
    y      = model.apply(params, x, depth=None)       # depth=L: the weight-tied Euler ResNet
    g      = grad(model, params, x, method="adjoint")  # per-example gradients
    K      = empirical_ntk(model, params, x1, x2)      # finite-width NTK
    k      = kernel_fn(model)(x1, x2, get=("nngp", "ntk"))   # infinite width
    fn     = predict.gradient_descent_mse(k_train_train, y_train)   # neural-tangents conventions
"""

from . import activations, gaussian, harmonics, hyper, predict, untied
from .activations import Activation, available_activations, get_activation, register_activation
from .empirical import empirical_nngp, empirical_ntk, empirical_ntk_fn, monte_carlo_kernels
from .gradients import adjoint_trajectory, grad
from .kernels import Kernel, kernel_fn, richardson
from .model import NeuralODE, Params, Solver
from .sweep import width_sweep

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "Kernel",
    "NeuralODE",
    "Params",
    "Solver",
    "activations",
    "adjoint_trajectory",
    "available_activations",
    "empirical_nngp",
    "empirical_ntk",
    "empirical_ntk_fn",
    "gaussian",
    "get_activation",
    "grad",
    "harmonics",
    "hyper",
    "kernel_fn",
    "monte_carlo_kernels",
    "predict",
    "register_activation",
    "richardson",
    "untied",
    "width_sweep",
    "__version__",
]
