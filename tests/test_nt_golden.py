"""Our kernels against golden values from neural-tangents 0.6.5 (tools/nt_oracle/generate.py)."""

import os

import numpy as np
import pytest

import ntk_ode as no
from ntk_ode.activations import get_activation
from ntk_ode.untied import untied_kernel

G = np.load(os.path.join(os.path.dirname(__file__), "data", "nt_golden.npz"))
X = G["x"]
S1, S2, SW, T = (float(G[k]) for k in ("s1", "s2", "sw", "T"))


@pytest.mark.parametrize("name,tol", [("relu", 1e-8), ("erf", 1e-12), ("gelu", 1e-9), ("softplus", 1e-6)])
def test_one_hidden_layer_duals(name, tol):
    """NNGP = s2^2 E phi phi, NTK = s2^2 (E phi phi + c E phi' phi'); softplus: NT's degree-64 quadrature;
    relu: 1e-8, its order-0 arc-cosine kernel turns the rounding of rho = 1 on the diagonal into sqrt(eps)."""
    act = get_activation(name)
    sq = (X**2).sum(1) * S1**2 / X.shape[1]
    c = S1**2 * X @ X.T / X.shape[1]
    a, b = np.broadcast_arrays(sq[:, None], sq[None, :])
    nngp = S2**2 * np.asarray(act.dual(a, b, c))
    ntk = nngp + S2**2 * c * np.asarray(act.ddual(a, b, c))
    scale = np.abs(G[f"onehidden_{name}_ntk"]).max()
    assert np.abs(nngp - G[f"onehidden_{name}_nngp"]).max() <= tol * scale
    assert np.abs(ntk - G[f"onehidden_{name}_ntk"]).max() <= tol * scale


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_one_residual_block_equals_neural_tangents(name):
    model = no.NeuralODE(name, T=T, sigma_w=SW, sigma_u=S1, sigma_v=S2)
    k = no.kernel_fn(model, depth=1)(X)
    np.testing.assert_allclose(k.nngp, G[f"resnet1_{name}_nngp"], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(k.ntk, G[f"resnet1_{name}_ntk"], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_tying_changes_the_two_block_kernel(name):
    """Two blocks: the weight-tied kernel differs from neural-tangents' untied one (shared W correlates the blocks)."""
    model = no.NeuralODE(name, T=T, sigma_w=SW, sigma_u=S1, sigma_v=S2)
    k = np.asarray(no.kernel_fn(model, depth=2)(X, get="ntk"))
    rel = np.abs(k - G[f"resnet2_{name}_ntk"]).max() / np.abs(k).max()
    assert rel > 1e-4, rel


@pytest.mark.parametrize("name,tol", [("relu", 1e-8), ("erf", 1e-12), ("gelu", 1e-9)])
@pytest.mark.parametrize("step,tag", [("1/L", "L"), ("1/sqrt(L)", "sqrtL")])
def test_untied_resnet_kernels_equal_neural_tangents(name, tol, step, tag):
    """Depth 6, both residual steps; relu's tolerance as in the one-layer duals (rho = 1 rounding)."""
    model = no.NeuralODE(name, T=T, sigma_w=SW, sigma_u=S1, sigma_v=S2)
    k = untied_kernel(model, X, depth=6, step=step)
    for g in ("nngp", "ntk"):
        ref = G[f"untied6_{tag}_{name}_{g}"]
        assert np.abs(np.asarray(getattr(k, g)) - ref).max() <= tol * np.abs(ref).max(), g
    # and at depth 2 with the tied ResNet's step, the file's older untied two-block values
    if step == "1/L" and name in ("relu", "erf"):
        k2 = untied_kernel(model, X, depth=2, get="ntk")
        np.testing.assert_allclose(k2, G[f"resnet2_{name}_ntk"], rtol=tol, atol=tol * np.abs(k2).max())
