"""Rollout workers against a real ``mlflow server``: evaluation beside training, claims under
races, a worker killed mid-job, and a trainer that outlives a tracking-server outage."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import TINY

pytestmark = pytest.mark.slow

PY = sys.executable


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lamo_scale.rollout.server import LocalServer

    srv = LocalServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=server.uri)


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_args(tmp: Path, dataset: str, uri: str, experiment: str, run: str, *extra) -> list[str]:
    return TINY + [f"data.dataset={dataset}", "data.context_len=4", "data.rtg_scale=100", "loss.language_weight=0",
                   "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1", "train.threads=1",
                   f"train.output_dir={tmp}/runs/{{run_name}}", f"tracking.uri={uri}",
                   f"tracking.experiment={experiment}", f"tracking.run_name={run}", "eval.target_returns=[90, 50]",
                   "eval.episodes=2", "eval.num_envs=2", "eval.max_episode_steps=15", *extra]


def start_train(tmp, dataset, uri, experiment, run, *extra) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "lamo_scale.cli", "train", *train_args(tmp, dataset, uri, experiment, run,
                                                                               *extra)],
                            env=_env(), stdout=subprocess.PIPE, stderr=open(tmp / f"train-{run}.log", "w"))


def start_rollout(uri, log: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "lamo_scale.cli", "rollout", "--tracking-uri", uri, "--poll-s", "0.5",
                             "--settle-s", "0.3", "--cache-dir", str(log.parent / "cache"), *args],
                            env=_env(**env), stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def run_of(client, experiment: str, name: str):
    exp = client.get_experiment_by_name(experiment)
    return next(r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name)


def assert_evaluated_once(client, run_id: str, steps: list[int], targets=("90", "50")) -> list[float]:
    """Every (step, target) has exactly one done marker and one point per eval metric; returns owners."""
    owners = []
    for target in [*targets, "best"]:
        for step in steps:
            done = client.get_metric_history(run_id, f"done/{step}/{target}")
            assert len(done) == 1, (step, target, done)
            owners.append(done[0].value)
    for target in targets:
        for name in ("return_mean", "normalized_score", "episode_length", "wall_time_s"):
            hist = client.get_metric_history(run_id, f"eval/{target}/{name}")
            assert sorted(m.step for m in hist) == sorted(steps), (target, name, hist)
    best = client.get_metric_history(run_id, "eval/best_normalized_score")
    assert sorted(m.step for m in best) == sorted(steps)
    return owners


def wait(proc: subprocess.Popen, timeout: float, what: str) -> None:
    try:
        assert proc.wait(timeout) == 0, f"{what} exited with {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what} did not finish in {timeout} s")


def test_workers_watch_training_and_report(server, client, reacher_dataset, tmp_path, capsys):
    """Two watching workers evaluate every checkpoint of a run as it trains; best, registry, plot, report."""
    rollout = start_rollout(server.uri, tmp_path / "rollout.log", "--experiment", "watch", "--workers", "2",
                            "--watch", "--lease-s", "20")
    train = start_train(tmp_path, reacher_dataset, server.uri, "watch", "w1", "train.steps=6",
                        "train.checkpoint_every=2", "train.keep_checkpoints=0")
    wait(train, 180, "training")
    wait(rollout, 180, "rollout workers")
    run = run_of(client, "watch", "w1")
    assert_evaluated_once(client, run.info.run_id, [2, 4, 6])
    best = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/best_normalized_score")}
    top = max(best.values())
    tags = client.get_run(run.info.run_id).data.tags
    assert int(tags["best_checkpoint_step"]) == min(s for s, v in best.items() if v == top)
    assert float(tags["best_normalized_score"]) == pytest.approx(top)
    version = client.get_model_version_by_alias("lamo-watch-w1", "best")
    assert version.tags["step"] == tags["best_checkpoint_step"] and version.run_id == run.info.run_id
    assert "plots/eval_curve.png" in [f.path for f in client.list_artifacts(run.info.run_id, "plots")]

    from lamo_scale.cli import main

    png = tmp_path / "report.png"
    assert main(["report", "--experiment", "watch", "--tracking-uri", server.uri, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "w1" in out and "best_checkpoint_score" in out and "FINISHED" in out
    assert png.stat().st_size > 1000


def test_four_workers_race_over_twenty_jobs(server, client, reacher_dataset, tmp_path):
    """4 processes racing over 10 checkpoints x 2 targets: every job evaluated exactly once."""
    from lamo_scale.config import load_config
    from lamo_scale.train import train

    result = train(load_config(None, train_args(tmp_path, reacher_dataset, server.uri, "race", "r1",
                                                "train.steps=10", "train.checkpoint_every=1",
                                                "train.keep_checkpoints=3")))
    rollout = start_rollout(server.uri, tmp_path / "rollout.log", "--run-id", result.run_id, "--workers", "4",
                            "--lease-s", "30", "--no-registry")
    wait(rollout, 240, "rollout workers")
    owners = assert_evaluated_once(client, result.run_id, list(range(1, 11)))
    assert len(set(owners)) >= 2, "the work was not shared between workers"


def test_simultaneous_claims_have_one_winner(server, client):
    """4 threads released together on each of 20 jobs: exactly one claim wins each job."""
    import mlflow

    from lamo_scale.rollout.claims import JobClaim, new_owner_id

    rid = client.create_run(client.create_experiment("claims")).info.run_id
    barrier, lock, wins = threading.Barrier(4), threading.Lock(), Counter()

    def contender():
        own = mlflow.MlflowClient(tracking_uri=server.uri)
        owner = new_owner_id()
        for job in range(20):
            claim = JobClaim(own, rid, job, "90", owner, lease_s=60, settle_s=0.3)
            barrier.wait()
            if claim.try_claim():
                with lock:
                    wins[job] += 1

    threads = [threading.Thread(target=contender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [wins[j] for j in range(20)] == [1] * 20
    contested = sum(len({m.value for m in client.get_metric_history(rid, f"claims/{j}/90")}) > 1 for j in range(20))
    assert contested >= 1, "the threads never wrote competing claims"


def test_killed_worker_job_is_redone(server, client, reacher_dataset, tmp_path):
    """kill -9 mid-evaluation: nothing is logged as final; the lease expires and another worker redoes it."""
    from lamo_scale.config import load_config
    from lamo_scale.train import train

    result = train(load_config(None, train_args(tmp_path, reacher_dataset, server.uri, "kill", "k1",
                                                "train.steps=2", "train.checkpoint_every=2")))
    rid = result.run_id
    doomed = start_rollout(server.uri, tmp_path / "doomed.log", "--run-id", rid, "--targets", "90",
                           "--lease-s", "3", LAMO_ROLLOUT_EVAL_DELAY_S=120)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # a heartbeat proves it holds the lease inside the evaluation
        hist = client.get_metric_history(rid, "claims/2/90")
        if max(Counter(m.value for m in hist).values(), default=0) >= 2:
            break
        time.sleep(0.3)
    else:
        doomed.kill()
        pytest.fail("the first worker never held the job")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    first_owner = hist[0].value
    assert client.get_metric_history(rid, "done/2/90") == []
    assert client.get_metric_history(rid, "eval/90/return_mean") == []

    from lamo_scale.rollout.worker import WorkerOptions, run_worker

    rescuer = run_worker(WorkerOptions(tracking_uri=server.uri, run_id=rid, targets=[90.0], lease_s=3, settle_s=0.3,
                                       watch=True, poll_s=0.5, register=False, cache_dir=str(tmp_path / "cache")))
    assert (rid, 2, "90") in rescuer.evaluated
    done = client.get_metric_history(rid, "done/2/90")
    assert len(done) == 1 and done[0].value == rescuer.owner != first_owner
    assert len(client.get_metric_history(rid, "eval/90/return_mean")) == 1
    epochs = {m.step for m in client.get_metric_history(rid, "claims/2/90")}
    assert epochs == {0, 1}


def test_trainer_survives_tracking_outage(server, client, reacher_dataset, tmp_path):
    """Stop the server mid-run, restart it: training finishes and every metric point arrives."""
    steps = 120
    train = start_train(tmp_path, reacher_dataset, server.uri, "outage", "o1", f"train.steps={steps}",
                        "train.checkpoint_every=40", "train.keep_checkpoints=0")
    deadline = time.monotonic() + 120
    run = None
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3:
            run = runs[0]
            break
        time.sleep(0.2)
    assert run is not None, "training never logged"
    assert train.poll() is None, "training ended before the outage"
    server.stop()
    time.sleep(3)
    assert train.poll() is None or train.returncode == 0
    server.start()
    wait(train, 180, "training")
    rid = run.info.run_id
    hist = client.get_metric_history(rid, "train/loss")
    assert sorted(m.step for m in hist) == list(range(1, steps + 1))
    final = client.get_run(rid)
    assert final.info.status == "FINISHED"
    assert final.data.tags["last_checkpoint_step"] == str(steps)
    names = {f.path for f in client.list_artifacts(rid, "checkpoints")}
    assert names == {f"checkpoints/step-{s:08d}" for s in (40, 80, 120)}
    for name in names:
        assert {Path(f.path).name for f in client.list_artifacts(rid, name)} >= {"meta.json", "policy.safetensors"}
