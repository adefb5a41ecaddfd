"""Training objectives and what the model's outputs mean: classes, discrete-time hazards, Cox log-risk.

Survival outputs are turned into one risk score per case (higher = earlier event), the input of the c-index.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "HAZARDS",
    "SURVIVAL_LOSSES",
    "bin_hazard_logits",
    "cox_partial_nll",
    "discrete_time_nll",
    "event_time_bins",
    "hazards_to_risk",
    "survival_curve",
]

SURVIVAL_LOSSES = ("nll", "cox")
#: How the discrete-time model's bins share the case's features: one risk score plus an intercept per bin
#: (``proportional``), or a free logit per bin (``independent``, as in PORPOISE / MCAT).
HAZARDS = ("proportional", "independent")


def event_time_bins(times: np.ndarray, events: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges (``n_bins - 1`` of them) at quantiles of the observed event times.

    Bin ``k`` holds times in ``[edges[k-1], edges[k])``; the first bin starts at 0, the last is open.
    """
    observed = np.asarray(times, dtype=np.float64)[np.asarray(events) == 1]
    if len(observed) == 0:
        observed = np.asarray(times, dtype=np.float64)
    edges = np.quantile(observed, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.unique(edges)


def bin_hazard_logits(times: np.ndarray, events: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Log-odds of each bin's hazard in these cases (events in bin k / cases reaching it, kept within
    [0.01, 0.99]): where the discrete-time model's intercepts start, so that training moves the risk, not them."""
    bins = np.searchsorted(np.asarray(edges), np.asarray(times, dtype=np.float64), side="right")  # as in training
    events = np.asarray(events)
    reached = np.array([(bins >= k).sum() for k in range(len(edges) + 1)])
    happened = np.bincount(bins[events == 1], minlength=len(edges) + 1)
    hazard = np.clip(happened / np.maximum(reached, 1), 0.01, 0.99)
    return np.log(hazard / (1 - hazard))


def discrete_time_nll(
    logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, uncensored_weight: float = 0.0
) -> torch.Tensor:
    """Negative log-likelihood of a discrete-time hazard model, mean over cases.

    ``logits`` (B, K): hazard logits per bin, ``h_k = sigmoid(logit_k)``; ``S_k = prod_{j<=k} (1 - h_j)``.
    An event in bin k contributes ``-log S_{k-1} - log h_k``; a case censored in bin k ``-log S_k`` (it
    survived bin k). ``uncensored_weight`` (``alpha`` of PORPOISE / MCAT): the loss is
    ``(1 - alpha) * all terms + alpha * the events' terms``, so a censored case counts ``1 - alpha``.
    """
    log_h = F.logsigmoid(logits)
    log_1mh = F.logsigmoid(-logits)
    log_s = torch.cumsum(log_1mh, dim=1)
    log_s_prev = torch.cat([torch.zeros_like(log_s[:, :1]), log_s[:, :-1]], dim=1)
    k = bins.long().unsqueeze(1)
    event = events.float()
    uncensored = -(log_s_prev.gather(1, k) + log_h.gather(1, k)).squeeze(1)
    censored = -log_s.gather(1, k).squeeze(1)
    return (event * uncensored + (1 - uncensored_weight) * (1 - event) * censored).mean()


def survival_curve(logits: torch.Tensor) -> torch.Tensor:
    """``S_k`` per bin (B, K) from discrete-time hazard logits."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1))


def hazards_to_risk(logits: torch.Tensor) -> torch.Tensor:
    """One risk per case: minus the sum of the survival curve (minus the expected number of bins survived)."""
    return -survival_curve(logits).sum(dim=1)


def cox_partial_nll(log_risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties) divided by the number of events.

    ``-sum_{i: event} [r_i - log sum_{j: t_j >= t_i} exp(r_j)] / n_events``; zero when no case had an event
    (the batch carries no information then).
    """
    log_risk = log_risk.reshape(-1).float()
    at_risk = times.reshape(1, -1) >= times.reshape(-1, 1)  # row i: who is still at risk at t_i
    log_denominator = torch.logsumexp(log_risk.unsqueeze(0).masked_fill(~at_risk, float("-inf")), dim=1)
    event = events.reshape(-1).float()
    n_events = event.sum()
    if n_events == 0:
        return log_risk.sum() * 0.0
    return -((log_risk - log_denominator) * event).sum() / n_events
