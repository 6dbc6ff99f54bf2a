"""Sweeps: a grid of training runs (recipes × variants × axes), local or as a Slurm job array.

    lamo-scale sweep --grid lamo_scale/sweeps/paper-main.yaml --parallel 1
    lamo-scale sweep --grid ... --list                      # the expanded runs and their state
    lamo-scale sweep --grid ... --slurm                     # write (and sbatch) a job array
    lamo-scale sweep --grid ... --index $SLURM_ARRAY_TASK_ID  # one run (what the array calls)

A grid file::

    experiment: lamo-main            # one MLflow experiment for every run
    tracking_uri: sqlite:///mlruns.db
    recipes: [paper/hopper-medium-r0.1-lamo]
    variants: {lamo: [], dt: [ablations/dt], cql: [baselines/cql]}  # recipe overlays, one run each
    axes: {data.data_ratio: [0.01, 0.1], train.seed: [0, 1, 2]}
    overrides: [model.backbone=smollm2-135m, train.steps=2000]
    evaluate: true                   # roll out every checkpoint after training

A variant whose overlay is a baseline recipe (``baselines/bc|cql|iql|td3bc``) runs
``python -m lamo_scale.baselines`` (``lamo-scale baseline``) on the task recipe's data, eval and
tracking sections with the same overrides and tags (the LaMo-only settings are set aside), and is
evaluated by the same :func:`evaluate_run`.

Every run gets a deterministic name (its key) and MLflow tags for each axis (``sweep``,
``sweep.key``, ``variant``, ``task``, ``axis.<key>``). A run whose MLflow run is FINISHED
(and evaluated, when ``evaluate``) is skipped, so an interrupted sweep resumes where it
stopped; an unfinished run restarts with ``train.resume=auto`` from its last checkpoint. Local
sweeps run seed-major (every cell's first seed, then every cell's second, ...), so a sweep cut
short still compares every variant.
"""
from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from lamo_scale.baselines.config import is_baseline_recipe, load_baseline_config
from lamo_scale.config import ConfigError, load_config

log = logging.getLogger(__name__)

GRID_KEYS = {"experiment", "tracking_uri", "recipes", "variants", "axes", "overrides", "evaluate", "output_dir",
             "eval_episodes"}


@dataclass
class RunSpec:
    """One run of a sweep: which recipes, which overrides, under which name and tags."""

    key: str
    recipes: list[str]
    overrides: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    wave: int = 0
    """Position of this run's value on the grid's last axis (seeds, by convention)."""
    baseline: bool = False
    """A d3rlpy baseline variant (a ``baselines/<algo>`` overlay): run by ``lamo-scale baseline``."""

    def command(self) -> list[str]:
        """The ``lamo-scale train`` (or, for baselines, ``lamo-scale baseline``) command line of this run."""
        args = [sys.executable, "-m", "lamo_scale.baselines" if self.baseline else "lamo_scale.train"]
        for recipe in self.recipes:
            args += ["--config", recipe]
        return args + self.overrides


@dataclass
class Grid:
    """A parsed grid file."""

    name: str
    experiment: str
    tracking_uri: str
    runs: list[RunSpec]
    evaluate: bool
    eval_episodes: Optional[int]


def _slug(value) -> str:
    return str(value).replace("/", "-").replace(" ", "")


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid file; every run's config is validated before anything starts."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise ConfigError(f"grid {path}: unknown keys {sorted(unknown)}; valid: {sorted(GRID_KEYS)}")
    if not data.get("recipes"):
        raise ConfigError(f"grid {path}: 'recipes' must list at least one recipe")
    name = path.stem
    experiment = data.get("experiment", name)
    uri = data.get("tracking_uri", "sqlite:///mlruns.db")
    variants = data.get("variants") or {"base": []}
    axes = data.get("axes") or {}
    common = list(data.get("overrides") or [])
    output_dir = data.get("output_dir", "runs/{experiment}/{run_name}")
    runs = []
    for recipe, (variant, overlays), values in itertools.product(
            data["recipes"], variants.items(), itertools.product(*axes.values())):
        assignment = dict(zip(axes, values))
        key = "-".join([_slug(recipe), variant] + [f"{k.split('.')[-1]}{_slug(v)}" for k, v in assignment.items()])
        tags = {"sweep": name, "sweep.key": key, "variant": variant, "task": str(recipe),
                **{f"axis.{k}": str(v) for k, v in assignment.items()}}
        overrides = common + [f"{k}={v}" for k, v in assignment.items()] + [
            f"tracking.uri={uri}", f"tracking.experiment={experiment}", f"tracking.run_name={key}",
            f"train.output_dir={output_dir}", "train.keep_checkpoints=0", "train.resume=auto",
            "tracking.tags={" + ", ".join(f"'{k}': '{v}'" for k, v in tags.items()) + "}"]
        baseline = any(is_baseline_recipe(r) for r in [recipe, *overlays])
        if baseline:  # evaluated below by evaluate_run, like every other run of the grid
            overrides.append("train.evaluate=false")
            load_baseline_config([recipe, *overlays], overrides)
        else:
            load_config([recipe, *overlays], overrides)  # refuse a bad grid before running anything
        wave = list(axes.values())[-1].index(values[-1]) if axes else 0
        runs.append(RunSpec(key, [recipe, *overlays], overrides, tags, wave, baseline))
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"grid {path}: two runs share a name; make recipes/variants/axes distinct")
    return Grid(name, experiment, uri, runs, bool(data.get("evaluate", True)), data.get("eval_episodes"))


