"""
Target-based surrogates: loss against gradient evaluations
==========================================================

When a loss's gradient is the expensive part and the model is cheap, target-based
surrogates (Lavington et al., 2023) take one gradient in the space of the model's outputs
and then move the parameters as far as a majorizing surrogate allows. Here L2-regularized
logistic regression on the standardized breast-cancer data is minimized by

- full-batch SSO (MM with an exact least-squares inner solve), with and without Anderson
  acceleration;
- minibatch SSO (batches of 32): each minibatch's loss gradient builds the paper's
  stochastic surrogate, whose exact minimizer projects the target-space SGD step onto the
  model's outputs; and, for comparison, the surrogate of each minibatch's own loss, one
  Armijo step each (``projection="batch"``);
- scipy's L-BFGS on the same objective;
- scikit-learn's ``SGDClassifier`` (``loss="log_loss"``, same ``alpha``), one
  ``partial_fit`` pass per epoch;

and the suboptimality is plotted against the number of per-sample loss gradients, in epochs.
The right panel fits a small nonlinear model (given by its map and its vector-Jacobian
product) with the same solver.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

from mmopt import ConvergenceWarning
from mmopt.mm import SSO, LinearTargetModel, TargetModel, TargetSurrogateProblem

X, y = load_breast_cancer(return_X_y=True)
X = StandardScaler().fit_transform(X)
y = y.astype(float)
n, alpha = len(y), 1e-3
problem = TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=alpha)


def solve(target_problem, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = SSO(**options).solve(target_problem)
    return res.history["n_target_gradients"] / target_problem.n_samples, res.history["fun"]


curves = {
    "SSO, Anderson": solve(problem, tol=1e-12, max_iter=300),
    "SSO, plain MM": solve(problem, anderson=False, tol=1e-12, max_iter=300),
    "SSO minibatch 32": solve(problem, batch_size=32, max_iter=30, random_state=0),
    "minibatch-only surrogates, 32": solve(
        TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=alpha, n_inner=1),
        batch_size=32, max_iter=30, random_state=0, projection="batch"),
}

# %%
# L-BFGS and SGD on the same objective
# ------------------------------------
values = []


def fun_and_grad(theta):
    Z = problem.model.predict(theta, X)
    values.append(problem.objective(theta))
    grad = problem.model.vjp(theta, X, problem.loss.gradient(Z) / n)
    return values[-1], grad + alpha * problem.mask * theta


minimize(fun_and_grad, problem.initial_point(), jac=True, method="L-BFGS-B",
         options={"maxfun": 300, "gtol": 1e-12, "ftol": 0.0})
curves["scipy L-BFGS"] = (np.arange(1.0, len(values) + 1), np.array(values))

sgd = SGDClassifier(loss="log_loss", alpha=alpha, random_state=0)
sgd_values = []
for _ in range(30):
    sgd.partial_fit(X, y, classes=np.array([0.0, 1.0]))
    sgd_values.append(problem.objective(np.r_[sgd.coef_.ravel(), sgd.intercept_]))
curves["sklearn SGD"] = (np.arange(1.0, 31), np.array(sgd_values))

best = min(v.min() for _, v in curves.values())

# %%
# A nonlinear model through its vector-Jacobian product
# -----------------------------------------------------
# z = tanh(X A) b with 4 hidden units, on two standardized features, squared loss.
rng = np.random.default_rng(0)
Xs = X[:, :2]
ys = np.tanh(Xs @ [1.0, -1.0]) + 0.1 * rng.standard_normal(n)
shape = (2, 4)


def predict(theta, inputs):
    return np.tanh(inputs @ theta[:8].reshape(shape)) @ theta[8:]


def vjp(theta, inputs, V):
    A, b = theta[:8].reshape(shape), theta[8:]
    H = np.tanh(inputs @ A)
    grad_A = inputs.T @ ((1.0 - H**2) * np.outer(V[:, 0], b))
    return np.concatenate([grad_A.ravel(), H.T @ V[:, 0]])


network = TargetModel(predict, vjp, 0.5 * rng.standard_normal(12))
nonlinear = {
    f"{m} inner steps": solve(
        TargetSurrogateProblem(network, "squared", Xs, ys, alpha=1e-4, n_inner=m),
        tol=1e-10, max_iter=300, anderson=False)
    for m in (1, 5, 20)
}
# The reference minimum: L-BFGS polished from the best point any run reached.
fitted = TargetSurrogateProblem(network, "squared", Xs, ys, alpha=1e-4, n_inner=20)
start = SSO(tol=1e-10, max_iter=300, anderson=False)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    theta_best = start.solve(fitted).x


def network_fun_and_grad(theta):
    Z = predict(theta, Xs)[:, None]
    grad = vjp(theta, Xs, (Z - ys[:, None]) / n) + 1e-4 * theta
    return fitted.objective(theta), grad


floor = minimize(network_fun_and_grad, theta_best, jac=True, method="L-BFGS-B",
                 options={"gtol": 1e-12, "ftol": 0.0}).fun
floor = min(floor, min(v.min() for _, v in nonlinear.values()))

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for label, (epochs, fun) in curves.items():
    left.semilogy(epochs, np.maximum(fun - best, 1e-16) / best, label=label)
left.set(xlabel="per-sample loss gradients / n (epochs)", ylabel="(f - f*) / f*",
         title="logistic regression, breast cancer", xlim=(0, 100))
left.legend()
for label, (epochs, fun) in nonlinear.items():
    right.semilogy(epochs, np.maximum(fun - floor, 1e-16), label=label)
right.set(xlabel="per-sample loss gradients / n (epochs)", ylabel="f - f* (L-BFGS polished)",
          title="tanh network (VJP), squared loss")
right.legend()
fig.tight_layout()
plt.show()
