"""Faults: killed jobs resume to the uninterrupted result, corrupt or foreign files are refused
with a message naming them, two writers on one output are refused, bad inputs get named errors."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import ntk_ode as no
from ntk_ode.results import LockedError, ResumeError, exclusive
from ntk_ode.train import train

SWEEP = textwrap.dedent(
    """
    import sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import ntk_ode as no
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3, 4)))
    r = no.width_sweep(no.NeuralODE("tanh"), x, [8, 16, 32, 64], 2, depth=4, out=sys.argv[1],
                       progress=False)
    np.save(sys.argv[1] + ".dist.npy", r["dist"])
    """
)

TRAIN = textwrap.dedent(
    """
    import sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import ntk_ode as no
    from ntk_ode.train import train
    from ntk_ode.data import digits
    x, y = digits((0, 1), n=8)
    m = no.NeuralODE("tanh")
    p = m.init(jax.random.PRNGKey(0), d=64, width=16)
    r = train(m, p, x, y, 400, depth=2, record_every=2, progress=False, lambda_0=None, track_ntk=False,
              checkpoint=sys.argv[1])
    np.save(sys.argv[1] + ".loss.npy", r.records["train_loss"])
    np.save(sys.argv[1] + ".W.npy", np.asarray(r.params["W"]))
    """
)


def _kill_when(proc, ready, timeout=300):
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the job finished before it could be killed: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("the job never reached the kill point")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _run(code, arg):
    r = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


def _run_in_process(code, arg):
    """The uninterrupted reference run, in this process (same code, no start-up cost)."""
    saved, sys.argv = sys.argv, ["-c", arg]
    try:
        exec(code, {"__name__": "clean"})
    finally:
        sys.argv = saved


def _kill_resume_and_compare(tmp_path, code, ready, outputs):
    out, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    proc = subprocess.Popen([sys.executable, "-c", code, out], stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: ready(out))
    _run(code, out)  # resume
    _run_in_process(code, clean)
    for suffix in outputs:
        np.testing.assert_array_equal(np.load(out + suffix), np.load(clean + suffix))


def _sweep_widths_done(path):
    try:
        return len(json.load(open(path + ".json"))["state"].get("done", {})) >= 2
    except (OSError, ValueError, KeyError):
        return False


def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    _kill_resume_and_compare(tmp_path, SWEEP, _sweep_widths_done, [".dist.npy"])


def _ckpt_step(path):
    from ntk_ode.results import read_npz

    try:
        return read_npz(path + ".npz")[1]["step"] >= 4
    except (ResumeError, TypeError, KeyError):
        return False


def test_killed_training_resumes_bit_identically(tmp_path):
    _kill_resume_and_compare(tmp_path, TRAIN, _ckpt_step, [".loss.npy", ".W.npy"])


def _tiny_training(tmp_path, **kw):
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (6, 3)))
    y = np.sign(x[:, 0])
    m = no.NeuralODE("tanh")
    p = m.init(jax.random.PRNGKey(1), d=3, width=8)
    return lambda **more: train(
        m, p, x, y, 4, depth=2, record_every=2, progress=False, lambda_0=None, track_ntk=False, **{**kw, **more}
    )


def test_truncated_or_foreign_files_are_refused_by_name(tmp_path):
    ck = str(tmp_path / "ck")
    run = _tiny_training(tmp_path, checkpoint=ck)
    run()
    from ntk_ode.results import read_npz

    with np.load(ck + ".npz") as z:  # a checkpoint re-saved with one array edited, the rest intact
        entries = {k: z[k] for k in z.files}
    arrays, meta = read_npz(ck + ".npz")
    edited = next(k for k in entries if not k.startswith("__") and entries[k].dtype.kind == "f" and entries[k].size)
    entries[edited] = entries[edited] + 1.0
    np.savez(ck + ".npz", **entries)
    with pytest.raises(ResumeError, match="changed after ntk_ode wrote it"):
        run()
    assert read_npz(ck + ".npz", verify=False)[1] == meta  # still readable for inspection
    raw = open(ck + ".npz", "rb").read()
    open(ck + ".npz", "wb").write(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ResumeError, match="ck.npz"):
        run()
    np.savez(ck + ".npz", a=np.zeros(3))  # an npz that is not a checkpoint
    with pytest.raises(ResumeError, match="not an ntk_ode training checkpoint"):
        run()
    out = str(tmp_path / "sweep")
    open(out + ".json", "w").write('{"something": "else"}')
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 3)))
    with pytest.raises(ResumeError, match="sweep.json"):
        no.width_sweep(no.NeuralODE("tanh"), x, [4], 2, depth=2, out=out, progress=False)
    open(out + ".json", "w").write("\x00\x01 not json")
    with pytest.raises(ResumeError, match="not a readable results file"):
        no.width_sweep(no.NeuralODE("tanh"), x, [4], 2, depth=2, out=out, progress=False)


def test_two_writers_on_one_output_are_refused(tmp_path):
    out = str(tmp_path / "sweep")
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 3)))
    with exclusive(out + ".json"):  # another run holds the output
        with pytest.raises(LockedError, match="another process"):
            no.width_sweep(no.NeuralODE("tanh"), x, [4], 2, depth=2, out=out, progress=False)
    ck = str(tmp_path / "ck")
    with exclusive(ck + ".npz"):
        with pytest.raises(LockedError):
            _tiny_training(tmp_path, checkpoint=ck)()
    # released: both run now, and leave no lock files behind
    no.width_sweep(no.NeuralODE("tanh"), x, [4], 2, depth=2, out=out, progress=False)
    _tiny_training(tmp_path, checkpoint=ck)()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".lock")], os.listdir(tmp_path)
    # a lock file left by a killed run (empty, unlocked) is reused, then removed
    open(out + ".json.lock", "w").close()
    with exclusive(out + ".json"):
        assert os.path.exists(out + ".json.lock")
    assert not os.path.exists(out + ".json.lock")


def test_sweep_refuses_another_solver_and_a_training_another_optimizer(tmp_path):
    out = str(tmp_path / "sweep")
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 3)))
    no.width_sweep(no.NeuralODE("tanh"), x, [4], 2, solver=no.Solver("rk4", steps=1), out=out, progress=False)
    with pytest.raises(ResumeError, match="solver"):
        no.width_sweep(no.NeuralODE("tanh"), x, [4], 2, solver=no.Solver("rk4", steps=256), out=out, progress=False)
    import optax

    ck = str(tmp_path / "ck")
    _tiny_training(tmp_path, checkpoint=ck, optimizer=optax.sgd(1e-3))()
    with pytest.raises(ResumeError, match="optimizer"):
        _tiny_training(tmp_path, checkpoint=ck, optimizer=optax.adam(1e-3))()


def test_float32_finiteness_is_checked_after_the_cast():
    code = textwrap.dedent(
        """
        import jax, numpy as np, ntk_ode as no
        m = no.NeuralODE(); p = m.init(jax.random.PRNGKey(0), 2, 4)
        try:
            m.apply(p, np.array([[1e39, 0.0]]))
        except ValueError as e:
            assert "non-finite" in str(e) and "float32" in str(e), e
            print("OK")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "OK", r.stderr[-2000:]


