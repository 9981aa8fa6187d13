"""
Learning the strength and smoothing of TV denoising with MAID
=============================================================

Smoothed total-variation denoising ``argmin_x 1/2 ||x - y||^2 + lam sum sqrt(|Dx|^2 + gam^2)``
has two hyperparameters. Given a clean training image, MAID learns ``(log lam, log gam)`` by
minimizing ``1/2 ||x*(theta) - clean||^2``, solving the lower level and the adjoint system
only as accurately as its a-posteriori error bound requires. HOAG's a-priori accuracy
schedules (geometric, quadratic, cubic) are run from the same start for comparison; the
x-axis counts the work (lower-level + CG iterations).

The image is a grayscale, downscaled crop of scikit-learn's sample photo ``china.jpg``.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np

from mmopt import ConvergenceWarning
from mmopt.bilevel import MAID
from mmopt.bilevel.tv import make_tv_denoising_data, tv_denoising_problem

noisy, clean = make_tv_denoising_data(size=48, noise=0.1, random_state=0)
problem = tv_denoising_problem(noisy, clean, strength=0.01, smoothing=0.1)

runs = {}
for accuracy in ("adaptive", "geometric", "quadratic", "cubic"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        runs[accuracy] = MAID(accuracy=accuracy, max_iter=60, tol=1e-5).solve(problem)

best = runs["adaptive"]
lam, gam = np.exp(best.theta)
print(f"learned strength {lam:.4f}, smoothing {gam:.4f}; loss {best.fun:.4f} "
      f"(noisy image: {0.5 * np.sum((noisy[0] - clean[0]) ** 2):.4f})")

# %%
# Noisy, denoised and clean images, and the loss against the work done.
fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
denoised = best.x_lower[0].reshape(clean[0].shape)
for ax, image, title in zip(
    axes[:3], (noisy[0], denoised, clean[0]), ("noisy", "MAID denoised", "clean")
):
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
for name, res in runs.items():
    label = "MAID (adaptive)" if name == "adaptive" else f"HOAG {name}"
    axes[3].semilogx(res.history["cost"], res.history["fun"], label=label)
axes[3].set_xlabel("lower-level + CG iterations")
axes[3].set_ylabel("upper-level loss")
axes[3].legend()
fig.tight_layout()
plt.show()
