"""Kernels at data-set scale: time and peak memory against N, float64.

Each measurement runs in its own process (so its peak resident memory is its own) and prints one
JSON line; the driver collects them into a table and a JSON file.

  * general inputs (norms spread over [0.5, 2] sqrt(d), d = 10, softplus ODE, rtol 1e-8):
    direct per-pair solves (kernel_fn(table=False)) against the (norm, norm, angle) table
    (kernel_fn(table=True)); the table's entries are compared with direct solves on a 24 x 24
    block of the same inputs;
  * equal-norm inputs in d = 3072 (CIFAR-10 size, erf ODE) written to disk tile by tile
    (tiles.kernel_to_disk, zonal tiles): time, peak memory, file size;
  * 1 process against 2 local processes under jax.distributed (`ntk-ode kernel --store
    --processes 2`), same inputs, same files.

    python benchmarks/scale.py [--quick] [--disk-n 50000] [--out benchmarks/results/scale.json]
    python benchmarks/scale.py --equal-norm 4000   # kernel_fn in memory on one sphere

On a GPU the same command runs larger sizes with --big (one command, about 10 minutes).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def general_inputs(n, d=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d) * rng.uniform(0.5, 2.0, (n, 1))


def sphere_inputs(n, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x *= np.sqrt(d) / np.linalg.norm(x, axis=1, keepdims=True)  # in place: one copy of the inputs
    return x


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(kind, n, folder=None, d=3072):
    """One measurement in this process (called through a subprocess)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import ntk_ode as no

    if kind in ("direct", "table"):
        model = no.NeuralODE("softplus")
        x = general_inputs(n)
        t = time.perf_counter()
        k, e = no.kernel_fn(model, table=(kind == "table"))(x, with_error=True)
        ntk = np.asarray(k.ntk)
        elapsed = time.perf_counter() - t
        out = {"kind": kind, "N": n, "time_s": elapsed, "peak_mib": peak_mib(), "error_estimate": e.ntk}
        if kind == "table":
            rng = np.random.default_rng(1)
            i, j = np.sort(rng.choice(n, 24, replace=False)), np.sort(rng.choice(n, 24, replace=False))
            ref = np.asarray(no.kernel_fn(model, table=False)(x[i], x[j], get="ntk"))
            out["max_rel_diff_vs_direct"] = float(np.max(np.abs(ntk[np.ix_(i, j)] - ref)) / np.max(np.abs(ref)))
        return out
    if kind == "disk":
        from ntk_ode.tiles import kernel_to_disk

        x = sphere_inputs(n, d)
        t = time.perf_counter()
        store = kernel_to_disk(no.NeuralODE("erf"), x, folder=folder, tile=2048, progress=True)
        elapsed = time.perf_counter() - t
        size = sum(os.path.getsize(store.path(nm)) for nm in store.names)
        return {
            "kind": "disk",
            "N": n,
            "d": d,
            "time_s": elapsed,
            "peak_mib": peak_mib(),
            "file_gb": size / 1e9,
            "error_estimate": store.error["ntk"],
            "method": store.method,
        }
    raise ValueError(kind)


def run_child(*args, timeout=3600):
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--one", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if p.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def processes(n, count, folder):
    x = general_inputs(n, seed=3)
    data = os.path.join(folder, "x.npy")
    np.save(data, x)
    argv = ["kernel", data, "--activation", "erf", "--tile", "512", "--store", os.path.join(folder, f"p{count}")]
    if count > 1:
        argv += ["--processes", str(count)]
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "ntk_ode.cli", *argv], capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return time.perf_counter() - t


def equal_norm(n):
    """kernel_fn in memory: N equal-norm inputs (first and second call), and the NNGP alone
    against both kernels on 300 general inputs (second calls)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import ntk_ode as no

    model = no.NeuralODE("erf")
    x = sphere_inputs(n, 10)

    def timed(inputs, get):
        t = time.perf_counter()
        no.kernel_fn(model)(inputs, get=get)
        return time.perf_counter() - t

    first, second = timed(x, ("nngp", "ntk")), timed(x, ("nngp", "ntk"))
    print(f"equal norms, N={n}, both kernels: first call {first:.2f} s, second {second:.2f} s")
    xg = general_inputs(300)
    for get in (("nngp", "ntk"), "nngp"):
        timed(xg, get)
        print(f"general inputs, N=300, get={get}: second call {timed(xg, get):.2f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", action="store_true", help="larger sizes (an accelerator)")
    ap.add_argument("--disk-n", type=int, default=None, help="N of the on-disk run (default 20000, quick 2000)")
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument(
        "--equal-norm",
        type=int,
        default=None,
        metavar="N",
        help="only: kernel_fn on N equal-norm inputs (d = 10, erf ODE), first and second call, "
        "and get='nngp' against both kernels on 300 general inputs",
    )
    a = ap.parse_args()
    if a.equal_norm:
        return equal_norm(a.equal_norm)
    if a.one:
        kind, n = a.one[0], int(a.one[1])
        print(json.dumps(one(kind, n, *(a.one[2:3]))))
        return
    rows = []
    direct_ns = (50, 100) if a.quick else (100, 200, 400)
    table_ns = (100, 1000) if a.quick else ((100, 1000, 8000, 20000) if a.big else (100, 1000, 8000))
    for n in direct_ns:
        rows.append(run_child("direct", n))
        print(rows[-1], flush=True)
    for n in table_ns:
        rows.append(run_child("table", n))
        print(rows[-1], flush=True)
    tmp = tempfile.mkdtemp(prefix="ntk_ode_scale_")
    try:
        disk_n = a.disk_n or (2000 if a.quick else 20000)
        rows.append(run_child("disk", disk_n, os.path.join(tmp, "disk")))
        print(rows[-1], flush=True)
        shutil.rmtree(os.path.join(tmp, "disk"))
        n_proc = 600 if a.quick else 3000
        t1, t2 = processes(n_proc, 1, tmp), processes(n_proc, 2, tmp)
        same = all(
            np.array_equal(np.load(os.path.join(tmp, "p1", f"{k}.npy")), np.load(os.path.join(tmp, "p2", f"{k}.npy")))
            for k in ("nngp", "ntk")
        )
        rows.append({"kind": "processes", "N": n_proc, "time_1_s": t1, "time_2_s": t2, "identical": same})
        print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = next(r["time_s"] for r in rows if r["kind"] == "direct" and r["N"] == 100) if not a.quick else None
    print(f"\n{'kind':10s} {'N':>6s} {'time s':>9s} {'peak MiB':>9s}  notes")
    for r in rows:
        if r["kind"] == "processes":
            t1, t2 = r["time_1_s"], r["time_2_s"]
            print(f"{'processes':10s} {r['N']:6d} 1: {t1:.1f} s, 2: {t2:.1f} s, identical {r['identical']}")
            continue
        note = f"error estimate {r['error_estimate']:.1e}"
        if "max_rel_diff_vs_direct" in r:
            note += f", max rel diff vs direct {r['max_rel_diff_vs_direct']:.1e}"
        if base:
            note += f", {r['time_s'] / base:.1f}x direct N=100"
        if r["kind"] == "disk":
            note += f", d={r['d']}, {r['file_gb']:.1f} GB on disk"
        print(f"{r['kind']:10s} {r['N']:6d} {r['time_s']:9.1f} {r['peak_mib']:9.0f}  {note}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
