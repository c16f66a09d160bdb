"""Infinite-width predictions of training (kernel regression dynamics) and GP inference.

Gradient descent on ``L = 1/2 ||f(X) - y||^2`` with a fixed kernel ``K`` (the NTK at infinite
width) evolves the training residual as ``r_k = (I - eta K)^k r_0`` (discrete) or
``r(t) = exp(-eta K t) r_0`` (gradient flow), and test outputs as
``f_test = f_test_0 - K_te,tr K^-1 (I - (I - eta K)^k) r_0`` (neural-tangents' convention).
"""

from __future__ import annotations

import numpy as np

from .spectrum import _sym

__all__ = ["gradient_descent_mse", "gp_inference"]


def gradient_descent_mse(k_train_train, y_train, learning_rate: float, k_test_train=None, flow: bool = False):
    """Returns ``predict(k, fx_train_0=0, fx_test_0=0) -> (fx_train_k, fx_test_k)``.

    ``k`` is the number of steps (or the time, ``flow=True``). Uses the eigendecomposition of the
    train kernel, so any ``k`` costs the same.
    """
    K = _sym(k_train_train, "k_train_train")
    y = np.asarray(y_train, float)
    if y.shape != (K.shape[0],):
        raise ValueError(f"y_train must have shape ({K.shape[0]},), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y_train contains non-finite values")
    if not (learning_rate > 0 and np.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    ev, V = np.linalg.eigh(K)
    Kte = None if k_test_train is None else np.asarray(k_test_train, float)
    if Kte is not None and Kte.shape[1] != K.shape[0]:
        raise ValueError(f"k_test_train must have {K.shape[0]} columns, got shape {Kte.shape}")

    def predict(k, fx_train_0=0.0, fx_test_0=0.0):
        r0 = np.broadcast_to(np.asarray(fx_train_0, float), y.shape) - y
        decay = np.exp(-learning_rate * ev * k) if flow else (1.0 - learning_rate * ev) ** k
        z = V.T @ r0
        fx_train = y + V @ (decay * z)
        if Kte is None:
            return fx_train, None
        # K^-1 (I - decay): finite even where ev -> 0 (limit eta k)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(np.abs(ev) > 1e-300, (1.0 - decay) / ev, learning_rate * k)
        fx_test = np.asarray(fx_test_0, float) - Kte @ (V @ (g * z))
        return fx_train, fx_test

    return predict


def gp_inference(k_train_train, y_train, k_test_train, k_test_test=None, diag_reg: float = 0.0):
    """Posterior mean (and covariance when ``k_test_test`` is given) of GP regression."""
    K = _sym(k_train_train, "k_train_train")
    y = np.asarray(y_train, float)
    if y.shape != (K.shape[0],):
        raise ValueError(f"y_train must have shape ({K.shape[0]},), got {y.shape}")
    if diag_reg < 0:
        raise ValueError(f"diag_reg must be >= 0, got {diag_reg!r}")
    Kr = K + diag_reg * np.mean(np.diag(K)) * np.eye(K.shape[0])
    C = np.linalg.cholesky(Kr)
    Kte = np.asarray(k_test_train, float)
    alpha = np.linalg.solve(C.T, np.linalg.solve(C, y))
    mean = Kte @ alpha
    if k_test_test is None:
        return mean, None
    B = np.linalg.solve(C, Kte.T)
    return mean, np.asarray(k_test_test, float) - B.T @ B
