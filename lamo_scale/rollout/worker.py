"""Rollout workers: evaluate checkpoints beside training, each (checkpoint, target) exactly once.

    lamo-scale rollout --tracking-uri http://127.0.0.1:5000 --experiment quickstart --workers 2 --watch

Each worker process repeatedly lists the runs (one run, or every run of an experiment), reads
their checkpoint artifacts and finished jobs (:mod:`lamo_scale.rollout.jobs`), and for each
open job: fetches the checkpoint (the trainer's local copy, or a download into the cache),
claims the job (:mod:`lamo_scale.rollout.claims` explains why claims hold under races and
worker deaths), evaluates ONE target with batched acting while a heartbeat renews the
lease, and commits the ``eval/<target>/*`` metrics at the checkpoint's step together with the
done marker. After each round it updates the run's best checkpoint
(:mod:`lamo_scale.rollout.best`) and its ``plots/eval_curve.png``. Without ``--watch`` it
exits when nothing is left to claim; with it, when every run has ended and every job is done.

Test hook: ``LAMO_ROLLOUT_EVAL_DELAY_S`` sleeps that long inside each evaluation (while the
lease is held, before the commit), so tests can kill a worker mid-job.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lamo_scale.rollout import jobs as jobs_mod
from lamo_scale.rollout.claims import Heartbeat, JobClaim, new_owner_id

log = logging.getLogger(__name__)

DELAY_ENV = "LAMO_ROLLOUT_EVAL_DELAY_S"


@dataclass
class WorkerOptions:
    """What a worker evaluates, where it logs, and its timing."""

    tracking_uri: str
    experiment: Optional[str] = None
    run_id: Optional[str] = None
    watch: bool = False
    device: str = "cpu"
    episodes: Optional[int] = None
    num_envs: Optional[int] = None
    targets: Optional[list[float]] = None
    seed: Optional[int] = None
    poll_s: float = 10.0
    lease_s: float = 60.0
    settle_s: float = 1.0
    cache_dir: str = str(Path.home() / ".cache" / "lamo_scale" / "checkpoints")
    threads: int = 1
    register: bool = True
    plot: bool = True


@dataclass
class WorkerStats:
    """What one worker did."""

    owner: int
    evaluated: list = field(default_factory=list)
    rounds: int = 0


def evaluate_job(checkpoint, target: float, opts: WorkerOptions, cache=None) -> dict[str, float]:
    """Roll ``checkpoint`` out at one target return; its ``eval/<target>/*`` metrics (nothing logged).

    ``cache`` (a :class:`~lamo_scale.rollout.evaluate.PolicyCache`): the worker's one built
    backbone, reused across checkpoints and targets.
    """
    from lamo_scale.rollout.evaluate import eval_metrics, evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, episodes=opts.episodes, num_envs=opts.num_envs,
                                 target_returns=[target], seed=opts.seed, device=opts.device,
                                 log_to_mlflow=False, progress=False, cache=cache)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    return eval_metrics(report.summaries)


def summary_metrics(client, run: jobs_mod.RunJobs, step: int) -> dict[str, float]:
    """``eval/best_normalized_score`` of checkpoint ``step``: its score at its best target."""
    from lamo_scale.rollout.evaluate import BEST_METRIC, normalized_key

    from lamo_scale.scoring import checkpoint_score
    from lamo_scale.tracking import metric_history

    scores = {t: m.value for t in run.targets for m in metric_history(client, run.run_id, normalized_key(t))
              if m.step == step}
    return {BEST_METRIC: checkpoint_score(scores)} if scores else {}


def _claim(client, run: jobs_mod.RunJobs, step: int, target: str, owner: int, opts: WorkerOptions) -> JobClaim:
    return JobClaim(client, run.run_id, step, target, owner, opts.lease_s, opts.settle_s)


def do_job(client, run: jobs_mod.RunJobs, step: int, target: str, owner: int, opts: WorkerOptions,
           cache=None) -> bool:
    """Claim, evaluate and commit one job; False if it was taken, not ready, or the lease was lost."""
    claim = _claim(client, run, step, target, owner, opts)
    if not claim.available():
        return False
    if target == jobs_mod.SUMMARY:
        return claim.try_claim() and claim.commit(summary_metrics(client, run, step))
    checkpoint = jobs_mod.fetch_checkpoint(client, run, step, Path(opts.cache_dir))
    if checkpoint is None or not claim.try_claim():
        return False
    log.info("worker %x: evaluating run %s step %d target %s", owner, run.run_name, step, target)
    with Heartbeat(claim):
        metrics = evaluate_job(checkpoint, run.targets[target], opts, cache)
    return claim.commit(metrics)


def finish_round(client, run: jobs_mod.RunJobs, experiment: str, opts: WorkerOptions) -> None:
    """After new results in ``run``: update its best-checkpoint marks and its evaluation plot."""
    from lamo_scale.rollout.best import model_name, update_best
    from lamo_scale.rollout.plots import log_eval_plot

    try:
        update_best(client, run.run_id, model_name(experiment, run.run_name) if opts.register else None)
        if opts.plot:
            log_eval_plot(client, run.run_id, f"{experiment} / {run.run_name}")
    except Exception as err:  # marks and plots are redone next round
        log.warning("could not update best checkpoint / plot of run %s: %s", run.run_id, err)


def _experiment_name(client, run) -> str:
    return client.get_experiment(run.info.experiment_id).name


def run_worker(opts: WorkerOptions) -> WorkerStats:
    """One worker's loop (see the module docstring); returns what it evaluated."""
    import mlflow

    if opts.threads > 0:
        import torch

        torch.set_num_threads(opts.threads)
    from lamo_scale.rollout.evaluate import PolicyCache

    client = mlflow.MlflowClient(tracking_uri=opts.tracking_uri)
    stats = WorkerStats(owner=new_owner_id())
    cache = PolicyCache()  # the backbone is loaded once per worker process
    while True:
        stats.rounds += 1
        try:
            if _round(client, stats, opts, cache):
                continue  # summaries may have become available; look again at once
            if not opts.watch:
                return stats
            current = [jobs_mod.read_jobs(client, r, opts.targets) for r in jobs_mod.list_runs(
                client, opts.experiment, opts.run_id)]
            if current and all(r.finished and r.waiting() == 0 for r in current):
                return stats
        except Exception as err:  # tracking server unreachable: wait and poll again
            log.warning("round %d failed (%s: %s); retrying", stats.rounds, type(err).__name__, err)
            if not opts.watch:
                raise
        time.sleep(opts.poll_s)


def _round(client, stats: WorkerStats, opts: WorkerOptions, cache=None) -> bool:
    """One pass over every run's open jobs; True if this worker committed any."""
    progressed = False
    for mlrun in jobs_mod.list_runs(client, opts.experiment, opts.run_id):
        run = jobs_mod.read_jobs(client, mlrun, opts.targets)
        touched = False
        for step, target in run.pending():
            try:
                if do_job(client, run, step, target, stats.owner, opts, cache):
                    stats.evaluated.append((run.run_id, step, target))
                    touched = progressed = True
            except Exception as err:  # server hiccup, bad checkpoint: retried next round
                log.warning("job %s step %d target %s failed: %s", run.run_id, step, target, err)
        if touched:
            finish_round(client, jobs_mod.refresh(client, run), _experiment_name(client, mlrun), opts)
    return progressed


def _worker_entry(opts: WorkerOptions) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    for noisy in ("httpx", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stats = run_worker(opts)
    log.info("worker %x done: %d jobs in %d rounds", stats.owner, len(stats.evaluated), stats.rounds)


def run_workers(opts: WorkerOptions, workers: int) -> int:
    """Start ``workers`` worker processes (spawned, 1 torch thread each); 0 if all exited cleanly."""
    import multiprocessing as mp

    if workers <= 1:
        _worker_entry(opts)
        return 0
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(opts,), name=f"rollout-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        log.error("workers failed: %s", ", ".join(failed))
    return 1 if failed else 0
