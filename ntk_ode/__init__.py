"""ntk_ode: NTK and NNGP theory of wide weight-tied Neural ODEs."""
from .activations import Activation, available_activations, get_activation, register_activation
from .model import NeuralODE, Solver

__version__ = "0.1.0"
