"""Finding evaluation jobs in MLflow: runs, their checkpoint artifacts, targets, what is done.

A training run logs each checkpoint as the artifact directory ``checkpoints/step-N``. Its
jobs are ``(N, target)`` for every target return (``eval.target_returns`` param, or the
worker's override) plus ``(N, "best")``: the per-checkpoint summary
(``eval/best_normalized_score``), available once every target of ``N`` is done.
"""
from __future__ import annotations

import ast
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lamo_scale import checkpoint as ckpt
from lamo_scale.rollout.claims import done_key
from lamo_scale.rollout.evaluate import target_key

log = logging.getLogger(__name__)

SUMMARY = "best"
"""Target key of the per-checkpoint summary job."""

TERMINAL = ("FINISHED", "FAILED", "KILLED")
"""MLflow run statuses after which no new checkpoint appears."""


@dataclass
class RunJobs:
    """One training run as the workers see it: checkpoints, targets and finished jobs."""

    run_id: str
    run_name: str
    status: str
    tags: dict
    checkpoints: dict[int, str]
    targets: dict[str, float]
    metric_keys: set = field(default_factory=set)

    @property
    def finished(self) -> bool:
        """Whether the run ended (no new checkpoints will appear)."""
        return self.status in TERMINAL

    def is_done(self, step: int, target: str) -> bool:
        """Whether ``(step, target)`` has a completion marker (as of the last read)."""
        return done_key(step, target) in self.metric_keys

    def pending(self) -> list[tuple[int, str]]:
        """Jobs without a completion marker, oldest checkpoint first; summaries once their targets are done."""
        jobs = []
        for step in sorted(self.checkpoints):
            open_targets = [t for t in self.targets if not self.is_done(step, t)]
            jobs += [(step, t) for t in open_targets]
            if not open_targets and not self.is_done(step, SUMMARY):
                jobs.append((step, SUMMARY))
        return jobs

    def waiting(self) -> int:
        """Jobs not yet done, counting summaries whose targets are still open."""
        return sum(not self.is_done(s, t) for s in self.checkpoints for t in [*self.targets, SUMMARY])


def parse_targets(value: Optional[str]) -> list[float]:
    """Target returns from the ``eval.target_returns`` param (a Python/JSON list literal)."""
    if not value:
        return []
    parsed = ast.literal_eval(value)
    return [float(x) for x in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]


def step_of(artifact_name: str) -> Optional[int]:
    """The step of a ``step-00000012`` artifact directory name (None for other names)."""
    name = artifact_name.rsplit("/", 1)[-1]
    if not name.startswith("step-"):
        return None
    try:
        return int(name[len("step-"):])
    except ValueError:
        return None


def list_runs(client, experiment: Optional[str], run_id: Optional[str]) -> list:
    """The run ``run_id``, or every active run of ``experiment`` (empty if it does not exist yet)."""
    if run_id:
        return [client.get_run(run_id)]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def read_jobs(client, run, targets: Optional[list[float]] = None) -> RunJobs:
    """A run's checkpoints (artifacts listed after its status was read) and finished jobs."""
    info = run.info
    checkpoints = {}
    for f in client.list_artifacts(info.run_id, "checkpoints"):
        step = step_of(f.path)
        if f.is_dir and step is not None:
            checkpoints[step] = f.path
    values = targets or parse_targets(run.data.params.get("eval.target_returns"))
    return RunJobs(run_id=info.run_id, run_name=info.run_name, status=info.status, tags=dict(run.data.tags),
                   checkpoints=checkpoints, targets={target_key(t): float(t) for t in values},
                   metric_keys=set(run.data.metrics))


def refresh(client, jobs: RunJobs) -> RunJobs:
    """Re-read a run's status, checkpoints and finished jobs."""
    targets = list(jobs.targets.values())
    return read_jobs(client, client.get_run(jobs.run_id), targets)


def fetch_checkpoint(client, jobs: RunJobs, step: int, cache_dir: Path) -> Optional[ckpt.Checkpoint]:
    """The verified checkpoint of ``step``: the trainer's local copy if present, else downloaded
    into ``cache_dir/<run_id>/`` (None if the upload is incomplete or corrupt, to retry later)."""
    artifact = jobs.checkpoints[step]
    name = artifact.rsplit("/", 1)[-1]
    last = jobs.tags.get("last_checkpoint")
    candidates = [Path(last).parent / name] if last else []
    candidates.append(Path(cache_dir) / jobs.run_id / name)
    for path in candidates:
        if (path / ckpt.META).is_file():
            try:
                return ckpt.verify(path)
            except ckpt.CheckpointError as err:
                log.warning("local checkpoint unusable, downloading instead: %s", err)
    final = candidates[-1]
    staging = final.parent / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        client.download_artifacts(jobs.run_id, artifact, str(staging))
        checkpoint = ckpt.verify(staging / name)
    except Exception as err:  # not fully uploaded yet, or the server hiccuped
        log.warning("checkpoint %s of run %s not usable yet: %s", name, jobs.run_id, err)
        shutil.rmtree(staging, ignore_errors=True)
        return None
    try:
        os.replace(staging / name, final)
    except OSError:  # another worker on this host put it there first
        pass
    shutil.rmtree(staging, ignore_errors=True)
    return ckpt.verify(final)
