"""Accuracy map of the infinite-width kernels: true error and reported estimate, per activation
and head, over sigma_w T and sigma_u |x| / sqrt(d).

The kernel is the one-step ResNet's K^1_inf of one input with itself (T = 3, sigma_w = s / 3):
its recursion is short enough to evaluate independently by scipy's adaptive quadrature, so the
"true error" is against a reference that shares no code with ntk_ode, while the duals it needs
sweep the same variances (up to ~1e3) as the ODE kernels at these settings. Prints a table,
writes JSON and a figure (docs/img/accuracy_map.png by default).

``--ode``: the ODE kernels themselves (``depth=None``) of two inputs at the same norm (cosine
0.6: two self-pairs and a cross pair), for the activations with closed-form duals (relu, erf),
against Richardson extrapolation of the exact ResNet kernels over a ladder of depths of its own
(24, 48, ..., 3072; ``kernel_fn``'s is 16, 32, ...): for erf a different discretisation than
``kernel_fn``'s Chebyshev collocation, for relu a different ladder than its own extrapolation of
inputs with themselves. Errors are relative to the largest kernel entry, as the estimates are.

    python benchmarks/accuracy_map.py [--quick] [--ode] [--out benchmarks/results/accuracy_map.json]
"""

import argparse
import json
import os
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ntk_ode as no  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_limits_accuracy import depth_one_diagonal  # noqa: E402

ACTS = ["relu", "softplus", "tanh", "sigmoid", "gelu", "silu", "erf"]


ODE_ACTS = ["relu", "erf"]
REFERENCE_LS = tuple(24 * 2**j for j in range(8))  # 24 ... 3072


def one_step_rows(name, head, s, u, T=3.0, d=4):
    """The one-step ResNet's kernel of one input with itself against scipy's quadrature."""
    model = no.NeuralODE(name, T=T, sigma_w=s / T, sigma_u=1.0, head=head)
    x = jnp.full((1, d), u)  # sigma_u |x| / sqrt(d) = u
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        k, e = no.kernel_fn(model, depth=1)(x, with_error=True)
    nngp, ntk = depth_one_diagonal(model.activation, u * u, s * s, head)
    rows = []
    for kind, got, est, ref in (("nngp", k.nngp, e.nngp, nngp), ("ntk", k.ntk, e.ntk, ntk)):
        true = abs(float(got[0, 0]) - ref) / abs(ref)
        rows.append(dict(kernel=kind, true_rel=true, estimate_rel=float(est) / abs(ref), warned=bool(w)))
    return rows


def ode_inputs(u, d=4, cos=0.6):
    """Two inputs with sigma_u |x| / sqrt(d) = u at the given cosine."""
    a = np.zeros(d)
    a[0] = 1.0
    b = np.zeros(d)
    b[0], b[1] = cos, np.sqrt(1.0 - cos * cos)
    return jnp.asarray(u * np.sqrt(d) * np.stack([a, b]))


