"""The ``ntk-ode`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .data import load_matrix
from .results import prepare_output


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache, as the command line does: compiled programs
    (12-20 s per process for the kernel solvers) are reused by later runs and other processes.
    Folder: $NTK_ODE_CACHE_DIR, by default ~/.cache/ntk_ode/jax; NTK_ODE_CACHE_DIR= (empty)
    leaves it off. An unwritable folder also leaves it off."""
    import os

    import jax

    folder = os.environ.get("NTK_ODE_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ntk_ode", "jax"))
    if not folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # an unwritable home: run without the cache
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _model_from(args):
    import ntk_ode as no

    return no.NeuralODE(
        args.activation,
        T=args.T,
        sigma_w=args.sigma_w,
        sigma_u=args.sigma_u,
        sigma_v=args.sigma_v,
        head=args.head,
        input_scaling=args.input_scaling,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Quick E1 (ODE vs ResNet gaps), E2 (NTK vs width) and the K_inf spectrum on bundled digits."""
    _enable_x64()
    from .experiments.demo import run_demo

    run_demo(args.out, n=args.n, seed=args.seed, max_width=args.max_width)
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    """NNGP and NTK of a data set (rows = inputs) -> .npz, or tile by tile to a folder of .npy."""
    _enable_x64()
    import ntk_ode as no
    from ntk_ode.results import atomic_write_npz, fingerprint, provenance

    if (args.verify or args.repair) and args.store is None:
        raise ValueError("--verify and --repair need --store FOLDER")
    if args.verify:
        from .store import verify

        report = verify(args.store)
        if not report.ok:
            raise ValueError(f"{args.store} is damaged: {report.message()} (rerun the computation with --repair)")
        print(f"{args.store}: intact (checksums of every array and tile match)")
        return 0
    if args.data is None:
        raise ValueError("the data file is required (only --verify runs without it)")
    if args.processes is not None:
        if args.store is None:
            raise ValueError("--processes needs --store (each process writes its tiles into the folder)")
        return _launch(args)
    if args.store is not None:
        return _kernel_to_store(args)
    prepare_output(args.out)
    x = load_matrix(args.data)
    model = _model_from(args)
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


def _launch(args) -> int:
    """Rerun this command as ``--processes`` local processes under jax.distributed."""
    from .distributed import launch_local

    return launch_local(_without_processes(args.argv), args.processes)


def _without_processes(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            out.append(a)
    return out


def _kernel_to_store(args) -> int:
    import jax

    from .tiles import kernel_to_disk

    x = load_matrix(args.data).astype(np.float64)
    t0 = time.perf_counter()
    store = kernel_to_disk(
        _model_from(args),
        x,
        folder=args.store,
        depth=args.depth,
        tile=args.tile,
        dtype=args.dtype,
        rtol=args.rtol if args.rtol is not None else 1e-8,
        method=args.method,
        progress=jax.process_index() == 0,
        repair=args.repair,
    )
    if jax.process_index() == 0:
        errs = ", ".join(f"{n} {e:.1e}" for n, e in store.error.items())
        print(
            f"wrote {store.folder}: {', '.join(n + '.npy' for n in store.names)} of shape {store.shape} "
            f"({store.method}; {jax.process_count()} process(es), {time.perf_counter() - t0:.1f} s); "
            f"estimated max abs errors {errs}"
        )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run experiments E1-E13 (or all) with results and plots."""
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


def cmd_train(args: argparse.Namespace) -> int:
    """Gradient descent on the bundled digits with NTK tracking -> JSON."""
    _enable_x64()
    import jax

    import ntk_ode as no
    from ntk_ode.data import digits
    from ntk_ode.results import atomic_write_json
    from ntk_ode.train import train

    prepare_output(args.out + ".json")
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
    if "bound" in rec and r.lambda_0 is not None:
        rate = float(r.learning_rate) * float(r.lambda_0)
        print(
            f"bound = (1 - eta lambda_0)^k L_0 (Theorem 2) with eta lambda_0 = {rate:.2e}: it falls by a factor "
            f"e only every {1 / max(rate, 1e-300):.3g} steps, because lambda_0 = {float(r.lambda_0):.3e} is the "
            "smallest eigenvalue of K_inf and eta ~ 1 / lambda_max"
        )
    _plot_training(rec, args.out)
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


def _plot_training(rec: dict, out: str) -> None:
    """``<out>.png``: training loss against the theory's bound, and lambda_min of the NTK."""
    from .experiments.common import figure, savefig

    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].semilogy(rec["step"], rec["train_loss"], "o-", ms=3, label="training loss")
    if "bound" in rec:
        axes[0].semilogy(rec["step"], rec["bound"], "--", color="0.35", label=r"bound $(1 - \eta\lambda_0)^k L_0$")
    axes[0].set(xlabel="step $k$", ylabel="loss", title="gradient descent")
    axes[0].legend(fontsize=8)
    axes[1].plot(rec["step"], rec["lambda_min"], "o-", ms=3, label=r"$\lambda_{\min}(\Theta_n(k))$")
    axes[1].set(xlabel="step $k$", ylabel=r"$\lambda_{\min}$", title="smallest NTK eigenvalue during training")
    axes[1].legend(fontsize=8)
    folder, name = os.path.split(os.path.abspath(out))
    savefig(fig, folder, name)
    plt.close(fig)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Width x seed sweep of the NTK vs K_inf on the bundled digits -> JSON."""
    _enable_x64()
    import jax

    import ntk_ode as no
    from ntk_ode.data import digits

    prepare_output(args.out + ".json")
    if args.processes is not None:
        return _launch(args)
    x, _ = digits((0, 1), n=args.n, seed=args.seed)
    model = no.NeuralODE(args.activation, T=args.T)
    first = jax.process_index() == 0
    r = no.width_sweep(
        model, x, args.widths, args.seeds, depth=args.depth, seed=args.seed, out=args.out, progress=first
    )
    if not first:
        return 0
    for w, m in zip(r["widths"], r["mean_dist"]):
        print(f"width {w:6d}  mean ||Theta_n - K_inf|| / ||K_inf|| = {m:.4e}")
    if len(set(args.widths)) > 1:
        se = r["slope_se"]
        err = f" +- {se:.3f} (standard error over {args.seeds} seeds)" if np.isfinite(se) else " (one seed: no error)"
        print(f"fitted slope {r['slope']:+.3f}{err}; theory -1/2 for wide enough networks")
        from .experiments import width

        folder, name = os.path.split(os.path.abspath(args.out))
        width.plot(r, folder, name)  # E2's figure: the distance and its blocks against width
        print(f"plot in {args.out}.png")
    print(f"results in {args.out}.json")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
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


EXIT_CODES = """exit status:
  0  success
  2  a clear error: bad arguments or input files, an output path that cannot be written, a
     results file or checkpoint that belongs to another configuration, a failed or non-finite
     computation (the message says which)
  1  an unexpected error (a bug: please report it with the traceback)"""


def _sub(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES, formatter_class=_Formatter)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown in the help (not for on/off flags, whose default is off), and the epilog
    kept as written."""

    def _get_help_string(self, action):
        if isinstance(action, argparse._StoreTrueAction) or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _model_args(p: argparse.ArgumentParser, with_sigmas: bool = True) -> None:
    from .activations import available_activations

    acts = available_activations()
    p.add_argument(
        "--activation",
        default="softplus",
        choices=acts,
        metavar="NAME",
        help=f"activation phi, one of: {', '.join(acts)}",
    )
    p.add_argument("--T", type=float, default=1.0, help="time horizon T of the Neural ODE")
    if with_sigmas:
        p.add_argument("--sigma-w", dest="sigma_w", type=float, default=1.0, help="scale of the shared weight W")
        p.add_argument("--sigma-u", dest="sigma_u", type=float, default=1.0, help="scale of the input weight U")
        p.add_argument("--sigma-v", dest="sigma_v", type=float, default=1.0, help="scale of the readout v")
        p.add_argument("--head", default="linear", choices=["linear", "phi"], help="readout of h_T or phi(h_T)")
        p.add_argument(
            "--input-scaling",
            dest="input_scaling",
            default="sqrt_d",
            choices=["sqrt_d", "none"],
            help="h_0 = sigma_u U x / sqrt(d), or without 1/sqrt(d)",
        )
    p.add_argument("--depth", type=int, default=None, help="ResNet depth L; none: the Neural ODE itself")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ntk-ode`` and its commands."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="ntk-ode",
        description="NTK and NNGP theory of wide weight-tied Neural ODEs.",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"ntk-ode {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = _sub(sub, "demo", "quick E1 + E2 + the K_inf spectrum on the bundled digits (about a minute on 2 cores)")
    d.add_argument("--out", default="results/demo", help="output folder (created if missing)")
    d.add_argument("--n", type=int, default=64, help="number of digits for the K_inf spectrum")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument(
        "--max-width", dest="max_width", type=int, default=2048, help="largest width of the E2 sweep (at least 256)"
    )
    d.set_defaults(func=cmd_demo)

    k = _sub(
        sub,
        "kernel",
        "infinite-width NNGP and NTK of a data set (.npy, or .csv with or without a header "
        "row, separated by commas, semicolons, tabs or spaces) -> .npz with provenance",
    )
    k.add_argument("data", nargs="?", default=None, help="the data file, one input per row (not with --verify)")
    k.add_argument("--out", default="kernel.npz", help="output .npz file (parent folders are created)")
    _model_args(k)
    k.add_argument("--rtol", type=float, default=None, help="target relative accuracy; none: 1e-8 in float64")
    k.add_argument(
        "--store",
        default=None,
        metavar="FOLDER",
        help="write nngp.npy and ntk.npy tile by tile into FOLDER instead (out of core, resumable: "
        "rerun the same command after an interruption; none: one .npz in memory)",
    )
    k.add_argument("--tile", type=int, default=1024, help="tile edge in inputs, with --store")
    k.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="file dtype, with --store")
    k.add_argument(
        "--method",
        default="auto",
        choices=["auto", "zonal", "table", "direct"],
        help="tile kernel with --store: zonal (one norm), table (norm, norm, angle), direct solves; auto picks",
    )
    k.add_argument(
        "--processes",
        type=int,
        default=None,
        help="with --store: run as this many local processes under jax.distributed, splitting the tiles",
    )
    k.add_argument(
        "--verify",
        action="store_true",
        help="with --store: check the folder against its checksums without computing (exit 2 naming what is damaged)",
    )
    k.add_argument(
        "--repair", action="store_true", help="with --store: recompute the tiles of a finished store that are damaged"
    )
    k.set_defaults(func=cmd_kernel)

    r = _sub(
        sub,
        "reproduce",
        "run the experiments E1..E13 (or 'all'): results files and plots; finished cells are reused when rerun",
    )
    r.add_argument("names", nargs="+", metavar="NAME", help="experiment names E1..E13, or 'all'")
    g = r.add_mutually_exclusive_group()
    g.add_argument(
        "--quick", action="store_true", help="small sizes; the default when neither --quick nor --full is given"
    )
    g.add_argument("--full", action="store_true", help="the larger sizes")
    r.add_argument("--out", default="results", help="output folder (created if missing)")
    r.add_argument("--data", default=None, help="folder with MNIST's IDX files (E4 and E8 then use MNIST)")
    r.set_defaults(func=cmd_reproduce)

    t = _sub(
        sub,
        "train",
        "gradient descent on two classes of the bundled digits, tracking the NTK and "
        "Theorem 2's bound; resumable, and more --steps extend a finished run",
    )
    _model_args(t, with_sigmas=False)
    t.add_argument("--width", type=int, default=1024, help="hidden width n")
    t.add_argument("--n", type=int, default=128, help="number of training points")
    t.add_argument(
        "--classes",
        type=int,
        nargs=2,
        default=[0, 1],
        metavar=("A", "B"),
        help="two distinct digits 0..9; A gets target +1, B -1",
    )
    t.add_argument("--steps", type=int, default=500, help="gradient steps")
    t.add_argument("--record-every", dest="record_every", type=int, default=50, help="steps between records")
    t.add_argument("--lr", type=float, default=None, help="learning rate; none: 1 / lambda_max(H_0)")
    t.add_argument("--seed", type=int, default=0, help="seed of the data draw and of the initialization")
    t.add_argument("--out", default="results/train", help="output path prefix: <out>.json and <out>.ckpt.npz")
    t.set_defaults(func=cmd_train)

    w = _sub(
        sub,
        "sweep",
        "width x seed sweep of the finite-width NTK against K_inf on the bundled digits; "
        "resumable, and more widths or seeds extend a finished run",
    )
    _model_args(w, with_sigmas=False)
    w.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024], help="widths")
    w.add_argument("--seeds", type=int, default=8, help="initializations per width")
    w.add_argument("--n", type=int, default=8, help="number of digits")
    w.add_argument("--seed", type=int, default=0, help="base seed")
    w.add_argument("--out", default="results/sweep", help="output path prefix: <out>.json")
    w.add_argument(
        "--processes",
        type=int,
        default=None,
        help="run as this many local processes under jax.distributed, dealing the seeds over them",
    )
    w.set_defaults(func=cmd_sweep)

    b = _sub(sub, "bench", "run the benchmark scripts (from a source checkout)")
    b.add_argument("--quick", action="store_true", help="small sizes")
    b.set_defaults(func=cmd_bench)
    return p


def _log_to_stderr() -> None:
    """Progress lines of long jobs (finished cells, timings) go to stderr."""
    import logging

    lg = logging.getLogger("ntk_ode")
    if not lg.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ntk-ode`` with ``argv``; returns the exit status (0 ok, 2 a clear error)."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    _log_to_stderr()
    enable_compilation_cache()
    try:
        from .distributed import initialize_from_env

        initialize_from_env()  # a process started by --processes
        return args.func(args)
    except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
        print(f"ntk-ode {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
