"""Kaplan-Meier curves of the predicted high- and low-risk groups, with the log-rank p-value (scikit-survival)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..files import atomic_path

__all__ = ["logrank_p", "median_split", "plot_kaplan_meier"]

logger = logging.getLogger(__name__)


def median_split(risks: Sequence[float], groups: Sequence[int] | None = None) -> np.ndarray:
    """True for high risk: above the median risk of the case's own group (fold), since fold models' risk scales
    differ. Only predictions are used, never outcomes."""
    risks = np.asarray(risks, dtype=np.float64)
    groups = np.zeros(len(risks), dtype=int) if groups is None else np.asarray(groups)
    high = np.zeros(len(risks), dtype=bool)
    for g in np.unique(groups):
        member = groups == g
        high[member] = risks[member] > np.median(risks[member])
    return high


def logrank_p(times: Sequence[float], events: Sequence[int], high: Sequence[bool]) -> float:
    """Two-sided log-rank p-value between the high- and low-risk groups (NaN without events or with one group)."""
    from sksurv.compare import compare_survival
    from sksurv.util import Surv

    high = np.asarray(high, dtype=bool)
    if high.all() or not high.any():
        return float("nan")
    events = np.asarray(events).astype(bool)
    if not events.any():
        logger.warning("no observed event among %d cases: the log-rank p-value is NaN", len(events))
        return float("nan")
    y = Surv.from_arrays(event=events, time=np.asarray(times, dtype=np.float64))
    return float(compare_survival(y, high.astype(int))[1])


def plot_kaplan_meier(
    path: str | os.PathLike,
    times: Sequence[float],
    events: Sequence[int],
    high: Sequence[bool],
    title: str = "",
) -> float:
    """Draw both groups' Kaplan-Meier curves to a PNG at ``path`` (atomically); returns the log-rank p."""
    from matplotlib.figure import Figure
    from sksurv.nonparametric import kaplan_meier_estimator

    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events).astype(bool)
    high = np.asarray(high, dtype=bool)
    p = logrank_p(times, events, high)
    fig = Figure(figsize=(5, 4), dpi=120)
    ax = fig.subplots()
    for name, member, colour in (("low risk", ~high, "tab:blue"), ("high risk", high, "tab:red")):
        if member.any():
            t, s = kaplan_meier_estimator(events[member], times[member])
            ax.step(np.r_[0, t], np.r_[1, s], where="post", color=colour, label=f"{name} (n={member.sum()})")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title + ': ' if title else ''}log-rank p = {p:.3g}")
    ax.legend(loc="lower left")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return p
