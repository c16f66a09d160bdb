"""Infinite-width kernels: Monte Carlo, Richardson, identities, fast paths, bad input."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode import activations as A
from ntk_ode.empirical import empirical_ntk
from ntk_ode.limits import kernel_fn, richardson

X = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 4)))


@pytest.mark.parametrize("act", ["softplus", "tanh"])
@pytest.mark.parametrize("head", ["linear", "phi"])
def test_resnet_kernel_matches_monte_carlo_of_finite_networks(act, head):
    """K^L_inf vs the mean of jacrev NTKs of width-2048 weight-tied ResNets over 8 seeds."""
    model = no.NeuralODE(act, T=1.0, sigma_w=1.3, sigma_u=0.8, sigma_v=1.2, head=head)
    L = 4
    f = jax.jit(lambda p: empirical_ntk(model, p, X, depth=L, method="jacobian"))
    samples = np.stack([np.asarray(f(model.init(jax.random.PRNGKey(100 + s), 4, 2048))) for s in range(8)])
    mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))
    K = np.asarray(kernel_fn(model, depth=L)(X, get="ntk"))
    assert np.all(np.abs(mean - K) <= 4 * se), (mean - K) / se


def test_ode_kernel_matches_richardson_of_resnet_kernels_and_rate():
    model = no.NeuralODE("softplus", T=1.0, sigma_w=1.2, sigma_u=0.9, sigma_v=1.1)
    K = np.asarray(kernel_fn(model)(X, get="ntk"))
    Ls = [8, 16, 32, 64, 128, 256]
    KL = [np.asarray(kernel_fn(model, depth=L)(X, get="ntk")) for L in Ls]
    R = richardson(KL, Ls)
    assert np.max(np.abs(R - K)) / np.max(np.abs(K)) <= 1e-7
    errs = [np.linalg.norm(k - K) for k in KL]
    slope = np.polyfit(np.log(Ls), np.log(errs), 1)[0]
    assert -1.2 <= slope <= -0.8


def _erf_duals(a, b, c):
    """E erf(u) erf(v) and E erf'(u) erf'(v) for (u, v) ~ N(0, [[a, c], [c, b]])."""
    q = (1 + 2 * a) * (1 + 2 * b)
    return 2 / np.pi * np.arcsin(2 * c / np.sqrt(q)), 4 / np.pi / np.sqrt(q - 4 * c**2)


def _resnet_kernel_by_loops(x1, x2, L, sw, sv, T):
    """NNGP and NTK of the weight-tied erf ResNet of depth L, linear head, by the scalar
    recursions of docs/theory.md section 3 written as plain loops (shells m = max(l, k))."""
    dt, c = T / L, sw**2
    xs = (x1, x2)
    Sig = {(i, j): np.full((L + 1, L + 1), xs[i] @ xs[j] / x1.size) for i in range(2) for j in range(i, 2)}
    for m in range(1, L + 1):
        for key, S in Sig.items():
            va, vb = Sig[(key[0], key[0])], Sig[(key[1], key[1])]
            for i, k in [(m, j) for j in range(1, m)] + [(j, m) for j in range(1, m)] + [(m, m)]:
                phi = _erf_duals(va[i - 1, i - 1], vb[k - 1, k - 1], S[i - 1, k - 1])[0]
                S[i, k] = S[i - 1, k] + S[i, k - 1] - S[i - 1, k - 1] + dt**2 * c * phi
    S, va, vb = Sig[(0, 1)], np.diag(Sig[(0, 0)]), np.diag(Sig[(1, 1)])
    Phi, dPhi = _erf_duals(va[:, None], vb[None, :], S)
    K = np.full((L + 1, L + 1), sv**2)
    for i in range(L, 0, -1):
        for k in range(L, 0, -1):
            K[i - 1, k - 1] = K[i, k - 1] + K[i - 1, k] - K[i, k] + dt**2 * c * dPhi[i - 1, k - 1] * K[i, k]
    nngp = sv**2 * S[L, L]
    return nngp, nngp + dt**2 * c * np.sum(K[1:, 1:] * Phi[:-1, :-1]) + S[0, 0] * K[0, 0]


@pytest.mark.parametrize("L", [1, 2, 7])
def test_resnet_substitution_solver_equals_the_recursion_written_as_loops(L):
    # the ResNet grids are solved by forward/backward substitution (kernels.core); here the
    # recursions of docs/theory.md section 3 as scalar loops, for a pair of unequal norms
    x = np.array([[0.3, -1.2, 0.8, 2.0], [1.1, 0.4, -0.5, 0.9]])
    model = no.NeuralODE("erf", T=1.7, sigma_w=1.3, sigma_v=0.8)
    k = kernel_fn(model, depth=L)(x)
    nngp, ntk = _resnet_kernel_by_loops(x[0], x[1], L, 1.3, 0.8, 1.7)
    np.testing.assert_allclose([k.nngp[0, 1], k.ntk[0, 1]], [nngp, ntk], rtol=1e-13)


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_resnet_substitution_and_picard_agree(monkeypatch, name):
    # Mehler duals (tanh) use Picard on shallow ResNet grids and substitution on deep ones; closed
    # forms (relu) always substitution. Both solvers, forced in turn, give the same kernels.
    from ntk_ode.kernels import core, grids

    x = np.array([[0.3, -1.2, 0.8, 2.0], [1.1, 0.4, -0.5, 0.9], [0.3, -1.2, 0.8, 2.0]])
    model = no.NeuralODE(name, T=1.4, sigma_w=1.5, head="phi")
    out = []
    for force in (True, False):
        monkeypatch.setattr(core, "substitution", lambda duals, grid, force=force: grid.shift and force)
        grids.resnet_grid.cache_clear()  # new grid objects: the solvers are traced again, patched
        k = kernel_fn(model, depth=9)(x)
        out.append(np.stack([np.asarray(k.nngp), np.asarray(k.ntk)]))
    grids.resnet_grid.cache_clear()
    np.testing.assert_allclose(out[0], out[1], rtol=1e-13, atol=1e-13)


def test_symmetry_rectangular_and_psd():
    model = no.NeuralODE("tanh", sigma_w=1.5, head="phi")
    x2 = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (2, 4)))
    kfn = kernel_fn(model)
    k12 = kfn(X, x2)
    k21 = kfn(x2, X)
    for a, b in zip(k12[:2], k21[:2]):
        np.testing.assert_allclose(a, np.asarray(b).T, rtol=1e-12, atol=1e-12)
    kall = kfn(np.concatenate([X, x2]))
    np.testing.assert_allclose(kall.ntk[:3, 3:], k12.ntk, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kall.ntk, kall.ntk.T, atol=0)
    assert np.linalg.eigvalsh(np.asarray(kall.ntk)).min() > -1e-10


def test_small_T_limit():
    model = no.NeuralODE("softplus", T=1e-9, sigma_u=0.7, sigma_v=1.3)
    k = kernel_fn(model, nodes=4)(X)
    s00 = 0.7**2 * X @ X.T / X.shape[1]
    np.testing.assert_allclose(k.nngp, 1.3**2 * s00, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(k.ntk, 2 * 1.3**2 * s00, rtol=1e-7, atol=1e-12)


def test_time_rescaling_invariance():
    k1 = kernel_fn(no.NeuralODE("gelu", T=1.0, sigma_w=1.0))(X)
    k2 = kernel_fn(no.NeuralODE("gelu", T=0.4, sigma_w=2.5))(X)
    for a, b in zip(k1[:2], k2[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-9)


def test_blocks_sum_and_vblock_is_nngp():
    k = kernel_fn(no.NeuralODE("erf", sigma_w=1.3))(X, get=("nngp", "ntk", "ntk_U", "ntk_W", "ntk_v"))
    np.testing.assert_allclose(k.ntk, k.ntk_U + k.ntk_W + k.ntk_v, rtol=1e-13)
    np.testing.assert_allclose(k.ntk_v, k.nngp, rtol=1e-13)


def test_relu_closed_form_vs_quadrature(relu_without_closed_forms):
    # relu registered without closed forms: the Hermite series of a kink cannot be certified, so
    # the solver uses quadrature duals, and matches the closed forms (depth=L: exact recursion).
    relu_q = relu_without_closed_forms
    kc = np.asarray(kernel_fn(no.NeuralODE("relu"), depth=6)(X, get="ntk"))
    kq, e = kernel_fn(no.NeuralODE(relu_q), depth=6, terms=64)(X, get="ntk", with_error=True)
    err = np.max(np.abs(np.asarray(kq) - kc))
    assert err / np.max(np.abs(kc)) < 1e-11 and e >= err


def test_equal_norm_fast_path_matches_general_path():
    x = np.array(jax.random.normal(jax.random.PRNGKey(3), (16, 5)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    model = no.NeuralODE("softplus", sigma_w=1.1)
    kz, err = kernel_fn(model, equal_norm=True)(x, get="ntk", with_error=True)
    kg = kernel_fn(model, equal_norm=False)(x, get="ntk")
    assert np.max(np.abs(kz - kg)) / np.max(np.abs(kg)) <= 1e-8
    assert err <= 1e-8 * np.max(np.abs(kg))
    with pytest.raises(ValueError, match="same norm"):
        kernel_fn(model, equal_norm=True)(X)


def test_nngp_alone_skips_the_ntk_and_agrees_within_the_estimates():
    # get="nngp" solves no NTK equation (its grid is chosen for the NNGP alone): general inputs
    # and equal norms (the zonal path), against the joint solve
    model = no.NeuralODE("erf", sigma_w=1.3)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (12, 5)))
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    for inputs in (x, xs):
        k, e = kernel_fn(model)(inputs, get="nngp", with_error=True)
        kj, ej = kernel_fn(model)(inputs, get=("nngp", "ntk"), with_error=True)
        diff = np.max(np.abs(np.asarray(k) - np.asarray(kj.nngp)))
        assert 0 < e <= 1e-8 * np.max(np.abs(k)) and diff <= e + ej.nngp


def test_error_estimate_and_blocks_small():
    model = no.NeuralODE("softplus")
    k, e = kernel_fn(model)(X, with_error=True)
    assert e.ntk <= 1e-8 * np.max(np.abs(k.ntk))
    k1 = kernel_fn(model, block_size=1)(X, get="ntk")
    np.testing.assert_allclose(k1, k.ntk, rtol=1e-14)


def test_sharded_equals_unsharded():
    code = textwrap.dedent(
        """
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        import ntk_ode as no
        from ntk_ode.limits import kernel_fn
        assert len(jax.local_devices()) == 4
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (5, 3)))
        m = no.NeuralODE("tanh", sigma_w=1.2)
        a = np.asarray(kernel_fn(m, nodes=12, block_size=3, shard=True)(x, get="ntk"))
        b = np.asarray(kernel_fn(m, nodes=12, block_size=3, shard=False)(x, get="ntk"))
        assert np.max(np.abs(a - b)) <= 1e-14 * np.max(np.abs(b)), np.max(np.abs(a - b))
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_bad_input():
    kfn = kernel_fn(no.NeuralODE())
    with pytest.raises(ValueError, match="non-finite"):
        kfn(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="d=3"):
        kfn(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="get"):
        kfn(X, get="bogus")
    with pytest.raises(ValueError, match="shape"):
        kfn(np.ones(3))
    bad = A.register_activation("not_jax_test", lambda z: np.tanh(np.asarray(z)) + "x", dfn=lambda z: z, overwrite=True)
    with pytest.raises(ValueError, match="quadrature"):
        kernel_fn(no.NeuralODE(bad))(X)
    with pytest.raises(ValueError, match="depth"):
        kernel_fn(no.NeuralODE(), depth=0)


