"""Kernels on disk can't be fooled: links planted at each file are refused, and truncated, edited
or deleted arrays and markers are named by verification, refused on a rerun and repaired on
request (bit-identical to an undamaged run)."""

import json
import os

import numpy as np
import pytest

from ntk_ode import NeuralODE, cli
from ntk_ode.results import atomic_write_json, exclusive
from ntk_ode.store import StoreError, verify
from ntk_ode.tiles import kernel_to_disk

MODEL = NeuralODE("erf", T=1.0)
X = np.random.default_rng(0).standard_normal((9, 3))


def _store(folder, **kw):
    return kernel_to_disk(MODEL, X, folder=folder, depth=2, tile=4, method="direct", **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref") / "k"
    store = _store(folder)
    return folder, {n: np.array(store.load(n)) for n in store.names}


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_finished_store_records_checksums_and_verifies(reference, tmp_path):
    folder, _ = reference
    manifest = json.load(open(folder / "manifest.json"))
    assert set(manifest["checksums"]) == {"nngp", "ntk"} and manifest["symmetric"] is True
    marker = json.load(open(folder / "tiles" / "0_4.json"))
    assert set(marker["checksums"]) == {"nngp", "ntk"}
    assert verify(folder).ok


@pytest.mark.parametrize("damage", ["edit", "truncate", "delete", "marker", "mirror"])
def test_damage_is_named_refused_on_rerun_and_repaired(reference, tmp_path, damage):
    folder, ref = reference
    work = _copy(folder, tmp_path / "k")
    path = work / "ntk.npy"
    if damage == "edit":  # one value in tile (4, 8)
        arr = np.load(path, mmap_mode="r+")
        arr[5, 8] += 1e-3
        arr.flush()
        del arr
    elif damage == "mirror":  # below the diagonal: the transposed copy of tile (0, 4)
        arr = np.load(path, mmap_mode="r+")
        arr[6, 1] = 0.0
        arr.flush()
        del arr
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "delete":
        os.unlink(path)
    else:
        os.unlink(work / "tiles" / "4_8.json")
    report = verify(work)
    assert not report.ok
    named = {"edit": "tile (4, 8)", "mirror": "tile (0, 4)", "truncate": "truncated", "delete": "missing"}
    assert named.get(damage, "4_8.json") in report.message()
    with pytest.raises(StoreError, match="damaged"):
        _store(work)
    assert cli.main(["kernel", "--store", str(work), "--verify"]) == 2
    repaired = _store(work, repair=True)
    for n in repaired.names:
        np.testing.assert_array_equal(repaired.load(n), ref[n])
    assert verify(work).ok
    assert cli.main(["kernel", "--store", str(work), "--verify"]) == 0


def test_links_planted_at_store_files_are_refused(tmp_path):
    outside = tmp_path / "outside.npy"
    outside.write_bytes(b"precious")
    # an unfinished store whose ntk.npy is a link elsewhere: the rerun must not write through it
    work = tmp_path / "k"
    _store(work)
    os.unlink(work / "tiles" / "0_0.json")
    saved = json.load(open(work / "manifest.json"))
    saved.pop("checksums")
    atomic_write_json(work / "manifest.json", saved)
    os.unlink(work / "ntk.npy")
    os.symlink(outside, work / "ntk.npy")
    with pytest.raises(StoreError, match="symbolic link"):
        _store(work)
    assert outside.read_bytes() == b"precious"

    # tiles/ as a link (an unfinished store): its markers would land elsewhere
    os.unlink(work / "ntk.npy")
    os.rename(outside, work / "ntk.npy")  # (a broken array: the link check comes first)
    elsewhere = tmp_path / "elsewhere"
    os.rename(work / "tiles", elsewhere)
    os.symlink(elsewhere, work / "tiles")
    before = sorted(os.listdir(elsewhere))
    with pytest.raises(StoreError, match="tiles is a symbolic link"):
        _store(work)
    assert sorted(os.listdir(elsewhere)) == before


def test_links_at_results_and_locks_are_refused(tmp_path):
    target = tmp_path / "new_file"
    os.symlink(target, tmp_path / "out.json.lock")
    with pytest.raises(OSError, match="symbolic link"):
        with exclusive(tmp_path / "out.json"):
            pass
    assert not target.exists()
    os.symlink(tmp_path / "victim.json", tmp_path / "res.json")
    with pytest.raises(OSError, match="symbolic link"):
        atomic_write_json(tmp_path / "res.json", {"a": 1})
    assert not (tmp_path / "victim.json").exists()


def test_a_nan_tile_error_is_not_dropped(reference, tmp_path):
    folder, _ = reference
    work = _copy(folder, tmp_path / "k")
    m = json.load(open(work / "tiles" / "0_4.json"))
    m["error"]["ntk"] = float("nan")
    atomic_write_json(work / "tiles" / "0_4.json", m)
    with pytest.warns(RuntimeWarning, match="no finite error"):
        store = _store(work)
    assert np.isnan(store.error["ntk"])


def test_garbage_markers_and_manifests_are_named(reference, tmp_path):
    folder, _ = reference
    work = _copy(folder, tmp_path / "k")
    (work / "tiles" / "0_4.json").write_text("not json")
    with pytest.raises(StoreError, match="0_4.json"):
        _store(work)
    work2 = _copy(folder, tmp_path / "k2")
    (work2 / "manifest.json").write_text("{")
    with pytest.raises(StoreError, match="manifest.json"):
        _store(work2)


def test_a_hand_edited_marker_is_named(reference, tmp_path):
    folder, _ = reference
    work = _copy(folder, tmp_path / "k")
    path = work / "tiles" / "0_4.json"
    path.write_text(path.read_text().replace('"method": "direct"', '"method": "zonal"'))
    with pytest.raises(StoreError, match="0_4.json was changed after it was written"):
        _store(work)