def ode_rows(name, head, s, u, T=1.0):
    """The ODE kernels of two inputs against Richardson of the ResNet kernels (REFERENCE_LS)."""
    from ntk_ode.limits import richardson

    model = no.NeuralODE(name, T=T, sigma_w=s / T, sigma_u=1.0, head=head)
    x = ode_inputs(u)
    t = time.time()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        k, e = no.kernel_fn(model)(x, get=("nngp", "ntk"), with_error=True)
    seconds = time.time() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        levels = [no.kernel_fn(model, depth=L)(x, get=("nngp", "ntk")) for L in REFERENCE_LS]
    rows = []
    for kind in ("nngp", "ntk"):
        vals = [np.asarray(getattr(v, kind)) for v in levels]
        ref = richardson(vals, list(REFERENCE_LS))
        scale = np.max(np.abs(ref))
        true = float(np.max(np.abs(np.asarray(getattr(k, kind)) - ref))) / scale
        est = float(getattr(e, kind)) / scale
        # how settled the reference is: its change when the deepest level is left out
        settled = float(np.max(np.abs(ref - richardson(vals[:-1], list(REFERENCE_LS[:-1]))))) / scale
        row = dict(kernel=kind, true_rel=true, estimate_rel=est, warned=bool(w), seconds=seconds)
        rows.append(dict(row, reference_change=settled))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 x 2 settings instead of 5 x 4")
    ap.add_argument("--ode", action="store_true", help="the ODE kernels of relu and erf (see above)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/accuracy_map[_ode].json)")
    ap.add_argument("--figure", default=None, help="figure (default docs/img/accuracy_map[_ode].png)")
    args = ap.parse_args()
    tag = "_ode" if args.ode else ""
    args.out = args.out or f"benchmarks/results/accuracy_map{tag}.json"
    args.figure = args.figure or f"docs/img/accuracy_map{tag}.png"
    swT = [0.25, 2.0, 6.0] if args.quick else [0.25, 1.0, 2.0, 4.0, 6.0]
    sux = [0.25, 3.0] if args.quick else [0.25, 1.0, 2.0, 3.0]
    acts, setting_rows = (ODE_ACTS, ode_rows) if args.ode else (ACTS, one_step_rows)
    rows = []
    t0 = time.time()
    for name in acts:
        for head in ("linear", "phi"):
            for s in swT:
                for u in sux:
                    for r in setting_rows(name, head, s, u):
                        rows.append(dict(activation=name, head=head, sigma_w_T=s, input=u, **r))
                    jax.clear_caches()  # compilations per setting: keep memory flat over the map
                    r = rows[-1]
                    print(
                        f"{name:9s} {head:6s} sw*T={s:<5g} su|x|/sqrt(d)={u:<5g} ntk true {r['true_rel']:.1e} "
                        f"estimate {r['estimate_rel']:.1e}" + (" (warned)" if r["warned"] else ""),
                        flush=True,
                    )
    worst = max(r["true_rel"] / max(r["estimate_rel"], 1e-300) for r in rows)
    seconds = time.time() - t0
    print(f"largest true error / estimate: {worst:.2e}   ({seconds:.0f} s)")
    if args.ode:
        print(
            f"largest true error {max(r['true_rel'] for r in rows):.2e}; largest change of the reference "
            f"without its deepest level {max(r['reference_change'] for r in rows):.2e}; kernel_fn's own time "
            f"{sum(r['seconds'] for r in rows) / 2:.0f} s of the {seconds:.0f} s"
        )
    spread = ratio_summary(rows)
    print(
        f"estimate / true error over the {spread['pairs']} pairs with a true error above {FLOOR:.0e} "
        f"(the rest are at rounding level): min {spread['min']:.3g}, 10% {spread['q10']:.3g}, "
        f"median {spread['median']:.3g}, 90% {spread['q90']:.3g}, max {spread['max']:.3g}; "
        f"{spread['within_1_100']:.0%} in [1, 100]"
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        out = {"rows": rows, "largest_ratio_true_to_estimate": worst, "estimate_over_true": spread, "seconds": seconds}
        json.dump(out, f, indent=1)
    plot(rows, acts, swT, sux, args.figure)
    plot_ratio(rows, args.figure.replace(".png", "_ratio.png"))


FLOOR = 1e-14  # true relative errors below this are rounding (~50 ulp), not the method's error


def ratio_summary(rows):
    """Quantiles of estimate / true error over the pairs whose true error is above rounding."""
    r = np.array([x["estimate_rel"] / x["true_rel"] for x in rows if x["true_rel"] > FLOOR])
    if r.size == 0:
        return {"pairs": 0}
    q = np.quantile(r, [0.0, 0.1, 0.5, 0.9, 1.0])
    keys = ("min", "q10", "median", "q90", "max")
    out = {"pairs": int(r.size), **{k: float(v) for k, v in zip(keys, q)}}
    out["within_1_100"] = float(np.mean((r >= 1) & (r <= 100)))
    out["log10_histogram"] = np.histogram(np.log10(r), bins=np.arange(-1, 7))[0].tolist()  # decades 0.1 .. 1e6
    return out


def plot(rows, acts, swT, sux, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, len(acts), figsize=(2.3 * max(len(acts), 3), 5.2), sharey=True, squeeze=False, constrained_layout=True
    )
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(sux)))
    for j, name in enumerate(acts):
        for i, head in enumerate(("linear", "phi")):
            ax = axes[i, j]
            for c, u in zip(colors, sux):
                sel = [
                    r
                    for r in rows
                    if r["activation"] == name and r["head"] == head and r["input"] == u and r["kernel"] == "ntk"
                ]
                xs = [r["sigma_w_T"] for r in sel]
                ax.semilogy(
                    xs,
                    [max(r["true_rel"], 1e-17) for r in sel],
                    "o-",
                    color=c,
                    ms=3,
                    label=rf"$\sigma_u|x|/\sqrt{{d}}={u:g}$",
                )
                ax.semilogy(xs, [r["estimate_rel"] for r in sel], "x--", color=c, ms=4)
            ax.set_title(f"{name}, head {head}", fontsize=9)
            ax.set_ylim(1e-17, 1e-6)
            if i == 1:
                ax.set_xlabel(r"$\sigma_w T$")
            if j == 0:
                ax.set_ylabel("relative error of the NTK")
    handles, labels = axes[0, 0].get_legend_handles_labels()  # the same input norms in every panel
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.suptitle("true error (o, solid; floored at 1e-17) and reported estimate (x, dashed)", fontsize=10)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print("wrote", path)


def plot_ratio(rows, path):
    """Histogram of log10(estimate / true error) over the pairs above rounding, with 1 and 100 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [x for x in rows if x["true_rel"] > FLOOR]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), constrained_layout=True)
    for kind, color in (("nngp", "tab:blue"), ("ntk", "tab:orange")):
        r = [np.log10(x["estimate_rel"] / x["true_rel"]) for x in sel if x["kernel"] == kind]
        ax.hist(r, bins=np.arange(-1, 7.01, 0.25), color=color, alpha=0.6, label=f"{kind} ({len(r)} pairs)")
    for v, text in ((0, "estimate = true error"), (2, "estimate = 100 x true error")):
        ax.axvline(v, color="grey", lw=1, ls="--")
        ax.text(v - 0.12, ax.get_ylim()[1] * 0.97, text, color="grey", fontsize=7, rotation=90, ha="right", va="top")
    ax.set_xlabel(r"$\log_{10}$(reported estimate / true error)")
    ax.set_ylabel("(setting, kernel) pairs")
    ax.set_title(f"accuracy map: pairs with true error above {FLOOR:.0e}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    main()
