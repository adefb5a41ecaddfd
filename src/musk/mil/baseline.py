"""The linear baseline: ridge Cox (survival) or logistic regression (classification) on mean-pooled features.

A case is one vector: the mean of its patches' features (and its report vector when reports are read),
standardised on the training cases. The regularisation strength is chosen by cross-validation inside the
training cases only (:data:`INNER_FOLDS` folds): by the c-index of the pooled out-of-fold risks for ridge Cox
(:func:`ridge_cox`: scikit-survival's ``CoxPHSurvivalAnalysis(alpha)`` objective, solved in the span of the
cases), by the log-loss of the pooled out-of-fold probabilities for logistic regression (scikit-learn's). The
fit becomes the weights of a :class:`~musk.mil.models.MILModel` with ``model="linear"``, so it is saved,
loaded and applied like every other slide-level model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import BagDataset
from .models import MILModel
from .splits import strata

__all__ = [
    "COX_ALPHAS",
    "INNER_FOLDS",
    "LOGISTIC_CS",
    "LinearFit",
    "case_vectors",
    "fit_linear",
    "linear_model",
    "ridge_cox",
]

logger = logging.getLogger(__name__)

INNER_FOLDS = 5
#: Ridge penalties tried for the Cox model (scikit-survival's ``alpha``: ``alpha / 2 * |w|^2`` added to the
#: summed partial log-likelihood of the standardised features).
COX_ALPHAS = tuple(10.0 ** np.arange(-1, 5.5, 0.5))
#: Inverse penalties tried for logistic regression (scikit-learn's ``C``).
LOGISTIC_CS = tuple(10.0 ** np.arange(-5, 2.5, 0.5))


@dataclass
class LinearFit:
    """``outputs = ((x - mean) / scale) @ coef.T + intercept``; ``coef`` (out_dim, D). ``penalty``: the chosen
    ``alpha`` (Cox) or ``C`` (logistic)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    penalty: float

    def outputs(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept


@torch.no_grad()
def case_vectors(dataset: BagDataset, indices: Sequence[int]) -> np.ndarray:
    """One row per case: the mean of its patch features, then its report vector (when the dataset has them)."""
    rows = []
    for i in indices:
        item = dataset[int(i)]
        parts = [p.reshape(-1) if p.ndim == 1 else p.mean(0) for p in (item["features"], item["text"]) if p is not None]
        rows.append(torch.cat([p.float() for p in parts]).numpy())
    return np.stack(rows).astype(np.float64)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _risk_set_softmax(eta: np.ndarray, at_risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event (row of ``at_risk``): the softmax of ``eta`` over its risk set and the log of its sum of exps."""
    masked = np.where(at_risk, eta[None, :], -np.inf)
    top = masked.max(1, keepdims=True)
    w = np.exp(masked - top)
    total = w.sum(1, keepdims=True)
    return w / total, (top + np.log(total))[:, 0]


def _cox_newton(z: np.ndarray, times: np.ndarray, events: np.ndarray, alpha: float, steps: int = 100) -> np.ndarray:
    """Coefficients ``g`` minimising the summed negative Cox partial log-likelihood (Breslow ties) of ``z @ g``
    plus ``alpha / 2 * |g|^2``, by Newton steps halved until the objective decreases."""
    observed = events == 1
    at_risk = times[None, :] >= times[observed][:, None]  # row: an event's risk set

    def objective(coef: np.ndarray) -> float:
        eta = z @ coef
        return float(_risk_set_softmax(eta, at_risk)[1].sum() - eta[observed].sum() + alpha / 2 * coef @ coef)

    g = np.zeros(z.shape[1])
    value = objective(g)
    for _ in range(steps):
        w, _ = _risk_set_softmax(z @ g, at_risk)
        grad_eta = w.sum(0) - observed
        hess_eta = np.diag(w.sum(0)) - w.T @ w
        step = np.linalg.solve(z.T @ hess_eta @ z + alpha * np.eye(len(g)), z.T @ grad_eta + alpha * g)
        for _ in range(30):
            candidate = objective(g - step)
            if candidate <= value:
                break
            step /= 2
        else:
            break
        g, change, value = g - step, value - candidate, candidate
        if change < 1e-10 * (1 + abs(value)):
            break
    return g


def _span(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z, basis)`` with ``x = z @ basis``, ``basis`` (r, D) orthonormal rows spanning the cases (r <= n): ridge
    coefficients lie in that span, so ``w = basis.T @ g`` is fitted on ``z`` (n, r) instead of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    values, vectors = np.linalg.eigh(x @ x.T)  # the cases' Gram matrix: n x n, whatever D is
    keep = values > max(values.max(initial=0.0), 1e-300) * 1e-10
    s = np.sqrt(values[keep])
    return vectors[:, keep] * s, (vectors[:, keep] / s).T @ x


def ridge_cox(x: np.ndarray, times: np.ndarray, events: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge Cox coefficients ``w`` (D,): minimise the summed negative partial log-likelihood (Breslow ties) of
    ``x @ w`` plus ``alpha / 2 * |w|^2`` (scikit-survival's ``CoxPHSurvivalAnalysis(alpha)``). Solved in the
    span of the cases, so D in the thousands costs no more than n."""
    z, basis = _span(x)
    return basis.T @ _cox_newton(z, np.asarray(times, np.float64), np.asarray(events, np.int64), alpha)


def _choose_alpha(x: np.ndarray, times: np.ndarray, events: np.ndarray, seed: int) -> float:
    """The ridge penalty with the best c-index of the out-of-fold risks pooled over the inner folds."""
    from sklearn.model_selection import StratifiedKFold
    from sksurv.metrics import concordance_index_censored

    n_inner = min(INNER_FOLDS, int(np.bincount(events, minlength=2).min()))
    if n_inner < 2:
        return float(np.median(COX_ALPHAS))
    risks = np.zeros((len(COX_ALPHAS), len(x)))
    for fit, held in StratifiedKFold(n_inner, shuffle=True, random_state=seed).split(x, events):
        mean, scale = _standardise(x[fit])
        z, basis = _span((x[fit] - mean) / scale)
        held_z = ((x[held] - mean) / scale) @ basis.T
        for i, alpha in enumerate(COX_ALPHAS):
            risks[i, held] = held_z @ _cox_newton(z, times[fit], events[fit], alpha)
    scores = [concordance_index_censored(events.astype(bool), times, risk)[0] for risk in risks]
    logger.debug("ridge Cox inner c-index per alpha: %s", dict(zip(COX_ALPHAS, np.round(scores, 3), strict=True)))
    best = len(scores) - 1 - int(np.argmax(scores[::-1]))  # the last maximum: the most penalised of equals
    return float(COX_ALPHAS[best])


def _fit_cox(x: np.ndarray, times: np.ndarray, events: np.ndarray, seed: int) -> LinearFit:
    alpha = _choose_alpha(x, times, events, seed)
    mean, scale = _standardise(x)
    coef = ridge_cox((x - mean) / scale, times, events, alpha)
    return LinearFit(mean, scale, coef[None, :], np.zeros(1), alpha)


def _logistic(x: np.ndarray, labels: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, tol=1e-8, max_iter=5000).fit(x, labels)


def _choose_c(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The inverse penalty with the lowest log-loss of the out-of-fold probabilities pooled over the inner folds."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    present, counts = np.unique(labels, return_counts=True)
    n_inner = min(INNER_FOLDS, int(counts.min()))
    if n_inner < 2:
        return float(np.median(LOGISTIC_CS))
    probs = np.zeros((len(LOGISTIC_CS), len(x), len(present)))
    for fit, held in StratifiedKFold(n_inner, shuffle=True, random_state=seed).split(x, labels):
        mean, scale = _standardise(x[fit])
        for i, c in enumerate(LOGISTIC_CS):
            probs[i, held] = _logistic((x[fit] - mean) / scale, labels[fit], c).predict_proba((x[held] - mean) / scale)
    losses = [log_loss(labels, p, labels=present) for p in probs]
    return float(LOGISTIC_CS[int(np.argmin(losses))])  # the first minimum: the most penalised of equals


def _fit_logistic(x: np.ndarray, labels: np.ndarray, n_classes: int, seed: int) -> LinearFit:
    c = _choose_c(x, labels, seed)
    mean, scale = _standardise(x)
    model = _logistic((x - mean) / scale, labels, c)
    present = model.classes_
    coef, intercept = np.zeros((n_classes, x.shape[1])), np.zeros(n_classes)
    if len(present) == 2:  # one logit: the second class against the first
        coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[present], intercept[present] = model.coef_, model.intercept_
        intercept[np.setdiff1d(np.arange(n_classes), present)] = -1e4  # a class absent from training: never predicted
    return LinearFit(mean, scale, coef, intercept, c)


def fit_linear(dataset: BagDataset, indices: Sequence[int], seed: int = 0) -> LinearFit:
    """The linear baseline fitted on the cases at ``indices`` (penalty chosen by cross-validation among them)."""
    cohort = dataset.cohort.subset(np.asarray(indices))
    x = case_vectors(dataset, indices)
    if cohort.task == "classification":
        fit = _fit_logistic(x, strata(cohort), len(cohort.classes), seed)
    else:
        times = np.array([c.time for c in cohort.cases], dtype=np.float64)
        fit = _fit_cox(x, times, strata(cohort), seed)
    logger.info("linear baseline: penalty %g chosen inside %d training cases", fit.penalty, len(indices))
    return fit


@torch.no_grad()
def linear_model(fit: LinearFit, feature_dim: int | None, text_dim: int | None, fusion: str = "none") -> MILModel:
    """``fit`` as a :class:`MILModel` with ``model="linear"`` (mean feature, then report vector, as in
    :func:`case_vectors`), to be saved and applied like any slide-level model."""
    model = MILModel(len(fit.coef), feature_dim, text_dim, "linear", fusion)
    model.set_linear_fit(fit)
    return model.eval()
