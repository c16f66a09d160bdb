"""The (norm, norm, angle) interpolant: exactness on polynomials, certification against a known
kernel, and kernel_fn's table path against its direct solves (kinked and smooth, duplicates,
scaled duplicates, antipodal inputs)."""

import warnings

import jax
import numpy as np
import pytest

from ntk_ode import NeuralODE, kernel_fn
from ntk_ode.limits import norm_angle_kernel
from ntk_ode.tables import NormAngleKernel, build_norm_angle, chebyshev_coefficients, lobatto, pair_inputs


def _closed_form(x1, x2):
    """A known smooth 'kernel' of norms and angle, and a kinked one (|sin theta| ~ relu's)."""
    n1, n2 = np.linalg.norm(x1, axis=1), np.linalg.norm(x2, axis=1)
    c = np.clip((x1 @ x2.T) / np.outer(n1, n2), -1, 1)
    smooth = np.outer(n1, n2) * np.exp(c) + np.log1p(np.add.outer(n1**2, n2**2))
    theta = np.arccos(c)
    kinked = np.outer(n1, n2) * (np.sin(theta) + (np.pi - theta) * c) / np.pi
    return np.stack([smooth, kinked]), np.zeros(2)


def test_polynomials_are_reproduced_exactly():
    rng = np.random.default_rng(0)
    coef = rng.standard_normal((4, 4, 6))
    qa, qu = 5, 8  # more nodes than degrees: the interpolant is the polynomial
    a, u = lobatto(qa), lobatto(qu)
    vals = np.polynomial.chebyshev.chebval3d(*np.meshgrid(a, a, u, indexing="ij"), coef)
    got = chebyshev_coefficients(vals[None], (1, 2, 3))[0]
    want = np.zeros((qa + 1, qa + 1, qu + 1))
    want[:4, :4, :6] = coef
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_gram_equals_pointwise_evaluation_and_jits():
    rng = np.random.default_rng(1)
    k = NormAngleKernel(jax.numpy.asarray(rng.standard_normal((3, 3, 9))), 0.5, 2.0, 0.0)
    x1 = rng.standard_normal((5, 4))
    x2 = rng.standard_normal((7, 4))
    x1 *= rng.uniform(0.5, 2.0, (5, 1)) / np.linalg.norm(x1, axis=1, keepdims=True)
    x2 *= rng.uniform(0.5, 2.0, (7, 1)) / np.linalg.norm(x2, axis=1, keepdims=True)
    n1, n2 = np.linalg.norm(x1, axis=1), np.linalg.norm(x2, axis=1)
    cos = (x1 @ x2.T) / np.outer(n1, n2)
    pointwise = np.asarray(k(n1[:, None], n2[None, :], cos))
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda a, b: k.gram(a, b))(x1, x2)), pointwise, rtol=1e-12, atol=1e-12
    )


def test_build_certifies_a_known_kernel():
    d, rmin, rmax = 4, 0.3, 3.0
    kernels = build_norm_angle(_closed_form, d, rmin, rmax, rtol=1e-9)
    rng = np.random.default_rng(2)
    x1 = rng.standard_normal((60, d))
    x1 *= rng.uniform(rmin, rmax, (60, 1)) / np.linalg.norm(x1, axis=1, keepdims=True)
    x2 = np.concatenate([x1[:10], -x1[10:20], x1[20:30] * (1 + 1e-9), x1[30:]])  # equal, antipodal, near
    x2 = x2 * np.clip(np.linalg.norm(x2, axis=1, keepdims=True), rmin, rmax) / np.linalg.norm(x2, axis=1, keepdims=True)
    truth, _ = _closed_form(x1, x2)
    for k, t in zip(kernels, truth):
        err = np.max(np.abs(np.asarray(k.gram(x1, x2)) - t))
        assert err <= k.error, (err, k.error)
        assert k.error <= 1e-8 * np.max(np.abs(t))  # and the bound is not vacuous


def test_one_norm_has_a_single_norm_node_and_bad_arguments_are_named():
    kernels = build_norm_angle(_closed_form, 3, 2.0, 2.0, rtol=1e-9)
    assert kernels[0].coefficients.shape[:2] == (1, 1)
    with pytest.raises(ValueError, match="rmin"):
        build_norm_angle(_closed_form, 3, 0.0, 1.0, rtol=1e-9)
    with pytest.raises(ValueError, match="d must"):
        build_norm_angle(_closed_form, 1, 1.0, 2.0, rtol=1e-9)
    with pytest.raises(RuntimeError, match="max_pairs"):
        build_norm_angle(_closed_form, 3, 0.1, 3.0, rtol=1e-14, max_pairs=5000)


def test_pair_inputs_have_the_norms_and_angles():
    x1, x2 = pair_inputs(5, [1.0, 2.0], [3.0], [0.0, np.pi / 3, np.pi])
    np.testing.assert_allclose(np.linalg.norm(x1, axis=1), [1, 2])
    np.testing.assert_allclose(np.linalg.norm(x2, axis=1), [3, 3, 3])
    np.testing.assert_allclose(x2 @ x1[0] / 3, [1, 0.5, -1], atol=1e-15)


def _inputs(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, (n, 1))
    x[1] = x[0] * (1 + 1e-9)  # near-duplicate
    x[2] = -0.7 * x[0]  # antipodal, another norm
    x[3] = 2.0 * x[0]  # parallel, another norm
    x[4] = x[0]  # duplicate
    return x


@pytest.mark.parametrize("act,depth", [("erf", None), ("relu", 4)])
def test_table_path_matches_direct_solves_within_its_bound(act, depth):
    x = _inputs(24, 5, 3)
    model = NeuralODE(act)
    kd, ed = kernel_fn(model, depth, table=False)(x, with_error=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the table meets rtol
        kt, et = kernel_fn(model, depth, table=True)(x, with_error=True)
    for name in ("nngp", "ntk"):
        a, b = np.asarray(getattr(kd, name)), np.asarray(getattr(kt, name))
        diff = np.max(np.abs(a - b))
        assert diff <= getattr(et, name) + getattr(ed, name), (name, diff, getattr(et, name))
        assert diff <= 1e-7 * np.max(np.abs(a))
        np.testing.assert_allclose(b, b.T, rtol=0, atol=getattr(et, name))


def test_norm_angle_kernel_single_name_and_bad_d():
    k = norm_angle_kernel(NeuralODE("erf"), 3, 1.0, 1.5, depth=2, get="ntk", rtol=1e-8)
    assert isinstance(k, NormAngleKernel) and k.error > 0
    with pytest.raises(ValueError, match="d must"):
        norm_angle_kernel(NeuralODE("erf"), 1, 1.0, 1.5)
    with pytest.raises(ValueError, match="table"):
        kernel_fn(NeuralODE("erf"), table="yes")
