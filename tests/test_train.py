"""Gradient descent against Theorem 2 on the bundled digits; kernel predictions; bad input."""

import jax
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode.data import digits
from ntk_ode.predict import gradient_descent_mse
from ntk_ode.train import train

DEPTH = 2  # the weight-tied ResNet (discretize-then-optimize), sized for 2 cores


@pytest.fixture(scope="module")
def runs():
    x, y = digits((0, 1), n=128, seed=0)
    model = no.NeuralODE("softplus", T=1.0)
    K = np.asarray(no.kernel_fn(model, depth=DEPTH)(x, get="ntk"))
    lam0 = float(np.linalg.eigvalsh(K)[0])
    out = {}
    for width in (256, 2048):
        p = model.init(jax.random.PRNGKey(1), d=x.shape[1], width=width)
        out[width] = train(model, p, x, y, 300, depth=DEPTH, record_every=100, progress=False, lambda_0=lam0)
    out["K"] = K
    return model, x, y, out


def test_loss_below_theory_bound_and_geometric(runs):
    _, _, _, out = runs
    r = out[2048].records
    assert np.all(r["train_loss"] <= 1.2 * r["bound"])
    # geometric decay at least at the theory's rate between records: L_{k+100} <= (1 - eta lambda_0)^100 L_k
    run = out[2048]
    ratios = r["train_loss"][1:] / r["train_loss"][:-1]
    assert np.all(ratios <= (1.0 - run.learning_rate * run.lambda_0) ** 100)
    assert ratios[0] < 0.2  # the fast modes go first


def test_ntk_stays_near_initialization(runs):
    _, _, _, out = runs
    r = out[2048].records
    assert np.all(np.abs(r["lambda_min"] / r["lambda_min"][0] - 1) < 0.2)
    d256, d2048 = out[256].records["rel_dist_U"][-1], out[2048].records["rel_dist_U"][-1]
    assert 2.0 <= d256 / d2048 <= 4.5, d256 / d2048


def test_infinite_width_prediction_improves_with_width(runs):
    model, x, y, out = runs
    K = out["K"]
    errs = []
    for width in (256, 2048):
        r = out[width].records
        i = list(r["step"]).index(200)
        f0 = r["f_train"][0]
        pred = gradient_descent_mse(K, y, out[width].learning_rate, discrete=True, normalization="sum")(200, f0)
        errs.append(np.linalg.norm(r["f_train"][i] - pred) / np.linalg.norm(r["f_train"][i] - f0))
    assert errs[1] < errs[0], errs


def test_adjoint_and_backprop_training_agree_and_resume(tmp_path):
    x, y = digits((3, 8), n=12, seed=2)
    model = no.NeuralODE("tanh", T=1.0)
    p = model.init(jax.random.PRNGKey(0), d=x.shape[1], width=32)
    s = no.Solver(rtol=1e-10, atol=1e-10)
    ra = train(model, p, x, y, 20, method="adjoint", record_every=10, solver=s, progress=False, lambda_0=None)
    rb = train(model, p, x, y, 20, method="backprop", record_every=10, solver=s, progress=False, lambda_0=None)
    np.testing.assert_allclose(ra.records["train_loss"], rb.records["train_loss"], rtol=1e-7)
    ck = str(tmp_path / "ck")
    r1 = train(model, p, x, y, 20, depth=3, record_every=10, checkpoint=ck, progress=False, lambda_0=None)
    r2 = train(model, p, x, y, 20, depth=3, record_every=10, checkpoint=ck, progress=False, lambda_0=None)
    np.testing.assert_allclose(r2.records["train_loss"], r1.records["train_loss"])
    # more steps extend the finished run, bit for bit as an uninterrupted run
    r3 = train(model, p, x, y, 30, depth=3, record_every=10, checkpoint=ck, progress=False, lambda_0=None)
    r4 = train(model, p, x, y, 30, depth=3, record_every=10, progress=False, lambda_0=None)
    np.testing.assert_array_equal(r3.records["train_loss"], r4.records["train_loss"])
    np.testing.assert_array_equal(np.asarray(r3.params["W"]), np.asarray(r4.params["W"]))
    # another initialization, other data or another solver is refused, naming the field
    p2 = model.init(jax.random.PRNGKey(5), d=x.shape[1], width=32)
    with pytest.raises(ValueError, match="init_params"):
        train(model, p2, x, y, 30, depth=3, record_every=10, checkpoint=ck, progress=False, lambda_0=None)
    with pytest.raises(ValueError, match="data"):
        train(model, p, x, -y, 30, depth=3, record_every=10, checkpoint=ck, progress=False, lambda_0=None)
    with pytest.raises(ValueError, match="optimizer"):
        train(
            model,
            p,
            x,
            y,
            30,
            depth=3,
            record_every=10,
            checkpoint=ck,
            progress=False,
            lambda_0=None,
            optimizer=__import__("optax").adam(1e-3),
        )
    with pytest.raises(ValueError, match="beyond"):
        train(model, p, x, y, 10, depth=3, record_every=10, checkpoint=ck, progress=False, lambda_0=None)


def test_bad_input():
    x, y = digits((0, 1), n=8)
    model = no.NeuralODE()
    p = model.init(jax.random.PRNGKey(0), d=x.shape[1], width=16)
    with pytest.raises(ValueError, match="y must have shape"):
        train(model, p, x, y[:5], 1, depth=2, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        train(model, p, x, np.where(np.arange(8) == 0, np.nan, y), 1, depth=2, progress=False)
    with pytest.raises(ValueError, match="learning_rate"):
        train(model, p, x, y, 1, depth=2, learning_rate=-0.1, progress=False)
    with pytest.warns(RuntimeWarning, match="stability limit"):
        train(model, p, x, y, 0, depth=2, learning_rate=1e3, progress=False, lambda_0=None, track_ntk=False)
    with pytest.raises(ValueError, match="method"):
        train(model, p, x, y, 1, method="magic", progress=False)
