"""Losses in target space for target-based surrogates: value, gradient and smoothness.

A target loss acts on the model's outputs ``z`` (n, c), one row per sample, and returns the
mean over the rows. ``smoothness`` bounds the largest eigenvalue of one row's Hessian, so
that ``eta = 1 / smoothness`` makes the target surrogate a majorizer of the loss.
"""

from __future__ import annotations

import numpy as np

from mmopt.mm.moe import log_softmax, logsumexp

__all__ = ["TARGET_LOSSES", "make_target_loss"]


class _SquaredTarget:
    """``l(z, y) = ||z - y||^2 / 2`` for real targets ``y`` of shape (n,) or (n, c)."""

    name = "squared"
    smoothness = 1.0

    def __init__(self, y: np.ndarray):
        self.Y = y.reshape(len(y), -1)
        self.n_outputs = self.Y.shape[1]

    def value(self, Z: np.ndarray, rows=None) -> float:
        Y = self.Y if rows is None else self.Y[rows]
        return 0.5 * float(np.sum((Z - Y) ** 2)) / len(Y)

    def gradient(self, Z: np.ndarray, rows=None) -> np.ndarray:
        """Per-sample gradients ``d l(z_i, y_i) / d z_i``, shape (n, c)."""
        return Z - (self.Y if rows is None else self.Y[rows])


class _LogisticTarget:
    """``l(z, y) = log(1 + e^z) - y z`` for labels ``y`` in {0, 1}; Hessian at most 1/4."""

    name = "logistic"
    smoothness = 0.25
    n_outputs = 1

    def __init__(self, y: np.ndarray):
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("y must hold the labels 0 and 1 for the logistic loss.")
        self.Y = y.reshape(-1, 1).astype(float)

    def value(self, Z: np.ndarray, rows=None) -> float:
        Y = self.Y if rows is None else self.Y[rows]
        return float(np.sum(np.logaddexp(0.0, Z) - Y * Z)) / len(Y)

    def gradient(self, Z: np.ndarray, rows=None) -> np.ndarray:
        Y = self.Y if rows is None else self.Y[rows]
        # sigma(z) from tanh: no overflow warning for large |z|.
        return 0.5 * (1.0 + np.tanh(0.5 * Z)) - Y


class _SoftmaxTarget:
    """Cross-entropy of ``softmax(z)`` against labels ``y`` in {0, ..., c - 1}.

    One row's Hessian ``diag(p) - p p^T`` has eigenvalues at most 1/2.
    """

    name = "softmax"
    smoothness = 0.5

    def __init__(self, y: np.ndarray, n_classes: int | None = None):
        labels = np.asarray(y)
        if labels.ndim != 1 or not np.all(labels == np.round(labels)) or labels.min() < 0:
            raise ValueError("y must hold integer class labels 0, 1, ... for the softmax loss.")
        labels = labels.astype(np.intp)
        self.n_outputs = int(labels.max()) + 1 if n_classes is None else int(n_classes)
        if labels.max() >= self.n_outputs:
            raise ValueError(
                f"y holds the label {labels.max()}, beyond n_classes={self.n_outputs}."
            )
        self.labels = labels

    def value(self, Z: np.ndarray, rows=None) -> float:
        labels = self.labels if rows is None else self.labels[rows]
        picked = np.take_along_axis(Z, labels[:, None], axis=1)[:, 0]
        return float(np.sum(logsumexp(Z, axis=1) - picked)) / len(labels)

    def gradient(self, Z: np.ndarray, rows=None) -> np.ndarray:
        labels = self.labels if rows is None else self.labels[rows]
        G = np.exp(log_softmax(Z, axis=1))
        G[np.arange(len(labels)), labels] -= 1.0
        return G


TARGET_LOSSES = {"squared": _SquaredTarget, "logistic": _LogisticTarget,
                 "softmax": _SoftmaxTarget}


def make_target_loss(loss: str, y: np.ndarray, n_classes: int | None = None):
    """The target loss named ``loss`` bound to the targets ``y``."""
    if not isinstance(loss, str) or loss not in TARGET_LOSSES:
        options = ", ".join(repr(name) for name in TARGET_LOSSES)
        raise ValueError(f"loss must be one of {options}; got {loss!r}.")
    if loss == "softmax":
        return _SoftmaxTarget(y, n_classes)
    if n_classes is not None:
        raise ValueError(f"n_classes applies to the softmax loss only; got loss={loss!r}.")
    return TARGET_LOSSES[loss](y)
