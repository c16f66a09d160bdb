# %% [markdown]
# # The kernels of a data set
#
# The infinite-width NNGP and NTK of a weight-tied Neural ODE on 32 bundled 8x8 digits, with
# their error estimates, the smallest eigenvalue `lambda_0` that sets Theorem 2's rate, and a
# check of the theorem's assumptions.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

import ntk_ode as no
from ntk_ode.data import digits
from ntk_ode.spectrum import check_assumption1

jax.config.update("jax_enable_x64", True)

x, y = digits((0, 1), n=32, seed=0)  # unit-norm rows, targets +-1
model = no.NeuralODE("softplus", T=1.0)
print(check_assumption1(model, x))

# %% [markdown]
# `get` names the kernels; a tuple returns a namedtuple of exactly those fields. With
# `with_error=True` the maximum absolute error estimate of each kernel comes too
# (docs/theory.md section 6).

# %%
k, err = no.kernel_fn(model)(x, get=("nngp", "ntk"), with_error=True)
print(f"NNGP: max |entry| {np.abs(k.nngp).max():.4f}, estimated error {err.nngp:.1e}")
print(f"NTK:  max |entry| {np.abs(k.ntk).max():.4f}, estimated error {err.ntk:.1e}")
ev = np.linalg.eigvalsh(np.asarray(k.ntk))
print(f"lambda_0 = {ev[0]:.4e}, lambda_max = {ev[-1]:.4e}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), layout="constrained")
im = axes[0].imshow(np.asarray(k.ntk), cmap="viridis")
fig.colorbar(im, ax=axes[0])
axes[0].set_title(r"$K_\infty$ on 32 digits")
axes[1].semilogy(np.arange(1, ev.size + 1), ev[::-1], "o-", ms=3)
axes[1].set(xlabel="index $i$", ylabel=r"$\lambda_i$", title="spectrum")
plt.show()
