"""The scikit-learn estimator of rigid registration."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from mmopt._core.params import ParamsValidationMixin, options_of
from mmopt._core.registry import get_solver
from mmopt._core.validation import check_array
from mmopt.registration.icp import ICP
from mmopt.registration.problem import RegistrationProblem, check_point_cloud

__all__ = ["ICPRegistration"]


class ICPRegistration(ParamsValidationMixin, TransformerMixin, BaseEstimator):
    """Rigid registration as an estimator: ``fit(X=source, y=target)``, ``transform(X)``.

    Learns the transform ``T`` with ``y ~= T X`` by :class:`ICP`; :meth:`transform` applies
    it to any (k, 3) points. The options are those of :class:`ICP`.

    Parameters
    ----------
    metric, loss, schedule, init, similarity, anderson, tol, max_iter
        See :class:`ICP`.
    **solver_options
        Not accepted: use :class:`ICP` directly for the other options.

    Attributes
    ----------
    transform_matrix_ : ndarray of shape (4, 4)
        The fitted ``T``.
    result_ : mmopt.Result
        The full result of the solve (diagnostics, history).
    n_iter_ : int
        Iterations done.

    Examples
    --------
    >>> from mmopt.registration import ICPRegistration
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)) * [3.0, 2.0, 1.0]
    >>> reg = ICPRegistration(loss="l2").fit(X, X + [0.5, 0.0, 0.0])
    >>> np.round(reg.transform_matrix_[:3, 3], 4) + 0.0
    array([0.5, 0. , 0. ])
    >>> np.round(reg.transform(np.zeros((1, 3))), 4) + 0.0
    array([[0.5, 0. , 0. ]])
    """

    # ICP's options, passed on to it.
    _options = options_of(ICP, "metric", "loss", "schedule", "init", "similarity", "anderson",
                          "tol", "max_iter")

    def fit(self, X, y, *, target_normals=None):
        """Register the source ``X`` (n, 3) onto the target ``y`` (m, 3)."""
        if y is None:
            raise ValueError("y (the target cloud) is required: fit(X=source, y=target).")
        # Checked under the estimator's argument names (the problem calls them source/target).
        X = check_point_cloud(X, "X")
        y = check_point_cloud(y, "y")
        problem = RegistrationProblem(X, y, target_normals=target_normals)
        solver = get_solver(ICP, problem, **self.get_params())
        self.result_ = solver.solve(problem)
        self.transform_matrix_ = np.array(self.result_.transform, copy=True)
        self.n_iter_ = self.result_.nit
        self.n_features_in_ = 3
        return self

    def transform(self, X):
        """Apply the fitted transform to the points ``X`` (k, 3)."""
        check_is_fitted(self, "transform_matrix_")
        X = check_array(X, "X", ndim=2)
        if X.shape[1] != 3:
            raise ValueError(f"X must have shape (k, 3), got {X.shape}.")
        T = self.transform_matrix_
        return X @ T[:3, :3].T + T[:3, 3]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
