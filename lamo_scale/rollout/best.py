"""Mark a run's best checkpoint (tags + MLflow model registry), converging under concurrency.

Best = the checkpoint with the highest ``eval/best_normalized_score`` (its normalised score
at its best target return, the paper's rule); ties go to the earlier step. Workers update
the marks after committing results. Tag writes are last-writer-wins, so each worker loops
"compute from metrics → compare with the marks → write" until they agree: the last writer
always re-checks after writing, after every result it could have missed was committed, so
the marks converge to the best of all committed results.

Registry: model ``lamo-<experiment>-<run name>``; one version per best checkpoint, with
source = the run's artifact URI of ``checkpoints/step-N``, tags ``step`` /
``normalized_score``, and the alias ``best`` pointing at the current best. Two workers may
both create a version for the same step; each then deletes all but the lowest-numbered one.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

from lamo_scale.rollout.evaluate import BEST_METRIC
from lamo_scale.tracking import metric_history

log = logging.getLogger(__name__)

BEST_STEP_TAG = "best_checkpoint_step"
BEST_SCORE_TAG = "best_normalized_score"
ALIAS = "best"


def best_point(client, run_id: str) -> Optional[tuple[int, float]]:
    """``(step, score)`` of the run's best evaluated checkpoint (None before any summary); a step
    logged twice counts with its last-logged score."""
    points = metric_history(client, run_id, BEST_METRIC)
    if not points:
        return None
    best = max(points, key=lambda m: (m.value, -m.step))
    return int(best.step), float(best.value)


def model_name(experiment: str, run_name: str) -> str:
    """Registered-model name of a run's best checkpoint."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"lamo-{experiment}-{run_name}")


def _marked(client, run_id: str, name: Optional[str]) -> tuple[Optional[str], Optional[str], Optional[str]]:
    tags = client.get_run(run_id).data.tags
    alias_step = None
    if name is not None:
        try:
            alias_step = client.get_model_version_by_alias(name, ALIAS).tags.get("step")
        except Exception:
            alias_step = None
    return tags.get(BEST_STEP_TAG), tags.get(BEST_SCORE_TAG), alias_step


def register(client, name: str, run_id: str, step: int, score: float) -> str:
    """Register checkpoint ``step`` as a version of ``name`` (once) and point the alias at it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="LaMo best checkpoints (alias 'best' = current best)")
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise

    def same(versions):
        return sorted((v for v in versions if v.run_id == run_id and v.tags.get("step") == str(step)),
                      key=lambda v: int(v.version))

    found = same(client.search_model_versions(f"name='{name}'"))
    if not found:
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/checkpoints/step-{step:08d}"
        client.create_model_version(name, source, run_id=run_id,
                                    tags={"step": str(step), "normalized_score": repr(score)},
                                    description=f"checkpoint step {step}: normalised score {score:.2f}")
        found = same(client.search_model_versions(f"name='{name}'"))
        for dup in found[1:]:
            client.delete_model_version(name, dup.version)
    client.set_registered_model_alias(name, ALIAS, found[0].version)
    return found[0].version


def update_best(client, run_id: str, name: Optional[str], attempts: int = 5) -> Optional[tuple[int, float]]:
    """Make the run's best-checkpoint tags (and registry alias, if ``name``) match its metrics."""
    from mlflow.entities import RunTag

    for _ in range(attempts):
        best = best_point(client, run_id)
        if best is None:
            return None
        step, score = best
        if _marked(client, run_id, name) == (str(step), repr(score), str(step) if name else None):
            return best
        client.log_batch(run_id, tags=[RunTag(BEST_STEP_TAG, str(step)), RunTag(BEST_SCORE_TAG, repr(score))])
        if name is not None:
            register(client, name, run_id, step, score)
        log.info("run %s: best checkpoint is step %d (normalised score %.2f)", run_id, step, score)
    return best_point(client, run_id)