def test_blow_up_is_named():
    model = no.NeuralODE("quadratic", T=20.0, sigma_w=2.0)
    with pytest.raises((FloatingPointError, RuntimeError), match="blew up|did not converge"):
        kernel_fn(model, nodes=16)(X * 3)


def test_float32_kernel(caplog, monkeypatch):
    # float32 inputs keep the whole solve in float32 (default rtol 1e-5 there), and say so once
    from ntk_ode.kernels import api

    monkeypatch.setattr(api, "_FLOAT32_NOTED", [])
    with caplog.at_level("WARNING", logger="ntk_ode"):
        k32 = kernel_fn(no.NeuralODE("softplus"))(jnp.asarray(X, jnp.float32), get="ntk")
        kernel_fn(no.NeuralODE("erf"), depth=2)(jnp.asarray(X, jnp.float32), get="ntk")
    notes = [r.getMessage() for r in caplog.records if "64-bit floats are off" in r.getMessage()]
    assert len(notes) == 1 and "rtol 1e-5" in notes[0] and "jax_enable_x64" in notes[0]
    assert k32.dtype == jnp.float32
    k64 = kernel_fn(no.NeuralODE("softplus"))(X, get="ntk")
    assert np.max(np.abs(np.asarray(k32) - np.asarray(k64))) / np.max(np.abs(k64)) < 1e-5


def test_get_returns_exactly_the_named_fields_and_unpacks():
    kfn = kernel_fn(no.NeuralODE("erf"), depth=3)
    nngp, ntk = kfn(X, None, ("nngp", "ntk"))  # neural-tangents style unpacking
    np.testing.assert_allclose(np.asarray(ntk), np.asarray(kfn(X, get="ntk")), rtol=0, atol=0)
    k = kfn(X, get=("ntk_W", "nngp"))
    assert k._fields == ("ntk_W", "nngp") and len(k) == 2
    np.testing.assert_allclose(np.asarray(k.nngp), np.asarray(nngp), rtol=0, atol=0)
    k, e = kfn(X, get=("ntk",), with_error=True)
    assert k._fields == e._fields == ("ntk",) and e.ntk >= 0
    assert kfn(X, get=("nngp", "ntk", "ntk_U", "ntk_W", "ntk_v")).__class__ is no.Kernel
    with pytest.raises(ValueError, match="distinct"):
        kfn(X, get=("ntk", "ntk"))
