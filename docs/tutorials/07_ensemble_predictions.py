# %% [markdown]
# # Infinite ensembles: predictions with uncertainty
#
# A wide network trained by gradient descent from a random initialisation behaves like its
# linearisation, so the outputs of an infinite ensemble of them are Gaussian at every training
# time: `predict.gradient_descent_mse_ensemble` gives that Gaussian's mean and covariance from the
# NTK and the NNGP (docs/theory.md section 5). Here: a 1-D regression on the circle, the
# weight-tied ResNet of depth 4 with erf, and 32 real networks of width 256 trained by the same
# steps laid over the prediction. (Experiment E13 does this at a larger scale.)

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

import ntk_ode as no
from ntk_ode.experiments.ensembles import circle_task, trained_outputs, variance_z

jax.config.update("jax_enable_x64", True)

theta_train, x_train, y_train, theta_test, x_test = circle_task(n_train=8, n_test=40, seed=0)
model, depth = no.NeuralODE("erf"), 4
kfn = no.kernel_fn(model, depth)

# a learning rate of half the stability limit of gradient descent on 1/(2N) ||f - y||^2
lam_max = np.linalg.eigvalsh(np.asarray(kfn(x_train, None, "ntk")))[-1]
eta = 0.5 * len(y_train) / lam_max
predict = no.predict.gradient_descent_mse_ensemble(kfn, x_train, y_train, learning_rate=eta, discrete=True)
steps = np.array([0, 10, 100])
pred = predict(steps, x_test, "ntk", compute_cov="diagonal")  # mean (3, 40), variances (3, 40)
posterior = predict(None, x_test, "nngp", compute_cov="diagonal")  # the Bayesian answer
print("predicted sd at the test points, by time:", np.sqrt(pred.covariance).mean(axis=1).round(3))

# %% [markdown]
# Now the real thing: 32 networks of width 256, initialised independently, trained by the same
# full-batch steps. If the prediction is right, their mean is within a few standard errors of the
# predicted mean, and their variance scores (a chi-square score) are of order 1.

# %%
keys = jax.random.split(jax.random.PRNGKey(1), 32)
apply = lambda p, x: model.apply(p, x, depth=depth)
init = lambda key: model.init(key, x_train.shape[1], 256)
out = trained_outputs(apply, init, x_train, y_train, x_test, tuple(int(s) for s in steps), eta, keys)
mean, var = out.mean(axis=0), out.var(axis=0, ddof=1)
for k, s in enumerate(steps):
    z_mean = (mean[k] - pred.mean[k]) / np.sqrt(pred.covariance[k] / len(keys))
    z_var = variance_z(var[k], pred.covariance[k], len(keys))
    print(
        f"t = {s:3d} steps: worst mean score {np.abs(z_mean).max():.1f}, worst variance score {np.abs(z_var).max():.1f}"
    )

# %%
fig, axes = plt.subplots(1, len(steps), figsize=(11, 3.2), sharey=True, layout="constrained")
for k, (ax, s) in enumerate(zip(axes, steps)):
    m, sd = pred.mean[k], np.sqrt(pred.covariance[k])
    ax.fill_between(theta_test, m - 2 * sd, m + 2 * sd, alpha=0.2, label="infinite ensemble $\\pm 2$ sd")
    ax.plot(theta_test, m, label="infinite ensemble mean")
    ax.plot(theta_test, out[:5, k].T, color="0.6", lw=0.5)
    ax.errorbar(theta_test[::3], mean[k, ::3], 2 * np.sqrt(var[k, ::3]), fmt="o", ms=3, capsize=2, label="32 trained")
    if k == len(steps) - 1:
        ax.plot(theta_test, posterior.mean, "k--", lw=0.8, label="NNGP posterior mean")
    ax.plot(theta_train, y_train, "kx", label="training points")
    ax.set(title=f"t = {s} steps", xlabel=r"angle $\theta$")
axes[0].set_ylabel("output")
axes[-1].legend(fontsize=7)
plt.show()

# %% [markdown]
# At t = 0 the band is the prior (the NNGP); as training proceeds it narrows onto the training
# points, and the trained networks' spread narrows with it. Where the predicted spread becomes very
# small (long training, near the training points) the networks keep a little more of it than
# infinite width predicts: each finite network's NTK differs from `K_inf` by `O(n^-1/2)`.
