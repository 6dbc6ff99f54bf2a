"""The one score rule, the paper's, used by every report and by the best-checkpoint registry.

- A *checkpoint's* score is its D4RL-normalised score at its best target return
  (``eval/best_normalized_score``; the registry's "best checkpoint" is the one with the highest).
- A *run's* score (what a results table reports, one value per seed): for every target return,
  the mean normalised score over the last 20 % of the evaluated checkpoints (at least one);
  the run's score is the best of those, and that target is the run's best target. Averaging
  the end of training rather than taking the best checkpoint does not pick checkpoints after
  seeing their scores.
- Only runs that FINISHED count as seeds: a failed or still-running run's curve ends early.
"""
from __future__ import annotations

import math

LAST_FRACTION = 0.2
RULE = ("the paper's rule: for each target return, the mean normalised score over the last 20 % of the "
        "evaluated checkpoints; the run's score is the best of those over targets; only FINISHED runs count")


def last_fraction_mean(points: list[tuple[int, float]], fraction: float = LAST_FRACTION) -> float:
    """Mean value over the last ``fraction`` of ``(step, value)`` points (at least one point)."""
    if not points:
        return math.nan
    n = max(1, math.ceil(len(points) * fraction))
    tail = sorted(points)[-n:]
    return sum(v for _, v in tail) / n


def checkpoint_score(per_target: dict) -> float:
    """A checkpoint's score: the best of its per-target normalised scores (NaN if none)."""
    values = [v for v in per_target.values() if v is not None and not math.isnan(v)]
    return max(values) if values else math.nan


def run_score(curves: dict[str, list[tuple[int, float]]]) -> tuple[float, str]:
    """``(score, best target)`` of a run from its per-target ``(step, score)`` curves (the paper's rule)."""
    scored = [(last_fraction_mean(points), target) for target, points in curves.items() if points]
    return max(scored) if scored else (math.nan, "")


def counts_as_seed(run) -> bool:
    """Whether an MLflow run may stand as a seed in a results table: it FINISHED."""
    return run.info.status == "FINISHED"
