"""Every experiment runs end to end at a tiny size, writes results and plots, and resumes."""

import dataclasses
import json
import os
import re

import pytest

from ntk_ode.cli import main
from ntk_ode.experiments import EXPERIMENTS, load_results
from ntk_ode.results import config_fingerprint

TINY = {
    "E1": dict(widths=(32,), depths=(8, 16, 32), n_inputs=3),
    "E2": dict(widths=(32, 64), n_seeds=2, n_inputs=3, depth=4),
    "E3": dict(widths=(32,), depths=(8, 16), n_inputs=3, references=("rk4-adjoint-256", "dopri5-adjoint-1e-6")),
    "E4": dict(widths=(32, 64), n_points=16, steps=20, record_every=10, depth=2),
    "E5": dict(horizons=(0.5, 1.0), n_points=6),
    "E6": dict(depths=(1, None), n_points=8),
    "E7": dict(width=16, n_inputs=2, fixed=("rk4",), fixed_steps=(4, 16), adaptive=("dopri5",), tolerances=(1e-6,)),
    "E8": dict(activations=("softplus", "erf"), n_points=8),
    "E9": dict(widths=(4, 16), n_seeds=32, n_inputs=2),
    "E10": dict(activations=("erf",), horizons=(0.5, 1.0), sigmas=(1.0,), depths=(2, 4), n_points=5),
    "E11": dict(activations=("erf",), k_max=6, depth=4, point_counts=(4, 8)),
    "E12": dict(activations=("erf",), depth=2, n_train=40, n_test=30, width=16, train_steps=5),
    "E13": dict(activations=("erf",), depth=2, width=16, members=8, n_train=4, n_test=8, steps=(0, 5)),
}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_runs_and_resumes(name, tmp_path, caplog):
    e = EXPERIMENTS[name]
    cfg = e.config_cls.quick(**TINY[name])
    out = str(tmp_path)
    with caplog.at_level("INFO", logger="ntk_ode"):
        res = e.run(cfg, out)
    # progress counts "cell k of n" with n the number of cells the run stores, and estimates the rest
    # (E2 is a width sweep: its runs resume through the sweep's own results file)
    cells = [f for f in os.listdir(out) if f.startswith(f".{name}_cells.") and f.endswith(".json")]
    assert len(cells) == (name != "E2")
    for cells_file in cells:
        with open(os.path.join(out, cells_file)) as f:
            n_cells = len(json.load(f)["cells"])
        done = [
            re.search(r"cell (\d+) of (\d+) .* done in [\d.]+ s; (about \d+ s left|the last cell)", r.getMessage())
            for r in caplog.records
            if " done in " in r.getMessage()
        ]
        assert done and all(done), [r.getMessage() for r in caplog.records]
        assert {int(m.group(2)) for m in done} == {n_cells} and max(int(m.group(1)) for m in done) == n_cells
        assert done[-1].group(3) == "the last cell"
    e.plot(res, out)
    for line in e.summary(res) if name == "E12" else ():  # accuracies with binomial standard errors
        for acc, se in re.findall(r" (\d\.\d{3}) \+- (\d\.\d{3})", line):
            assert abs(float(se) - (float(acc) * (1 - float(acc)) / cfg.n_test) ** 0.5) <= 1e-3
        assert len(re.findall(r"\d \+- \d", line)) == 3, line
    if e.summary:
        assert e.summary(res), name
    data = load_results(os.path.join(out, f"{name}.json"))
    assert data["experiment"] == name and "versions" in data and data["time_s"] > 0
    assert os.path.getsize(os.path.join(out, f"{name}.png")) > 1000
    assert os.path.exists(os.path.join(out, f"{name}.pdf"))
    # a second run reuses every finished cell (same results, no recomputation)
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in cells}
    res2 = e.run(cfg, out)
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in cells} == before
    assert json.dumps(res2, sort_keys=True, default=str) == json.dumps(res, sort_keys=True, default=str)


def test_e1_slopes_tiny(tmp_path):
    e = EXPERIMENTS["E1"]
    res = e.run(e.config_cls.quick(widths=(64,), depths=(8, 16, 32, 64), n_inputs=4), str(tmp_path))
    assert all(-1.2 <= s <= -0.8 for s in res["slopes"].values()), res["slopes"]


def test_reproduce_errors(tmp_path, capsys):
    assert main(["reproduce", "E42", "--out", str(tmp_path)]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce", "E5", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = EXPERIMENTS["E5"].config_cls.quick()
    bad = tmp_path / f".E5_cells.{config_fingerprint(dataclasses.asdict(cfg))}.json"
    bad.write_text('{"config": {')  # partial file from an interrupted write
    assert main(["reproduce", "E5", "--out", str(tmp_path)]) == 2
    assert "is not a readable results file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a readable results file"):
        load_results(str(bad))