def _probe_rows():
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text()
    rows = re.findall(r"^\| `(.+?)` \| (\w+): (.+?) \|$", text, re.M)
    assert len(rows) >= 20
    return rows


@pytest.mark.parametrize("probe,exc,fragment", _probe_rows(), ids=[r[0][:40] for r in _probe_rows()])
def test_the_probe_table_in_the_docs_holds(probe, exc, fragment, tmp_path, monkeypatch):
    import ntk_ode
    import ntk_ode.data
    import ntk_ode.distributed
    import ntk_ode.results  # the probes name these submodules
    import ntk_ode.spectrum
    import ntk_ode.sphere
    import ntk_ode.store
    import ntk_ode.tiles
    import ntk_ode.untied

    monkeypatch.chdir(tmp_path)
    m = no.NeuralODE()
    scope = {"no": no, "np": np, "jax": jax, "ntk_ode": ntk_ode, "m": m, "p": m.init(jax.random.PRNGKey(0), 2, 4)}
    with pytest.raises(Exception) as info:
        eval(probe, scope)
    assert type(info.value).__name__ == exc, (type(info.value).__name__, str(info.value))
    assert fragment in str(info.value), str(info.value)


def test_a_hand_edited_results_file_is_refused_by_name_and_still_readable(tmp_path):
    from ntk_ode.results import CHECKSUM_KEY, ResumeError, atomic_write_json, read_json

    path = tmp_path / "sweep.json"
    atomic_write_json(path, {"config": {"seed": 0}, "state": {"mean": 0.361, "nan": float("nan")}})
    assert read_json(path, required=("config", "state"))["state"]["mean"] == 0.361
    assert CHECKSUM_KEY not in read_json(path)
    path.write_text(path.read_text().replace("0.361", "0.271"))
    with pytest.raises(ResumeError, match="sweep.json was changed after ntk_ode wrote it"):
        read_json(path, required=("config", "state"))
    assert read_json(path, verify=False)["state"]["mean"] == 0.271  # inspection stays possible
