"""The command line: demo at its smallest size, kernel on a file, clear errors."""

import json
import os
import re

import numpy as np
import pytest

from ntk_ode.cli import main
from ntk_ode.sweep import slope_standard_error


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
    k = np.load(out)
    assert "__meta__" in k.files and k["ntk"].dtype == np.float64  # provenance travels with the kernel
    assert oct(os.stat(out).st_mode & 0o777) == "0o644"
    assert main(["kernel", str(tmp_path / "missing.npy")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["kernel", str(tmp_path / "x.npy"), "--activation", "nope"])
    assert e.value.code == 2
    # a text file named .npy: a clear message, no advice to unpickle
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    assert main(["kernel", str(tmp_path / "text.npy"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "not a numeric .npy" in err and "allow_pickle" not in err


def test_text_data_with_header_and_other_delimiters(tmp_path, capsys):
    from ntk_ode.data import load_matrix

    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -3.0]])
    for name, text in {
        "a.csv": "a,b,c\n0.5,-1.0,2.0\n1.5,0.25,-3.0\n",
        "b.csv": "0.5;-1.0;2.0\n1.5;0.25;-3.0\n",
        "c.tsv": "x\ty\tz\n0.5\t-1.0\t2.0\n1.5\t0.25\t-3.0\n",
        "d.txt": "# comment\n0.5 -1.0 2.0\n1.5 0.25 -3.0\n",
    }.items():
        (tmp_path / name).write_text(text)
        np.testing.assert_array_equal(load_matrix(str(tmp_path / name)), x)
    (tmp_path / "bad.csv").write_text("1,2\n3\n")
    assert main(["kernel", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "k.npz")]) == 2
    assert "different numbers of columns" in capsys.readouterr().err


def test_sweep_prints_its_slope_with_a_standard_error_and_plots(tmp_path, capsys):
    out = str(tmp_path / "sw")
    args = ["sweep", "--widths", "8", "16", "--seeds", "3", "--n", "3", "--depth", "2", "--out", out]
    assert main(args) == 0
    text = capsys.readouterr().out
    data = json.load(open(out + ".json"))["state"]["done"]
    dist = np.array([data[w]["dist"][:3] for w in ("8", "16")])
    se = slope_standard_error([8, 16], dist)
    m = re.search(r"fitted slope ([+-][\d.]+) \+- ([\d.]+) \(standard error over 3 seeds\)", text)
    assert m and abs(float(m.group(2)) - se) <= 1e-3, text
    assert os.path.getsize(out + ".png") > 1000


def test_train_from_an_empty_folder_extends_and_refuses_another_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no results/ folder here: the default --out must work
    args = ["train", "--width", "16", "--n", "8", "--record-every", "2", "--depth", "2"]
    assert main([*args, "--steps", "4"]) == 0
    first = json.load(open("results/train.json"))
    assert first["records"]["step"] == [0, 2, 4]
    assert oct(os.stat("results/train.json").st_mode & 0o777) == "0o644"
    assert os.path.getsize("results/train.png") > 1000  # loss against the bound, lambda_min
    assert main([*args, "--steps", "6"]) == 0  # extends the finished run
    out = capsys.readouterr().out
    # the bound's rate is explained with the numbers of the run
    rate = float(re.search(r"eta lambda_0 = ([\d.e+-]+)", out).group(1))
    assert abs(rate - first["learning_rate"] * first["lambda_0"]) <= 1e-3 * rate, out
    second = json.load(open("results/train.json"))
    assert second["records"]["step"] == [0, 2, 4, 6]
    assert second["records"]["train_loss"][:3] == first["records"]["train_loss"]
    capsys.readouterr()
    assert main([*args, "--steps", "6", "--seed", "1"]) == 2
    assert "init_params" in capsys.readouterr().err
    assert main([*args, "--classes", "3", "3", "--out", "other"]) == 2
    assert main([*args, "--classes", "3", "11", "--out", "other"]) == 2
    assert "two distinct digits in 0..9" in capsys.readouterr().err
