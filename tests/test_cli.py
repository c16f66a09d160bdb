"""The command line: demo at its smallest size, kernel on a file, clear errors."""

import json
import os

import numpy as np

from ntk_ode.cli import main


def test_demo_smallest(tmp_path):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--n", "12", "--max-width", "256"]) == 0
    s = json.load(open(os.path.join(out, "summary.json")))
    assert -1.2 <= s["E1"]["slope_output"] <= -0.8
    assert s["kernel"]["lambda_0"] > 0
    for f in ("e1_gaps.png", "e2_width.png", "kernel_spectrum.png"):
        assert os.path.getsize(os.path.join(out, f)) > 1000


def test_kernel_command(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.save(tmp_path / "x.npy", x)
    out = str(tmp_path / "k.npz")
    assert main(["kernel", str(tmp_path / "x.npy"), "--out", out, "--activation", "erf"]) == 0
    k = np.load(out)
    assert k["ntk"].shape == (4, 4) and np.allclose(k["ntk"], k["ntk"].T)
    assert main(["kernel", str(tmp_path / "missing.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["kernel", str(tmp_path / "x.npy"), "--activation", "nope"]) == 2
