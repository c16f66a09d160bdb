# %% [markdown]
# # Comparing activations
#
# The paper's question: how does the activation shape `lambda_0`? Smooth non-polynomial
# activations give a strictly positive definite `K_inf` (Prop 3); the quadratic does not.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

import ntk_ode as no
from ntk_ode.data import sphere

jax.config.update("jax_enable_x64", True)

x = sphere(16, 3, seed=1)
rows = {}
for act in ("softplus", "tanh", "relu", "quadratic"):
    K = np.asarray(no.kernel_fn(no.NeuralODE(act), depth=4)(x, get="ntk"))
    ev = np.linalg.eigvalsh(K)
    rows[act] = ev[0] / ev[-1]
    print(f"{act:10s} lambda_0 / lambda_max = {rows[act]:.3e}")

# %%
fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
ax.bar(list(rows), np.maximum(list(rows.values()), 1e-17))
ax.set(yscale="log", ylabel=r"$\lambda_0 / \lambda_{\max}$ of $K^L_\infty$", title="16 points on $S^2$, $L = 4$")
plt.show()
