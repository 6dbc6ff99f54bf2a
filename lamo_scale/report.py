"""Results across the runs of an experiment: a table and one plot of every evaluation curve.

Per run: name, ``recipe`` tag, ``data.data_ratio`` and ``train.seed`` params, the run's
status, its score by the one rule (:mod:`lamo_scale.scoring`: the best target's mean over the
last 20 % of evaluated checkpoints) with that target, and, for reference, its best single
checkpoint's score (what the registry's ``best`` alias points at; not a result to report).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from lamo_scale.rollout.plots import eval_curves, plot_curves

from lamo_scale.scoring import run_score

COLUMNS = ["run", "recipe", "data_ratio", "seed", "status", "best_target", "score", "best_checkpoint_score"]


def run_row(run, curves: dict[str, list[tuple[int, float]]]) -> dict:
    """One table row for an MLflow run and its per-target curves."""
    params, tags = run.data.params, run.data.tags
    row = {"run": run.info.run_name, "recipe": tags.get("recipe", ""), "data_ratio": params.get("data.data_ratio", ""),
           "seed": params.get("train.seed", ""), "status": run.info.status, "best_target": "",
           "score": math.nan, "best_checkpoint_score": math.nan}
    if any(curves.values()):
        score, target = run_score(curves)
        row.update(best_target=target, score=score,
                   best_checkpoint_score=max(v for pts in curves.values() for _, v in pts))
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
