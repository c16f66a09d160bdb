"""Kernels on disk: tiled against dense, resumed against uninterrupted, mismatched resumes
refused, bad folders named, and 2 processes under jax.distributed against 1."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ntk_ode import NeuralODE, kernel_fn
from ntk_ode.distributed import split
from ntk_ode.results import ResumeError
from ntk_ode.tiles import kernel_to_disk, read_manifest, tile_starts

MODEL = NeuralODE("erf", T=1.0)


def _sphere(n, d, seed, radius=None):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * (np.sqrt(d) if radius is None else radius)


def test_zonal_tiles_match_the_dense_kernel(tmp_path):
    x = _sphere(23, 4, 0)
    x[5] = -x[3]  # antipodal
    x[7] = x[2]  # duplicate
    store = kernel_to_disk(MODEL, x, folder=tmp_path / "k", depth=3, tile=8, get=("nngp", "ntk"))
    assert store.method == "zonal" and store.shape == (23, 23)
    dense, err = kernel_fn(MODEL, 3)(x, with_error=True)
    for name in ("nngp", "ntk"):
        disk = store.load(name)
        assert isinstance(disk, np.memmap)
        diff = np.max(np.abs(disk - np.asarray(getattr(dense, name))))
        assert diff <= store.error[name] + getattr(err, name)
        np.testing.assert_array_equal(disk, disk.T)  # the lower tiles are the upper ones transposed


def test_direct_tiles_of_two_sets_equal_the_dense_call_and_float32(tmp_path):
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    store = kernel_to_disk(MODEL, x1, x2, folder=tmp_path / "k", depth=2, tile=3, method="direct", get="ntk")
    dense = np.asarray(kernel_fn(MODEL, 2)(x1, x2, get="ntk"))
    np.testing.assert_allclose(store.load("ntk"), dense, rtol=1e-12, atol=1e-12)
    s32 = kernel_to_disk(
        MODEL, x1, x2, folder=tmp_path / "k32", depth=2, tile=3, method="direct", get="ntk", dtype="float32"
    )
    assert s32.load("ntk").dtype == np.float32
    np.testing.assert_allclose(s32.load("ntk"), dense, rtol=1e-6)


def test_resume_skips_finished_tiles_and_refuses_another_config(tmp_path, monkeypatch):
    from ntk_ode import tiles

    x = _sphere(12, 3, 2)
    ref = kernel_to_disk(MODEL, x, folder=tmp_path / "ref", depth=2, tile=4, method="direct")
    calls = []
    real = tiles.tile_kernel

    def interrupted(*args, **kw):
        method, f = real(*args, **kw)

        def g(a, b):
            if len(calls) == 3:
                raise KeyboardInterrupt  # killed after three tiles
            calls.append(1)
            return f(a, b)

        return method, g

    monkeypatch.setattr(tiles, "tile_kernel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kernel_to_disk(MODEL, x, folder=tmp_path / "k", depth=2, tile=4, method="direct")
    assert len(os.listdir(tmp_path / "k" / "tiles")) == 3
    calls.clear()
    monkeypatch.setattr(tiles, "tile_kernel", real)
    counted = []

    def counting(*args, **kw):
        method, f = real(*args, **kw)
        return method, lambda a, b: (counted.append(1), f(a, b))[1]

    monkeypatch.setattr(tiles, "tile_kernel", counting)
    store = kernel_to_disk(MODEL, x, folder=tmp_path / "k", depth=2, tile=4, method="direct")
    assert len(counted) == len(tile_starts(12, 12, 4, True)) - 3
    for name in ("nngp", "ntk"):
        np.testing.assert_array_equal(store.load(name), ref.load(name))
    with pytest.raises(ResumeError, match="depth"):
        kernel_to_disk(MODEL, x, folder=tmp_path / "k", depth=3, tile=4, method="direct")
    with pytest.raises(ResumeError, match="inputs"):
        kernel_to_disk(MODEL, x[::-1], folder=tmp_path / "k", depth=2, tile=4, method="direct")
    assert read_manifest(tmp_path / "k")["config"]["tile"] == 4


def test_bad_arguments_and_folders(tmp_path):
    x = _sphere(4, 3, 3)
    with pytest.raises(ValueError, match="get"):
        kernel_to_disk(MODEL, x, folder=tmp_path / "a", get="nngps")
    with pytest.raises(ValueError, match="tile"):
        kernel_to_disk(MODEL, x, folder=tmp_path / "a", tile=0)
    with pytest.raises(ValueError, match="dtype"):
        kernel_to_disk(MODEL, x, folder=tmp_path / "a", dtype="float16")
    with pytest.raises(ValueError, match="zonal"):
        kernel_to_disk(MODEL, x * np.arange(1, 5)[:, None], folder=tmp_path / "a", method="zonal")
    with pytest.raises(ValueError, match="x2 has"):
        kernel_to_disk(MODEL, x, x[:, :2], folder=tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    with pytest.raises(ResumeError, match="not empty"):
        kernel_to_disk(MODEL, x, folder=tmp_path / "full")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(OSError):
            kernel_to_disk(MODEL, x, folder=ro / "k")


def test_split_deals_items_round_robin():
    items = list(range(7))
    parts = [split(items, i, 3) for i in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="index"):
        split(items, 3, 3)


def test_two_processes_write_the_same_kernel_as_one(tmp_path):
    x = _sphere(10, 3, 4) * np.linspace(0.8, 1.2, 10)[:, None]
    np.save(tmp_path / "x.npy", x)
    common = [
        "kernel",
        str(tmp_path / "x.npy"),
        "--activation",
        "erf",
        "--depth",
        "2",
        "--tile",
        "4",
        "--method",
        "direct",
    ]
    env = dict(os.environ, NTK_ODE_CACHE_DIR="")
    one = subprocess.run(
        [sys.executable, "-m", "ntk_ode.cli", *common, "--store", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "ntk_ode.cli", *common, "--store", str(tmp_path / "two"), "--processes", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    for name in ("nngp", "ntk"):
        a, b = np.load(tmp_path / "one" / f"{name}.npy"), np.load(tmp_path / "two" / f"{name}.npy")
        assert np.max(np.abs(a - b)) <= 1e-13 * np.max(np.abs(a))
    markers = os.listdir(tmp_path / "two" / "tiles")
    assert len(markers) == len(tile_starts(10, 10, 4, True))
    assert all(json.loads((tmp_path / "two" / "tiles" / m).read_text())["method"] == "direct" for m in markers)


def test_kernel_solve_cg_on_a_memory_mapped_kernel_matches_cholesky(tmp_path):
    import warnings

    from ntk_ode.predict import kernel_matvec, kernel_solve

    x = _sphere(60, 3, 5)
    store = kernel_to_disk(NeuralODE("relu"), x, folder=tmp_path / "k", depth=4, tile=16, get="ntk")
    k = store.load("ntk")
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    chol = kernel_solve(k, y, 1e-3, method="cholesky")
    cg = kernel_solve(k, y, 1e-3, method="cg", tol=1e-12, block=7)
    assert cg.method == "cg" and cg.iterations > 0 and np.all(cg.residual <= 1e-12)
    np.testing.assert_allclose(cg.alpha, chol.alpha, rtol=1e-8, atol=1e-8 * np.abs(chol.alpha).max())
    # the residual is the true one (recomputed here independently)
    true = np.linalg.norm(np.asarray(k) @ cg.alpha + 1e-3 * cg.alpha - y, axis=0) / np.linalg.norm(y, axis=0)
    np.testing.assert_allclose(cg.residual, true, rtol=1e-3, atol=1e-15)
    np.testing.assert_allclose(kernel_matvec(k, y, block=11), np.asarray(k) @ y, rtol=1e-13)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        short = kernel_solve(k, y, 1e-3, method="cg", maxiter=2)
    assert short.iterations == 2 and any("CG stopped" in str(m.message) for m in w)
    with pytest.raises(ValueError, match="ridge"):
        kernel_solve(k, y, -1.0)
    with pytest.raises(ValueError, match="y must"):
        kernel_solve(k, y[:5])


def test_full_disk_fails_before_work_and_a_failed_write_keeps_finished_tiles(tmp_path, monkeypatch):
    import errno

    from ntk_ode import tiles

    x = _sphere(8, 3, 6)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(tiles.os, "posix_fallocate", no_space)
        with pytest.raises(OSError, match="cannot reserve .* nothing was computed"):
            kernel_to_disk(MODEL, x, folder=tmp_path / "k", depth=2, tile=4, method="direct")
    assert list((tmp_path / "k").iterdir()) == []  # so the same command runs again once there is space
    store = kernel_to_disk(MODEL, x, folder=tmp_path / "k", depth=2, tile=4, method="direct")
    assert store.shape == (8, 8)

    writes = []
    real = os.pwrite

    def failing(fd, data, pos):
        writes.append(1)
        if len(writes) > 8:  # the first tile (4 rows, two kernels) goes through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, pos)

    with monkeypatch.context() as m:
        m.setattr(tiles.os, "pwrite", failing)
        with pytest.raises(OSError, match=r"tile \(0, 4\).*finished tiles are kept"):
            kernel_to_disk(MODEL, x, folder=tmp_path / "k2", depth=2, tile=4, method="direct")
    assert os.listdir(tmp_path / "k2" / "tiles") == ["0_0.json"]
    store = kernel_to_disk(MODEL, x, folder=tmp_path / "k2", depth=2, tile=4, method="direct")  # resumes
    np.testing.assert_allclose(store.load("ntk"), np.asarray(kernel_fn(MODEL, 2)(x, get="ntk")), rtol=1e-12)


def test_two_processes_deal_the_seeds_of_a_width_sweep(tmp_path):
    common = ["sweep", "--widths", "8", "16", "--seeds", "3", "--n", "4", "--depth", "2", "--activation", "erf"]
    env = dict(os.environ, NTK_ODE_CACHE_DIR="")
    for name, extra in (("one", []), ("two", ["--processes", "2"])):
        run = subprocess.run(
            [sys.executable, "-m", "ntk_ode.cli", *common, "--out", str(tmp_path / name), *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())["state"]["done"]
    two = json.loads((tmp_path / "two.json").read_text())["state"]["done"]
    for w in ("8", "16"):
        np.testing.assert_allclose(two[w]["dist"], one[w]["dist"], rtol=1e-13)
        np.testing.assert_allclose(two[w]["mean_ntk"], one[w]["mean_ntk"], rtol=1e-13)


def test_a_missing_coordinator_or_process_stops_in_seconds_with_a_message(tmp_path):
    from ntk_ode.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, ENV_TIMEOUT, free_port

    np.save(tmp_path / "x.npy", _sphere(4, 3, 0))
    base = {ENV_COORDINATOR: f"127.0.0.1:{free_port()}", ENV_NUM_PROCESSES: "2", ENV_TIMEOUT: "3"}
    cmd = [sys.executable, "-m", "ntk_ode.cli", "kernel", str(tmp_path / "x.npy"), "--depth", "2"]

    def run(pid):
        env = dict(os.environ, NTK_ODE_CACHE_DIR="", **base, **{ENV_PROCESS_ID: pid})
        return subprocess.run(
            cmd + ["--store", str(tmp_path / pid)], capture_output=True, text=True, env=env, timeout=120
        )

    # process 1 and no coordinator: a clear error after the timeout, never a hang
    r = run("1")
    assert r.returncode == 2 and "no coordinator at 127.0.0.1" in r.stderr, r.stderr[-2000:]
    # process 0 (the coordinator) whose partner never joins: JAX stops it after the timeout,
    # which our message announces
    r = run("0")
    assert r.returncode != 0
    assert "joining the coordinator" in r.stderr and "Deadline Exceeded" in r.stderr, r.stderr[-2000:]


def _fake_interpreter(tmp_path, body):
    """An executable standing in for python: ``body`` is shell, run with the launcher's environment."""
    path = tmp_path / "fake_python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_killed_process_stops_the_others_at_once_and_is_named(tmp_path, capsys):
    import time

    from ntk_ode.distributed import launch_local

    # process 1 dies by SIGKILL after 0.5 s; process 0 would run for a minute
    fake = _fake_interpreter(
        tmp_path,
        'if [ "$NTK_ODE_PROCESS_ID" = 1 ]; then sleep 0.5; kill -9 $$; fi\n'
        f"echo started > {tmp_path}/zero_started; sleep 60; echo finished > {tmp_path}/zero_finished",
    )
    t0 = time.monotonic()
    status = launch_local(["kernel"], 2, python=fake)
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert status == 2 and "process 1 of 2 was killed by signal SIGKILL" in err, err
    assert elapsed < 30 and not (tmp_path / "zero_finished").exists()  # process 0 was stopped
    # a process that exits with an error: its status comes back, and it is the one named
    fake = _fake_interpreter(tmp_path, 'if [ "$NTK_ODE_PROCESS_ID" = 0 ]; then exit 3; fi; sleep 60')
    assert launch_local(["kernel"], 2, python=fake) == 3
    assert "process 0 of 2 exited with status 3" in capsys.readouterr().err
    fake = _fake_interpreter(tmp_path, "exit 0")
    assert launch_local(["kernel"], 3, python=fake) == 0


