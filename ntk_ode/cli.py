"""The ``ntk-ode`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time

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
    from ntk_ode.sweep import atomic_write_json, fit_slope, versions

    out = args.out
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    x, y = digits((0, 1), n=args.n, seed=args.seed)
    model = no.NeuralODE("softplus", T=1.0)
    summary = {"config": {"data": "sklearn digits 0 vs 1, centred, on the unit sphere", "n_points": args.n,
                          "activation": "softplus", "T": 1.0, "seed": args.seed}, "versions": versions()}

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
    summary["E1"] = {"L": Ls, "output_gap": out_gap, "gradient_gap": grad_gap, "slope_output": s1[0], "slope_gradient": s1[1]}
    _plot_loglog(os.path.join(out, "e1_gaps"), Ls, [out_gap, grad_gap], ["max |f^L - f|", "||grad f^L - grad f||"],
                 "depth L", "gap", "E1: ResNet -> Neural ODE (softplus)", s1)

    # E2: finite-width NTK -> K_inf
    print("[2/3] E2: finite-width NTK vs K_inf over widths 64..1024 (4 seeds each)", flush=True)
    sw = no.width_sweep(model, xs, [64, 128, 256, 512, 1024], 4, seed=args.seed,
                        solver=no.Solver(rtol=1e-8, atol=1e-8), out=os.path.join(out, "e2_sweep"), progress=True)
    summary["E2"] = {"widths": sw["widths"].tolist(), "mean_rel_distance": sw["mean_dist"].tolist(), "slope": sw["slope"]}
    _plot_loglog(os.path.join(out, "e2_width"), sw["widths"], [sw["mean_dist"]], ["||Theta_n - K_inf|| / ||K_inf||"],
                 "width n", "relative distance", "E2: NTK at width n vs K_inf", [sw["slope"]])

    # K_inf on the training set: lambda_0 of Theorem 2
    print(f"[3/3] K_inf on {len(x)} digits: lambda_0 = lambda_min", flush=True)
    t0 = time.perf_counter()
    K, err = no.kernel_fn(model, progress=True)(x, get="ntk", with_error=True)
    ev = np.linalg.eigvalsh(np.asarray(K))
    summary["kernel"] = {"lambda_0": float(ev[0]), "lambda_max": float(ev[-1]), "condition": float(ev[-1] / ev[0]),
                         "error_estimate": float(err), "time_s": time.perf_counter() - t0}
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

    x = _load_matrix(args.data)
    model = no.NeuralODE(args.activation, T=args.T, sigma_w=args.sigma_w, sigma_u=args.sigma_u,
                         sigma_v=args.sigma_v, head=args.head, input_scaling=args.input_scaling)
    k, err = no.kernel_fn(model, depth=args.depth, rtol=args.rtol, progress=True)(x, with_error=True)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, nngp=np.asarray(k.nngp), ntk=np.asarray(k.ntk), error_nngp=err.nngp, error_ntk=err.ntk)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: nngp and ntk of shape {np.asarray(k.ntk).shape}, estimated error {err.ntk:.1e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="ntk-ode", description="NTK and NNGP theory of wide weight-tied Neural ODEs.")
    p.add_argument("--version", action="version", version=f"ntk-ode {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="quick E1 + E2 + K_inf spectrum on the bundled digits (a few minutes on 2 cores)")
    d.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    d.add_argument("--n", type=int, default=64, help="number of digits for the K_inf spectrum (default 64)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as e:
        print(f"ntk-ode {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