def run_states(grid: Grid) -> dict[str, str]:
    """``key -> MLflow status`` (FINISHED / RUNNING / FAILED / KILLED / EVALUATED / missing)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=grid.tracking_uri)
    exp = client.get_experiment_by_name(grid.experiment)
    states = {r.key: "missing" for r in grid.runs}
    if exp is None:
        return states
    for run in client.search_runs([exp.experiment_id], filter_string=f"tags.sweep = '{grid.name}'",
                                  max_results=10000):
        key = run.data.tags.get("sweep.key")
        if key in states:
            state = run.info.status
            if state == "FINISHED" and run.data.tags.get("sweep.evaluated") == "true":
                state = "EVALUATED"
            states[key] = state
    return states


def is_done(grid: Grid, state: str) -> bool:
    """Whether a run in ``state`` needs nothing more."""
    return state == "EVALUATED" or (state == "FINISHED" and not grid.evaluate)


def evaluate_run(grid: Grid, key: str) -> None:
    """Roll out every checkpoint of a finished run and mark the run evaluated."""
    from mlflow import MlflowClient

    from lamo_scale import checkpoint as ckpt
    from lamo_scale.rollout.evaluate import evaluate_checkpoint

    client = MlflowClient(tracking_uri=grid.tracking_uri)
    exp = client.get_experiment_by_name(grid.experiment)
    run = client.search_runs([exp.experiment_id], filter_string=f"tags.`sweep.key` = '{key}'")[0]
    done = {m.step for m in client.get_metric_history(run.info.run_id, "eval/best_normalized_score")}
    checkpoint_dir = Path(run.data.tags["last_checkpoint"]).parent
    for path in ckpt.list_checkpoints(checkpoint_dir):
        checkpoint = ckpt.verify(path)
        if checkpoint.step not in done:
            evaluate_checkpoint(checkpoint, episodes=grid.eval_episodes, progress=False)
    client.set_tag(run.info.run_id, "sweep.evaluated", "true")


def run_one(grid: Grid, spec: RunSpec, log_dir: Optional[Path] = None) -> int:
    """Train one run in a subprocess (its output to ``log_dir/<key>.log``), then evaluate it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{spec.key}.log", "a")
    try:
        code = subprocess.run(spec.command(), env=env, stdout=out, stderr=subprocess.STDOUT if out else None).returncode
    finally:
        if out is not None:
            out.close()
    if code == 0 and grid.evaluate:
        evaluate_run(grid, spec.key)
    return code


def pending_runs(grid: Grid, states: dict[str, str]) -> list[RunSpec]:
    """The runs still to do, in the order a local sweep runs them.

    Every cell gets its first value of the last axis (its first seed) before any gets its second,
    so a sweep stopped part-way, or time-boxed, already holds complete comparisons; within a wave
    the grid's own order is kept (sorted() is stable).
    """
    return sorted((r for r in grid.runs if not is_done(grid, states[r.key])), key=lambda r: r.wave)


def run_local(grid: Grid, parallel: int = 1, log_dir: Optional[Path] = None) -> dict[str, int]:
    """Run every unfinished run, ``parallel`` at a time; returns ``key -> exit code`` of those run."""
    from concurrent.futures import ThreadPoolExecutor

    todo = pending_runs(grid, run_states(grid))
    log.info("sweep %s: %d runs, %d done, %d to run", grid.name, len(grid.runs), len(grid.runs) - len(todo), len(todo))
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        codes = dict(zip([r.key for r in todo], pool.map(lambda r: run_one(grid, r, log_dir), todo)))
    return codes


def slurm_array_script(grid_path: str | Path, grid: Grid, partition: Optional[str] = None,
                       max_parallel: int = 8) -> str:
    """An sbatch script running the grid as a job array (task ``i`` = run ``i``)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=sweep-{grid.name}", f"#SBATCH --array=0-{len(grid.runs) - 1}%{max_parallel}",
             "#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --output=slurm-sweep-%A_%a.out"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["set -euo pipefail", f"exec lamo-scale sweep --grid {Path(grid_path).resolve()} --index \"$SLURM_ARRAY_TASK_ID\""]
    return "\n".join(lines) + "\n"
