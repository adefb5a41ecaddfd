"""Did a model learn? Its validation and cross-validated metrics against chance (0.5 AUROC or c-index).

A fold's model has learned when the epoch that was kept scores above chance on the fold's validation cases
(folds without validation cases, or whose metric is undefined there, are not judged); a run has learned when
every judged fold has and its cross-validated metric (the mean over the test folds) is above chance too. A
model that has not learned is reported as such (``results.json`` and the log), so that a c-index or AUROC
near 0.5 is never read as a result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from ..messages import listing

__all__ = ["CHANCE", "learning_report"]

logger = logging.getLogger(__name__)

CHANCE = 0.5


def learning_report(metric: str, val_metrics: Sequence[float | None], test_mean: float) -> dict:
    """``{"learned": bool, "folds": [True / False / None per fold], "message": str}`` for a run whose folds'
    kept epochs scored ``val_metrics`` on their validation cases and whose folds' mean test ``metric`` is
    ``test_mean``; logs a warning when it has not learned."""
    folds = [None if v is None or math.isnan(v) else bool(v > CHANCE) for v in val_metrics]
    failed = [k for k, ok in enumerate(folds) if ok is False]
    problems = []
    if failed:
        scores = [f"{val_metrics[k]:.3f}" for k in failed]
        problems.append(
            f"in fold(s) {listing(failed)} the kept model's validation {metric} ({listing(scores)}) does not beat "
            f"chance ({CHANCE})"
        )
    if not test_mean > CHANCE:
        problems.append(f"its cross-validated {metric} ({test_mean:.3f}) is at or below chance ({CHANCE})")
    learned = not problems
    if learned:
        judged = sum(ok is not None for ok in folds)
        message = f"the {metric} beats chance ({CHANCE}) in the test folds and in {judged} fold(s)' validation cases"
    else:
        message = "the model has not learned: " + "; ".join(problems)
        logger.warning("%s. Its metrics are no evidence of a signal; compare with --baseline", message)
    return {"learned": learned, "folds": folds, "message": message}
