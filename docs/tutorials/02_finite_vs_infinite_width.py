# %% [markdown]
# # Finite versus infinite width
#
# The NTK of one network at width `n` fluctuates around `K_inf` by about `n^-1/2`
# (Theorem 1). `width_sweep` measures the relative distance over seeds; here 3 seeds per width.

# %%
import jax
import matplotlib.pyplot as plt

import ntk_ode as no
from ntk_ode.data import sphere
from ntk_ode.experiments.common import seed_error

jax.config.update("jax_enable_x64", True)

x = sphere(4, 6, seed=0)
model = no.NeuralODE("tanh", T=1.0)
r = no.width_sweep(model, x, [64, 128, 256], 3, depth=4, progress=False)
print(f"fitted slope {r['slope']:+.2f} (theory -1/2)")

# %%
fig, ax = plt.subplots(figsize=(4.5, 3.4), layout="constrained")
ax.errorbar(r["widths"], r["mean_dist"], yerr=seed_error(r["dist"]), fmt="o-", capsize=3, label="mean $\\pm$ s.e.")
ax.loglog(r["widths"], r["mean_dist"][0] * (r["widths"] / r["widths"][0]) ** -0.5, "k--", lw=0.8, label="slope -1/2")
ax.set(xscale="log", yscale="log", xlabel="width $n$", ylabel=r"$\|\Theta_n - K^L_\infty\|_F / \|K^L_\infty\|_F$")
ax.legend()
plt.show()
