"""Results across the runs of an experiment: a table and one plot of every evaluation curve.

Per run: name, ``recipe`` tag, ``data.data_ratio`` and ``train.seed`` params, the best
normalised score (best checkpoint at its best target, the paper's rule), the target it was
reached at, and the mean normalised score at that target over the last 20 % of its
evaluated steps (at least one).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from lamo_scale.rollout.plots import eval_curves, plot_curves

COLUMNS = ["run", "recipe", "data_ratio", "seed", "best_target", "best_normalized_score", "last20_normalized_score"]


def last_fraction_mean(points: list[tuple[int, float]], fraction: float = 0.2) -> float:
    """Mean value over the last ``fraction`` of ``(step, value)`` points (at least one point)."""
    if not points:
        return math.nan
    n = max(1, math.ceil(len(points) * fraction))
    tail = sorted(points)[-n:]
    return sum(v for _, v in tail) / n


def run_row(run, curves: dict[str, list[tuple[int, float]]]) -> dict:
    """One table row for an MLflow run and its per-target curves."""
    params, tags = run.data.params, run.data.tags
    row = {"run": run.info.run_name, "recipe": tags.get("recipe", ""), "data_ratio": params.get("data.data_ratio", ""),
           "seed": params.get("train.seed", ""), "best_target": "", "best_normalized_score": math.nan,
           "last20_normalized_score": math.nan}
    best = max(((v, t) for t, pts in curves.items() for _, v in pts), default=None)
    if best is not None:
        row.update(best_target=best[1], best_normalized_score=best[0],
                   last20_normalized_score=last_fraction_mean(curves[best[1]]))
    return row


def experiment_report(tracking_uri: str, experiment: str, plot_path: Optional[str | Path] = None) -> list[dict]:
    """Rows for every run of ``experiment`` (sorted by run name); draws all curves to ``plot_path``."""
    import mlflow

    from lamo_scale.rollout.jobs import list_runs

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    rows, all_curves = [], {}
    for run in sorted(list_runs(client, experiment, None), key=lambda r: r.info.run_name or ""):
        curves = eval_curves(client, run.info.run_id, run.data.metrics)
        rows.append(run_row(run, curves))
        all_curves.update({f"{run.info.run_name} @ {t}": p for t, p in curves.items()})
    if plot_path is not None:
        plot_curves(all_curves, plot_path, f"{experiment}: normalised score vs step")
    return rows
