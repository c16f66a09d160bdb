"""The ``ntk-ode`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def _plot_loglog(path, x, ys, labels, xlabel, ylabel, title, slopes=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for i, (y, lab) in enumerate(zip(ys, labels)):
        s = f" (slope {slopes[i]:.2f})" if slopes is not None else ""
        ax.loglog(x, y, "o-", label=lab + s)
    ref = np.asarray(ys[0])[0] * (np.asarray(x, float) / x[0]) ** (-1.0 if "L" in xlabel else -0.5)
    ax.loglog(x, ref, "k--", lw=0.8, label="theory slope " + ("-1" if "L" in xlabel else "-1/2"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{path}.{ext}", dpi=120)
    plt.close(fig)


def cmd_demo(args) -> int:
    """Quick E1 (ODE vs ResNet gaps), E2 (NTK vs width) and the K_inf spectrum on bundled digits."""
    _enable_x64()
    import jax
    import jax.numpy as jnp

    import ntk_ode as no
    from ntk_ode.data import digits
    from ntk_ode.results import atomic_write_json, versions
    from ntk_ode.sweep import fit_slope

    out = args.out
    if args.max_width < 256:
        raise ValueError(f"--max-width must be at least 256, got {args.max_width}")
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    x, y = digits((0, 1), n=args.n, seed=args.seed)
    model = no.NeuralODE("softplus", T=1.0)
    summary: dict[str, Any] = {
        "config": {
            "data": "sklearn digits 0 vs 1, centred, on the unit sphere",
            "n_points": args.n,
            "activation": "softplus",
            "T": 1.0,
            "seed": args.seed,
        },
        "versions": versions(),
    }

    # E1: the same weights in the ODE and in ResNets of depth L
    print("[1/3] E1: Neural ODE vs weight-tied ResNet of depth L (softplus, width 256)", flush=True)
    xs = x[:8]
    params = model.init(jax.random.PRNGKey(args.seed), d=x.shape[1], width=256)
    f = model.apply(params, xs, rtol=1e-12, atol=1e-12)
    g = no.grad(model, params, xs, rtol=1e-12, atol=1e-12)
    Ls = [8, 16, 32, 64, 128, 256]
    out_gap, grad_gap = [], []
    for L in Ls:
        out_gap.append(float(jnp.max(jnp.abs(model.apply(params, xs, depth=L) - f))))
        gL = no.grad(model, params, xs, depth=L, method="backprop")
        grad_gap.append(float(jnp.sqrt(sum(jnp.sum((gL[k] - g[k]) ** 2) for k in "UWv"))))
    s1 = [fit_slope(Ls, out_gap), fit_slope(Ls, grad_gap)]
    summary["E1"] = {
        "L": Ls,
        "output_gap": out_gap,
        "gradient_gap": grad_gap,
        "slope_output": s1[0],
        "slope_gradient": s1[1],
    }
    _plot_loglog(
        os.path.join(out, "e1_gaps"),
        Ls,
        [out_gap, grad_gap],
        ["max |f^L - f|", "||grad f^L - grad f||"],
        "depth L",
        "gap",
        "E1: ResNet -> Neural ODE (softplus)",
        s1,
    )

    # E2: finite-width NTK -> K_inf
    widths = [w for w in (128, 256, 512, 1024, 2048) if w <= args.max_width]
    print(f"[2/3] E2: finite-width NTK vs K_inf over widths {widths[0]}..{widths[-1]} (6 seeds each)", flush=True)
    sw = no.width_sweep(
        model,
        xs,
        widths,
        6,
        seed=args.seed,
        solver=no.Solver(rtol=1e-8, atol=1e-8),
        out=os.path.join(out, "e2_sweep"),
        progress=True,
    )
    summary["E2"] = {
        "widths": sw["widths"].tolist(),
        "mean_rel_distance": sw["mean_dist"].tolist(),
        "slope": sw["slope"],
    }
    _plot_loglog(
        os.path.join(out, "e2_width"),
        sw["widths"],
        [sw["mean_dist"]],
        ["||Theta_n - K_inf|| / ||K_inf||"],
        "width n",
        "relative distance",
        "E2: NTK at width n vs K_inf",
        [sw["slope"]],
    )

    # K_inf on the training set: lambda_0 of Theorem 2
    print(f"[3/3] K_inf on {len(x)} digits: lambda_0 = lambda_min", flush=True)
    t0 = time.perf_counter()
    K, err = no.kernel_fn(model, progress=True)(x, get="ntk", with_error=True)
    ev = np.linalg.eigvalsh(np.asarray(K))
    summary["kernel"] = {
        "lambda_0": float(ev[0]),
        "lambda_max": float(ev[-1]),
        "condition": float(ev[-1] / ev[0]),
        "error_estimate": float(err),
        "time_s": time.perf_counter() - t0,
    }
    _plot_spectrum(os.path.join(out, "kernel_spectrum"), ev)
    summary["time_s"] = time.perf_counter() - t_start
    atomic_write_json(os.path.join(out, "summary.json"), summary)

    print("\nsummary")
    print(f"  E1 slope of output gap vs L      {s1[0]:+.3f}   (theory -1)")
    print(f"  E1 slope of gradient gap vs L    {s1[1]:+.3f}   (theory -1)")
    print(f"  E2 slope of ||Theta_n - K_inf||  {sw['slope']:+.3f}   (theory -1/2)")
    print(f"  lambda_0 = lambda_min(K_inf)     {ev[0]:.4e}  (lambda_max {ev[-1]:.3e}, est. error {float(err):.1e})")
    print(f"  total time                       {summary['time_s']:.1f} s; results in {out}/")
    return 0


def _plot_spectrum(path, ev):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogy(np.arange(1, ev.size + 1), ev[::-1], "o-", ms=3)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue of K_inf")
    ax.set_title("Spectrum of the limiting NTK (lambda_0 = last)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{path}.{ext}", dpi=120)
    plt.close(fig)


def _load_matrix(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if path.endswith(".csv"):
        return np.loadtxt(path, delimiter=",", ndmin=2)
    raise ValueError(f"{path}: expected a .npy or .csv file")


def cmd_kernel(args) -> int:
    """NNGP and NTK of a data set (rows = inputs) -> .npz."""
    _enable_x64()
    import ntk_ode as no
    from ntk_ode.results import atomic_write_npz, fingerprint, provenance

    x = _load_matrix(args.data)
    model = no.NeuralODE(
        args.activation,
        T=args.T,
        sigma_w=args.sigma_w,
        sigma_u=args.sigma_u,
        sigma_v=args.sigma_v,
        head=args.head,
        input_scaling=args.input_scaling,
    )
    t0 = time.perf_counter()
    k, err = no.kernel_fn(model, depth=args.depth, rtol=args.rtol, progress=True)(x, with_error=True)
    config = {
        **model.config(),
        "depth": args.depth,
        "rtol": args.rtol,
        "data": os.path.abspath(args.data),
        "data_fingerprint": fingerprint(x),
    }
    atomic_write_npz(
        args.out,
        {"nngp": np.asarray(k.nngp), "ntk": np.asarray(k.ntk), "error_nngp": err.nngp, "error_ntk": err.ntk},
        meta=provenance(config, time_s=time.perf_counter() - t0),
    )
    print(f"wrote {args.out}: nngp and ntk of shape {np.asarray(k.ntk).shape}, estimated error {err.ntk:.1e}")
    return 0


def cmd_reproduce(args) -> int:
    """Run experiments E1-E9 (or all) with results and plots."""
    from .experiments import EXPERIMENTS, reproduce

    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    t = time.perf_counter()
    reproduce(
        names,
        out=args.out,
        preset="full" if args.full else "quick",
        data_dir=args.data,
        log=lambda m: print(m, flush=True),
    )
    print(f"finished {', '.join(names)} in {time.perf_counter() - t:.1f} s; results in {args.out}/")
    return 0


def cmd_train(args) -> int:
    """Gradient descent on the bundled digits with NTK tracking -> JSON."""
    _enable_x64()
    import jax

    import ntk_ode as no
    from ntk_ode.data import digits
    from ntk_ode.results import atomic_write_json
    from ntk_ode.train import train

    x, y = digits((args.classes[0], args.classes[1]), n=args.n, seed=args.seed)
    model = no.NeuralODE(args.activation, T=args.T)
    p = model.init(jax.random.PRNGKey(args.seed), d=x.shape[1], width=args.width)
    lr: Any = args.lr if args.lr is not None else "auto"
    r = train(
        model,
        p,
        x,
        y,
        args.steps,
        depth=args.depth,
        record_every=args.record_every,
        learning_rate=lr,
        checkpoint=args.out + ".ckpt",
    )
    rec = {k: np.asarray(v).tolist() for k, v in r.records.items() if k not in ("f_train", "f_test")}
    atomic_write_json(
        args.out + ".json", {**r.config, "lambda_0": r.lambda_0, "learning_rate": r.learning_rate, "records": rec}
    )
    print(f"{'step':>6s} {'loss':>11s} {'bound':>11s} {'lambda_min':>11s} {'rel.dist':>9s}")
    for i in range(len(rec["step"])):
        print(
            f"{rec['step'][i]:6d} {rec['train_loss'][i]:11.4e} {rec.get('bound', [np.nan] * 999)[i]:11.4e} "
            f"{rec['lambda_min'][i]:11.4e} {rec['rel_dist'][i]:9.2e}"
        )
    print(f"wrote {args.out}.json")
    return 0


def cmd_sweep(args) -> int:
    """Width x seed sweep of the NTK vs K_inf on the bundled digits -> JSON."""
    _enable_x64()
    import ntk_ode as no
    from ntk_ode.data import digits

    x, _ = digits((0, 1), n=args.n, seed=args.seed)
    r = no.width_sweep(
        no.NeuralODE(args.activation), x, args.widths, args.seeds, depth=args.depth, seed=args.seed, out=args.out
    )
    for w, m in zip(r["widths"], r["mean_dist"]):
        print(f"width {w:6d}  mean ||Theta_n - K_inf|| / ||K_inf|| = {m:.4e}")
    print(f"fitted slope {r['slope']:+.3f} (theory -1/2); results in {args.out}.json")
    return 0


def cmd_bench(args) -> int:
    """Run the benchmark scripts in ./benchmarks (from a source checkout)."""
    import subprocess

    scripts = ["kernels.py", "empirical.py", "gradients.py", "sweep.py"]
    missing = [s for s in scripts if not os.path.exists(os.path.join("benchmarks", s))]
    if missing:
        raise FileNotFoundError(f"run 'ntk-ode bench' from the source checkout: benchmarks/{missing[0]} not found")
    for s in scripts:
        cmd = [sys.executable, os.path.join("benchmarks", s)] + (["--quick"] if args.quick else [])
        print("$", " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            raise RuntimeError(f"benchmark {s} failed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ntk-ode`` and its commands."""
    from . import __version__

    p = argparse.ArgumentParser(prog="ntk-ode", description="NTK and NNGP theory of wide weight-tied Neural ODEs.")
    p.add_argument("--version", action="version", version=f"ntk-ode {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="quick E1 + E2 + K_inf spectrum on the bundled digits (a few minutes on 2 cores)")
    d.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    d.add_argument("--n", type=int, default=64, help="number of digits for the K_inf spectrum (default 64)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument(
        "--max-width",
        dest="max_width",
        type=int,
        default=2048,
        help="largest width of the E2 sweep (default 2048; at least 256)",
    )
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("kernel", help="infinite-width NNGP/NTK of a .npy/.csv data set -> .npz")
    k.add_argument("data", help="a .npy or .csv file, one input per row")
    k.add_argument("--out", default="kernel.npz", help="output .npz (default kernel.npz)")
    k.add_argument("--activation", default="softplus")
    k.add_argument("--T", type=float, default=1.0)
    k.add_argument("--sigma-w", dest="sigma_w", type=float, default=1.0)
    k.add_argument("--sigma-u", dest="sigma_u", type=float, default=1.0)
    k.add_argument("--sigma-v", dest="sigma_v", type=float, default=1.0)
    k.add_argument("--head", default="linear", choices=["linear", "phi"])
    k.add_argument("--input-scaling", dest="input_scaling", default="sqrt_d", choices=["sqrt_d", "none"])
    k.add_argument("--depth", type=int, default=None, help="ResNet depth L (default: the ODE)")
    k.add_argument("--rtol", type=float, default=None, help="target relative accuracy (default 1e-8)")
    k.set_defaults(func=cmd_kernel)

    r = sub.add_parser("reproduce", help="run the paper's experiments E1..E9 (or 'all') with results and plots")
    r.add_argument("names", nargs="+", help="experiment names E1..E9, or 'all'")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes (default)")
    g.add_argument("--full", action="store_true", help="the larger sizes")
    r.add_argument("--out", default="results", help="output folder (default: results)")
    r.add_argument("--data", default=None, help="folder with MNIST's IDX files (E4 and E8 then use MNIST)")
    r.set_defaults(func=cmd_reproduce)

    t = sub.add_parser("train", help="gradient descent on the bundled digits, tracking the NTK and Theorem 2's bound")
    t.add_argument("--activation", default="softplus")
    t.add_argument("--T", type=float, default=1.0)
    t.add_argument("--width", type=int, default=1024)
    t.add_argument("--n", type=int, default=128, help="number of training points")
    t.add_argument("--classes", type=int, nargs=2, default=[0, 1])
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--record-every", dest="record_every", type=int, default=50)
    t.add_argument("--depth", type=int, default=None, help="ResNet depth L (default: the ODE)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 1 / lambda_max(H_0))")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="results/train", help="output path prefix (default results/train)")
    t.set_defaults(func=cmd_train)

    w = sub.add_parser("sweep", help="width x seed sweep of the finite-width NTK against K_inf")
    w.add_argument("--activation", default="softplus")
    w.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    w.add_argument("--seeds", type=int, default=8)
    w.add_argument("--n", type=int, default=8)
    w.add_argument("--depth", type=int, default=None)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", default="results/sweep", help="output path prefix (default results/sweep)")
    w.set_defaults(func=cmd_sweep)

    b = sub.add_parser("bench", help="run the benchmark scripts (from a source checkout)")
    b.add_argument("--quick", action="store_true")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    """Run ``ntk-ode`` with ``argv``; returns the exit status (0 ok, 2 a clear error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
        print(f"ntk-ode {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
