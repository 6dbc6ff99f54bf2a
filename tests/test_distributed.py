"""Two real CPU ranks (gloo) through `accelerate launch`: DDP, ZeRO-2, ZeRO-3 and FSDP each
match a one-process run; ranks are really two and read disjoint data; ZeRO-3 saves a
complete adapter; resume and preemption work across ranks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from lamo_scale import checkpoint as ckpt
from lamo_scale.config import load_config
from lamo_scale.data.segments import SegmentStream
from lamo_scale.preemption import PREEMPTED_EXIT_CODE
from lamo_scale.rollout.evaluate import load_policy
from lamo_scale.train import train

from conftest import REPO, TINY

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MODES = ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
"""Loss sequences of 2-rank runs vs the 1-process run: float32 sums in another order."""


def overrides(tmp: Path, dataset: str, name: str, *extra: str) -> list[str]:
    return TINY + [
        f"data.dataset={dataset}", "data.context_len=4", "data.rtg_scale=100", "model.backbone_dropout=0",
        "model.lora.dropout=0", "text.source=builtin:python-docstrings", "text.block_size=32", "text.batch_size=2",
        "loss.language_weight=0.1", "train.steps=6", "train.batch_size=8", "train.lr=1e-3", "train.warmup_steps=2",
        "train.log_every=1", "train.checkpoint_every=3", "train.threads=1", f"train.output_dir={tmp}/runs/{{run_name}}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=dist", f"tracking.run_name={name}", *extra]


def launch(mode: str, args: list[str], timeout: int = 300, wait: bool = True):
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", f"ds_configs/accelerate_{mode}.yaml",
           "--num_processes", "2", "-m", "lamo_scale.train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def losses(tmp: Path, run_id: str) -> list[float]:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    return [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def reference(workdir, reacher_dataset):
    return train(load_config(None, overrides(workdir, reacher_dataset, "single")))


@pytest.fixture(scope="module")
def runs(workdir, reacher_dataset):
    out = {}
    for mode in MODES:
        proc = launch(mode, overrides(workdir, reacher_dataset, mode))
        assert proc.returncode == 0, f"{mode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_match_one_process(mode, runs, reference, workdir):
    summary = runs[mode]
    np.testing.assert_allclose(losses(workdir, summary["mlflow_run_id"]), reference.losses, **TOLERANCE)
    run = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db").get_run(summary["mlflow_run_id"])
    assert run.data.params["dist.world_size"] == "2"
    expected_mode = "deepspeed" if mode.startswith("deepspeed") else mode
    assert run.data.params["dist.mode"] == expected_mode
    if mode.startswith("deepspeed"):
        assert run.data.params["dist.zero_stage"] == mode[-1]


@pytest.mark.parametrize("mode", MODES)
def test_ranks_are_two_and_read_disjoint_data(mode, runs, reacher_dataset):
    run_dir = Path(runs[mode]["run_dir"])
    records = [json.loads((run_dir / "dist" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 for r in records)
    ends0, ends1 = (set(r["first_segment_ends"]) for r in records)
    assert ends0 and ends1 and not ends0 & ends1
    # together they are exactly the first batch a single process would read
    from lamo_scale.data.trajectories import load_trajectories, open_dataset
    index = load_trajectories(open_dataset(reacher_dataset), 100.0)
    single = SegmentStream(index, 4, micro_batch=8, seed=0).ends_for(0)
    assert sorted(ends0 | ends1) == sorted(single.tolist())


def test_zero3_saves_a_complete_adapter_that_reloads_to_the_same_actions(runs, reference):
    z3 = ckpt.resolve_checkpoint(runs["deepspeed_zero3"]["checkpoint"])
    one = ckpt.resolve_checkpoint(reference.checkpoint)
    w3, w1 = z3.weights(), one.weights()
    assert set(w3) == set(w1) and any("lora_B" in k for k in w3)
    for name in w1:
        assert w3[name].shape == w1[name].shape and w3[name].numel() > 0, name
        np.testing.assert_allclose(w3[name].numpy(), w1[name].numpy(), rtol=1e-4, atol=1e-6)
    assert (z3.path / "sharded_state").is_dir()
    policy3, _ = load_policy(z3)
    policy1, _ = load_policy(one)
    g = torch.Generator().manual_seed(0)
    batch = {"states": torch.randn(5, 4, 12, generator=g), "actions": torch.zeros(5, 4, 2),
             "returns_to_go": torch.rand(5, 4, 1, generator=g), "timesteps": torch.arange(4).repeat(5, 1),
             "attention_mask": torch.ones(5, 4, dtype=torch.long)}
    torch.testing.assert_close(policy3.act(**batch), policy1.act(**batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["deepspeed_zero3", "fsdp"])
def test_sharded_resume_continues_the_run(mode, runs, workdir, reacher_dataset):
    name = f"{mode}-split"
    first = launch(mode, overrides(workdir, reacher_dataset, name, "train.steps=3"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(mode, overrides(workdir, reacher_dataset, name, "train.resume=auto"))
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    straight = losses(workdir, runs[mode]["mlflow_run_id"])
    np.testing.assert_allclose(losses(workdir, summary["mlflow_run_id"]), straight, rtol=1e-6, atol=1e-7)


def test_preemption_signal_checkpoints_and_next_start_resumes(workdir, reacher_dataset):
    args = overrides(workdir, reacher_dataset, "preempt", "train.steps=100000", "train.checkpoint_every=100000")
    proc = launch("ddp", args, wait=False)
    run_dir = workdir / "runs" / "preempt"
    deadline = time.time() + 240
    while len(list((run_dir / "dist").glob("rank-*.json"))) < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "training did not start"
        time.sleep(0.5)
    time.sleep(5)  # a few steps in
    # Slurm delivers the warning signal to every task of the step: do the same to both ranks
    # (torchrun starts each rank in a session of its own, as children of the launcher).
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2
    for pid in ranks:
        os.kill(int(pid), signal.SIGUSR1)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "preempted: checkpoint for step" in out and f"exitcode  : {PREEMPTED_EXIT_CODE}" in out
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and 0 < latest.step < 100000
    resumed = launch("ddp", overrides(workdir, reacher_dataset, "preempt", f"train.steps={latest.step + 2}",
                                      "train.checkpoint_every=100000", "train.resume=auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {latest.path}" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == latest.step + 2


def test_ddp_trains_the_dt_baseline_full_finetune_without_language_loss(workdir, reacher_dataset):
    """Full fine-tuning with lambda = 0 leaves the token embeddings without gradient; they must be
    frozen or DDP fails on its second step ("Expected to have finished reduction")."""
    dt = ["model.finetune=full", "model.embedding=linear", "model.action_head=linear", "loss.language_weight=0",
          "train.steps=3"]
    single = train(load_config(None, overrides(workdir, reacher_dataset, "dt-single", *dt)))
    proc = launch("ddp", overrides(workdir, reacher_dataset, "dt-ddp", *dt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(losses(workdir, summary["mlflow_run_id"]), single.losses, **TOLERANCE)