def test_coordinator_variables_are_named_when_malformed(monkeypatch):
    from ntk_ode import distributed as dist

    monkeypatch.setenv(dist.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(dist.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(dist.ENV_PROCESS_ID, "1")
    monkeypatch.setenv(dist.ENV_TIMEOUT, "1.5")
    with pytest.raises(ValueError, match="NTK_ODE_COORDINATOR_TIMEOUT must be a whole number of seconds, got '1.5'"):
        dist.initialize_from_env()
    monkeypatch.setenv(dist.ENV_TIMEOUT, "99999999999")
    with pytest.raises(
        ValueError, match=r"coordinator timeout, NTK_ODE_COORDINATOR_TIMEOUT\) must be .* \[1, 604800\]"
    ):
        dist.initialize_from_env()
    monkeypatch.setenv(dist.ENV_TIMEOUT, "5")
    monkeypatch.setenv(dist.ENV_PROCESS_ID, "one")
    with pytest.raises(ValueError, match="NTK_ODE_PROCESS_ID must be an integer, got 'one'"):
        dist.initialize_from_env()


def _children(pid):
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def test_a_killed_process_of_a_real_two_process_run_stops_the_run_and_is_named(tmp_path):
    # ntk-ode kernel --processes 2 on a job that takes a while; one child is killed once the
    # children have joined (its tiles folder exists): the launcher stops the other and names it
    import signal
    import time

    np.save(tmp_path / "x.npy", _sphere(120, 4, 0) * np.linspace(0.6, 1.4, 120)[:, None])
    cmd = [sys.executable, "-m", "ntk_ode.cli", "kernel", str(tmp_path / "x.npy"), "--activation", "tanh"]
    cmd += ["--tile", "8", "--method", "direct", "--store", str(tmp_path / "k"), "--processes", "2"]
    env = dict(os.environ, NTK_ODE_CACHE_DIR="")
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    children = []
    while time.monotonic() < deadline and launcher.poll() is None:
        found = _children(launcher.pid)
        if len(found) == 2 and (tmp_path / "k" / "tiles").is_dir():
            children = sorted(found)
            break
        time.sleep(0.2)
    assert len(children) == 2, "the two processes never started computing"
    time.sleep(2.0)
    os.kill(children[1], signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 2, err[-3000:]
    assert time.monotonic() - killed_at < 30  # the survivor is stopped at once, not after JAX's heartbeat
    assert "of 2 was killed by signal SIGKILL" in err, err[-3000:]
