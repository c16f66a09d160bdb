"""predict.nystrom_solve: Nystrom regression by preconditioned CG, against the exact solve."""

import numpy as np
import pytest

import ntk_ode as no
from ntk_ode import predict
from ntk_ode.data import teacher

N, D = 1200, 5


@pytest.fixture(scope="module")
def problem():
    x, y = teacher(N, D, seed=0, noise=0.1)
    x = x * np.sqrt(D) * np.random.default_rng(1).uniform(0.8, 1.2, size=(N, 1))  # several norms
    block, error = predict.engine_blocks(no.NeuralODE("erf"), x, depth=4)
    return x, y, block, error


def test_engine_blocks_are_the_kernel_within_their_bound(problem):
    x, _, block, error = problem
    direct = np.asarray(no.kernel_fn(no.NeuralODE("erf"), 4)(x[:12], x[100:109], get="ntk"))
    assert np.max(np.abs(np.asarray(block(x[:12], x[100:109])) - direct)) <= error + 1e-12 * np.abs(direct).max()
    assert error <= 1e-7 * np.abs(direct).max()


def test_all_points_as_centres_equal_the_cholesky_solve(problem):
    x, y, block, _ = problem
    ridge = 1e-2
    r = predict.nystrom_solve(block, x, y, centres=N, ridge=ridge, cache_bytes=0)  # blocks recomputed
    K = np.asarray(block(x, x))
    exact = predict.kernel_solve(0.5 * (K + K.T), y, ridge)
    f, f_exact = K @ r.alpha, K @ exact.alpha
    assert np.max(np.abs(f - f_exact)) <= 1e-8 * np.max(np.abs(f_exact))
    assert r.exact_difference <= 1e-8 and r.residuals[-1] <= 1e-10
    # two target columns at once: each column as alone
    two = predict.nystrom_solve(block, x, np.stack([y, -2 * y], 1), centres=N, ridge=ridge)
    np.testing.assert_allclose(K @ two.alpha[:, 1], -2 * f, rtol=1e-7, atol=1e-9)


def test_more_centres_approach_the_full_solution_and_lower_the_test_error(problem):
    x, y, block, _ = problem
    tr, te, ridge = slice(0, 900), slice(900, N), 1.0
    full = predict.kernel_solve(np.asarray(block(x[tr], x[tr])), y[tr], ridge)
    f_full = np.asarray(block(x[te], x[tr])) @ full.alpha
    gaps, errors = [], []
    for M in (20, 80, 320):
        r = predict.nystrom_solve(block, x[tr], y[tr], centres=M, ridge=ridge, exact_max=0)
        f = np.asarray(block(x[te], x[tr][r.centres])) @ r.alpha
        gaps.append(np.max(np.abs(f - f_full)))
        errors.append(np.mean((f - y[te]) ** 2))
        assert r.iterations < 100 and r.residuals[-1] <= 1e-10  # the preconditioner works
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert errors[0] > errors[2] and errors[2] <= 1.01 * np.mean((f_full - y[te]) ** 2), errors
    lev = predict.nystrom_solve(block, x[tr], y[tr], centres=100, ridge=ridge, exact_max=0, sampling="leverage")
    assert lev.centres.size == 100 and np.unique(lev.centres).size == 100


def test_nystrom_arguments_are_named(problem):
    x, y, block, _ = problem
    with pytest.raises(ValueError, match="centres must be an integer"):
        predict.nystrom_solve(block, x[:10], y[:10], centres=11)
    with pytest.raises(ValueError, match="ridge"):
        predict.nystrom_solve(block, x[:10], y[:10], centres=5, ridge=0.0)
    with pytest.raises(ValueError, match="sampling"):
        predict.nystrom_solve(block, x[:10], y[:10], centres=5, sampling="best")
    with pytest.raises(ValueError, match="same N"):
        predict.nystrom_solve(block, x[:10], y[:9], centres=5)
    with pytest.raises(RuntimeError, match="CG reached"):
        predict.nystrom_solve(block, x[:200], y[:200], centres=50, ridge=1e-9, maxiter=2, tol=1e-14)


def test_blocks_in_memory_on_disk_or_recomputed_give_the_same_solution(problem, tmp_path, caplog):
    x, y, block, _ = problem
    M, size = 100, 256  # 5 row blocks of 256 x 100 float64 (204,800 bytes each)
    runs = {
        "memory": dict(cache_bytes=2**30),
        "split": dict(cache_bytes=int(2.5 * size * M * 8), cache_dir=str(tmp_path)),
        "disk": dict(cache_bytes=0, cache_dir=str(tmp_path)),
        "recomputed": dict(cache_bytes=0),
    }
    out = {k: predict.nystrom_solve(block, x, y, centres=M, ridge=1.0, block_size=size, **kw) for k, kw in runs.items()}
    assert out["memory"].storage == {"memory": 5, "disk": 0, "recomputed": 0}
    assert out["split"].storage == {"memory": 2, "disk": 3, "recomputed": 0}
    assert out["disk"].storage == {"memory": 0, "disk": 5, "recomputed": 0}
    assert out["recomputed"].storage == {"memory": 0, "disk": 0, "recomputed": 5}
    assert [r.message.count("recomputed at every CG iteration") for r in caplog.records] == [1]  # once, the last run
    for k in ("split", "disk", "recomputed"):
        np.testing.assert_allclose(out[k].alpha, out["memory"].alpha, rtol=1e-12, atol=0)
        assert out[k].iterations == out["memory"].iterations
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
    with pytest.raises(ValueError, match="cache_dir must be an existing folder"):
        predict.nystrom_solve(block, x[:10], y[:10], centres=5, cache_dir=str(tmp_path / "missing"))


_PROBLEM = """
import numpy as np, ntk_ode as no
from ntk_ode import predict
from ntk_ode.data import teacher
x, y = teacher(60, 3, seed=0, noise=0.1)
x = x * np.sqrt(3)
xt = teacher(10, 3, seed=1)[0] * np.sqrt(3)
m = no.NeuralODE("erf")
f = predict.gradient_descent_mse_ensemble(no.kernel_fn(m, 4), x, y, learning_rate=1.0, diag_reg=1e-2)
out = f(t=np.array([1.0, 100.0]), x_test=xt, get="ntk", compute_cov=True)
block, bound = predict.engine_blocks(m, x, depth=4)
r = predict.nystrom_solve(block, x, y, centres=30, ridge=1e-1)
got = dict(dtype=str(np.asarray(out.mean).dtype), mean=np.asarray(out.mean).tolist(), bound=bound,
           cov=np.asarray(out.covariance).tolist(), fit=np.asarray(block(x, x[r.centres]) @ r.alpha).tolist())
"""


def test_float32_ensemble_and_nystrom_agree_with_float64():
    import json
    import subprocess
    import sys

    code = _PROBLEM + "import json; print(json.dumps(got))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    f32 = json.loads(run.stdout.strip().splitlines()[-1])
    ns: dict = {}
    exec(_PROBLEM, ns)  # the same problem in this process's float64
    f64 = ns["got"]
    assert f32["dtype"] == "float32" and f64["dtype"] == "float64" and f32["bound"] < 1e-3
    for key in ("mean", "cov", "fit"):
        ref = np.asarray(f64[key])
        assert np.max(np.abs(np.asarray(f32[key]) - ref)) <= 1e-4 * np.max(np.abs(ref)), key  # float32: ~1e-6
