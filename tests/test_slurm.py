"""A real Slurm cluster on this machine (slurm/local-cluster.sh: munged, slurmctld, two slurmd
emulating nodes n1 and n2) runs slurm/train.sbatch across both nodes — one `accelerate launch`
per node, a real two-machine rendezvous over loopback — and the MLflow server and rollout
worker jobs. A preempted job (USR1 to the batch shell, as `--signal=B:USR1@120` would send it)
checkpoints, requeues itself and resumes from its checkpoint to the final step."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, TINY

VENV = Path(sys.executable).parent.parent
CLUSTER = REPO / "slurm" / "local-cluster.sh"
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
PREEMPT_STEPS = 80
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def without_sbin(path: str) -> str:
    """``path`` without the sbin directories (as in a non-login shell, a container or a CI runner)."""
    return os.pathsep.join(d for d in path.split(os.pathsep) if d.rstrip("/") not in SBIN_DIRS)


def test_cluster_script_finds_sbin_tools_without_sbin_on_path():
    """mungekey, munged, slurmctld and slurmd live in /usr/sbin: the script finds them even when the
    caller's PATH lacks the sbin dirs (it failed with "mungekey: command not found")."""
    bin_dirs = ("/usr/bin", "/bin", "/usr/local/bin")
    tools = ["mungekey", "munged", "slurmctld", "slurmd", "ldconfig", "sysctl", "useradd"]
    found = [(t, d) for t in tools for d in SBIN_DIRS
             if os.access(f"{d}/{t}", os.X_OK) and not any(os.access(f"{b}/{t}", os.X_OK) for b in bin_dirs)]
    if not found:
        pytest.skip("no tool here lives only in an sbin directory")
    tool, _ = found[0]
    path = without_sbin(os.environ["PATH"])
    proc = subprocess.run([shutil.which("bash"), "-c", f'source "{CLUSTER}" && command -v {tool}'],
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp")},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in {f"{d}/{tool}" for d in SBIN_DIRS}


def _can_run_slurm() -> str | None:
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged") and shutil.which("sbatch"):
        return None if os.geteuid() == 0 else "a local Slurm cluster runs its daemons as root (SlurmUser=root)"
    if os.geteuid() != 0:
        return "Slurm is not installed and installing it (apt-get) needs root"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _can_run_slurm()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, LOCAL_SLURM_CPUS="4", PATH=without_sbin(os.environ["PATH"]))  # the script adds them
    proc = subprocess.run([str(CLUSTER), "start", str(base)], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        subprocess.run([str(CLUSTER), "stop", str(base)], env=env, capture_output=True, timeout=60)
        pytest.fail(f"local Slurm cluster did not start:\n{proc.stdout}\n{proc.stderr}")
    yield base / "slurm.conf"
    subprocess.run([str(CLUSTER), "stop", str(base)], env=env, capture_output=True, timeout=120)


def job_env(conf: Path, **extra: str) -> dict:
    env = dict(os.environ, SLURM_CONF=str(conf), LAMO_REPO=str(REPO), VENV=str(VENV), OMP_NUM_THREADS="1",
               PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.update(extra)
    return env


def sbatch(env: dict, script: str, *args: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args, str(REPO / "slurm" / script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_info(env: dict, job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_done(env: dict, job: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while True:
        info = job_info(env, job)
        if info.get("JobState") in DONE:
            return info
        assert time.time() < deadline, f"job {job} still {info.get('JobState')} after {timeout} s"
        time.sleep(1)


def tiny_overrides(work: Path, dataset: str, steps: int, checkpoint_every: int) -> str:
    return " ".join(TINY + [
        f"data.dataset={dataset}", "data.context_len=4", "loss.language_weight=0", f"train.steps={steps}",
        "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1", f"train.checkpoint_every={checkpoint_every}",
        "train.threads=1", f"tracking.uri=sqlite:///{work}/mlflow.db", "tracking.experiment=slurm",
        "eval.target_returns=[60]", "eval.episodes=2", "eval.num_envs=2"])


def submit_train(env_base: dict, work: Path, name: str, overrides: str) -> str:
    env = dict(env_base, OVERRIDES=overrides, RECIPE="quickstart", ACCEL_CONFIG="ds_configs/accelerate_ddp.yaml",
               RUNS_DIR=str(work / "runs"), LOG_DIR=str(work / "logs"))
    return sbatch(env, "train.sbatch", f"--job-name={name}", "--nodes=2", "--ntasks-per-node=1",
                  f"--output={work}/batch-%j.out")


@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory, reacher_dataset):
    """Both training jobs run at once (two CPUs per emulated node): a plain 2-node run, and one
    that is preempted once its training loop is running."""
    work = tmp_path_factory.mktemp("slurmjobs")
    env = job_env(cluster)
    # Two jobs creating a fresh sqlite store at once race in MLflow's schema migration: make it first.
    MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db").create_experiment("slurm")
    plain = submit_train(env, work, "two-node", tiny_overrides(work, reacher_dataset, 6, 3))
    pre = submit_train(env, work, "preempt", tiny_overrides(work, reacher_dataset, PREEMPT_STEPS, 100000))
    log0 = work / "logs" / f"train-{pre}-node0.log"
    deadline = time.time() + 150
    # "run dir ..." is rank 0's last line before the loop installs its signal handlers.
    while not (log0.exists() and "run dir" in log0.read_text(errors="replace")):
        assert job_info(env, pre).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING"), \
            (work / f"batch-{pre}.out").read_text(errors="replace") if (work / f"batch-{pre}.out").exists() else pre
        assert time.time() < deadline, "the preemption job's training did not start"
        time.sleep(0.5)
    time.sleep(1.0)
    sig = subprocess.run(["scancel", "--signal=USR1", "--batch", pre], env=env, capture_output=True, text=True)
    assert sig.returncode == 0, sig.stderr
    return {"env": env, "work": work, "plain": plain, "pre": pre,
            "plain_info": wait_done(env, plain, 150), "pre_info": wait_done(env, pre, 200)}


def _logs(work: Path, job: str) -> str:
    parts = [work / f"batch-{job}.out", *sorted((work / "logs").glob(f"train-{job}-node*.log"))]
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in parts if p.exists())


@pytest.mark.slow
def test_two_node_training_completes_with_one_rank_per_node(jobs, reacher_dataset):
    work, job, info = jobs["work"], jobs["plain"], jobs["plain_info"]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _logs(work, job)
    assert info["NumNodes"] == "2"
    run_dir = work / "runs" / "slurm" / f"two-node-{job}"
    records = [json.loads((run_dir / "dist" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 and r["local_rank"] == 0 for r in records)
    assert {r["slurm_node"] for r in records} == {"n1", "n2"}  # one rank on each node
    assert records[0]["slurm_node"] == "n1"  # machine rank 0 is the first host of the allocation
    assert all(r["master_addr"] == "127.0.0.1" and r["slurm_job"] == job for r in records)
    assert not set(records[0]["first_segment_ends"]) & set(records[1]["first_segment_ends"])
    assert (run_dir / "checkpoints" / "step-00000006").is_dir()
    client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("slurm").experiment_id],
                               filter_string=f"attributes.run_name = 'two-node-{job}'")
    assert run.info.status == "FINISHED"
    assert run.data.params["dist.world_size"] == "2" and run.data.params["dist.mode"] == "ddp"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    assert all(0 < m.value < 100 for m in history)


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes(jobs):
    work, job, info = jobs["work"], jobs["pre"], jobs["pre_info"]
    logs = _logs(work, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", logs
    assert info["Restarts"] == "1", logs
    batch = (work / f"batch-{job}.out").read_text()  # --open-mode=append keeps both runs
    assert f"job {job} restart 0" in batch and f"job {job} restart 1" in batch
    assert "USR1: asking the training step to checkpoint" in batch and f"requeueing job {job}" in batch
    node0 = (work / "logs" / f"train-{job}-node0.log").read_text(errors="replace")
    m = re.search(r"preempted: checkpoint for step (\d+) written", node0)
    assert m, logs
    step = int(m.group(1))
    assert 0 < step < PREEMPT_STEPS
    run_dir = work / "runs" / "slurm" / f"preempt-{job}"
    assert f"resuming from {run_dir / 'checkpoints' / f'step-{step:08d}'} at step {step}" in node0
    summary = json.loads(node0.strip().splitlines()[-1])
    assert summary["steps"] == PREEMPT_STEPS and summary["run_dir"] == str(run_dir)
    assert (run_dir / "checkpoints" / f"step-{PREEMPT_STEPS:08d}").is_dir()
    # one MLflow run across the requeue: the resumed job continued the same run to the last step
    client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("slurm").experiment_id],
                              filter_string=f"attributes.run_name = 'preempt-{job}'")
    assert len(runs) == 1 and runs[0].info.run_id == summary["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train/loss"))
    assert steps == list(range(1, PREEMPT_STEPS + 1))


@pytest.mark.slow
def test_rollout_workers_evaluate_the_run(jobs):
    check = subprocess.run([str(VENV / "bin" / "lamo-scale"), "rollout", "--help"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip("`lamo-scale rollout` is not available in this checkout")
    work, job = jobs["work"], jobs["plain"]
    assert jobs["plain_info"]["JobState"] == "COMPLETED"
    client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("slurm").experiment_id],
                               filter_string=f"attributes.run_name = 'two-node-{job}'")
    env = dict(jobs["env"], MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db", EXPERIMENT="slurm",
               RUN_ID=run.info.run_id, WATCH="1", ROLLOUT_ARGS="--episodes 2 --num-envs 2 --no-registry --poll-s 1")
    array = sbatch(env, "rollout.sbatch", "--array=0-1", "--cpus-per-task=1", f"--output={work}/rollout-%A_%a.out")
    outs = lambda: "\n".join(p.read_text(errors="replace")[-2000:] for p in work.glob(f"rollout-{array}_*.out"))
    for task in ("0", "1"):
        info = wait_done(env, f"{array}_{task}", 180)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", outs()
    assert "rollout worker 1/2 on n" in outs() or "rollout worker 0/2 on n" in outs()
    evals = client.get_metric_history(run.info.run_id, "eval/60/return_mean")
    assert 6 in {m.step for m in evals}, outs()


@pytest.mark.slow
def test_mlflow_server_job_serves_at_its_printed_address(cluster, tmp_path):
    port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('', 0)); "
                           "print(s.getsockname()[1])"], capture_output=True, text=True).stdout.strip()
    env = job_env(cluster, MLFLOW_DIR=str(tmp_path / "server"), MLFLOW_PORT=port, MLFLOW_WORKERS="1")
    job = sbatch(env, "mlflow.sbatch", f"--output={tmp_path}/mlflow-%j.out", "--cpus-per-task=1")
    address_file = tmp_path / "server" / "address"
    try:
        deadline = time.time() + 90
        while True:
            assert job_info(env, job).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING"), \
                (tmp_path / f"mlflow-{job}.out").read_text(errors="replace")
            if address_file.exists():
                address = address_file.read_text().strip()
                try:
                    with urllib.request.urlopen(f"{address}/health", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
            assert time.time() < deadline, "mlflow server did not answer"
            time.sleep(1)
        assert address.endswith(f":{port}") and address.startswith("http://")
        printed = (tmp_path / f"mlflow-{job}.out").read_text()
        assert f"MLflow tracking server: {address}" in printed
        client = MlflowClient(tracking_uri=address)  # by the node's name, as other jobs would
        exp = client.create_experiment("from-slurm-test")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "x", 1.0, step=1)
        assert client.get_metric_history(run.info.run_id, "x")[0].value == 1.0
        assert (tmp_path / "server" / "mlflow.db").exists()
    finally:
        subprocess.run(["scancel", job], env=env, capture_output=True)
        wait_done(env, job, 60)
