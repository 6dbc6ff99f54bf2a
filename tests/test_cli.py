"""The command lines as a user runs them: --help, errors, accelerate launch, quickstart."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamo_scale.config import describe_options

from conftest import REPO, TINY

BIN = Path(sys.executable).parent


def run(args, cwd, env_extra=None, timeout=300):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_train_help_lists_every_option_with_its_meaning(tmp_path):
    out = run([str(BIN / "lamo-scale"), "train", "--help"], tmp_path)
    assert out.returncode == 0
    for key, _, _, doc in describe_options():
        assert key in out.stdout, key
    assert "Rank r of the low-rank update." in out.stdout
    module = run([sys.executable, "-m", "lamo_scale.train", "--help"], tmp_path)
    assert module.returncode == 0 and "model.lora.rank" in module.stdout


def test_top_level_help_lists_commands(tmp_path):
    out = run([str(BIN / "lamo-scale"), "--help"], tmp_path)
    for cmd in ("train", "collect", "datasets", "evaluate", "quickstart", "recipes"):
        assert cmd in out.stdout


def test_config_error_exit_code_and_message(tmp_path):
    out = run([str(BIN / "lamo-scale"), "train", "--config", "quickstart", "train.setps=3"], tmp_path)
    assert out.returncode == 2
    assert "unknown config key 'train.setps'. Did you mean 'steps'?" in out.stderr


def test_missing_dataset_message(tmp_path, minari_store):
    out = run([str(BIN / "lamo-scale"), "train", "--config", "quickstart", "data.dataset=nobody/none/x-v0"],
              tmp_path)
    assert out.returncode == 2
    assert "nobody/none/x-v0" in out.stderr and "lamo-scale collect" in out.stderr and str(minari_store) in out.stderr


@pytest.mark.slow
def test_accelerate_launch_trains_and_evaluate_cli_reports(tmp_path, reacher_dataset):
    args = TINY + [f"data.dataset={reacher_dataset}", "train.steps=4", "train.batch_size=8", "train.checkpoint_every=2",
                   "text.block_size=32", "text.source=builtin:python-docstrings", "tracking.run_name=launch",
                   f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "eval.episodes=2", "eval.num_envs=2"]
    out = run([str(BIN / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lamo_scale.train",
               "--config", "quickstart-tiny", *args], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and Path(tmp_path, summary["checkpoint"]).is_dir()
    ev = run([str(BIN / "lamo-scale"), "evaluate", "--checkpoint", summary["run_dir"], "--episodes", "2"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "normalized_score" in ev.stdout and "checkpoint step 4" in ev.stdout


def test_recipes_listed_with_their_command(tmp_path):
    out = run([str(BIN / "lamo-scale"), "recipes"], tmp_path)
    assert "quickstart" in out.stdout and "quickstart-dt" in out.stdout
    assert "paper/hopper-medium-r0.01-lamo" in out.stdout and "ablations/no-language" in out.stdout
    assert "baselines/cql" in out.stdout
    for path in (REPO / "lamo_scale" / "recipes").rglob("*.yaml"):
        if not path.name.startswith("_"):
            command = ("# lamo-scale baseline --algo " + path.stem if path.parent.name == "baselines"
                       else "# lamo-scale train --config")
            assert path.read_text().startswith(command), path


def test_paper_grid_is_generated_and_every_recipe_loads():
    from lamo_scale.config import load_config, packaged_recipes

    check = subprocess.run([sys.executable, str(REPO / "scripts" / "make_recipes.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    names = packaged_recipes()
    assert len([n for n in names if n.startswith("paper/")]) == 3 * 3 * 3 * 2 + 3 * 2 + 3 * 2
    for name in names:
        load_config(name)
    lamo = load_config("paper/walker2d-medium-replay-r0.01-lamo")
    dt = load_config("paper/walker2d-medium-replay-r0.01-dt")
    assert (lamo.model.finetune, lamo.model.embedding, lamo.loss.language_weight) == ("lora", "mlp", 0.1)
    assert (dt.model.finetune, dt.model.embedding, dt.loss.language_weight, dt.model.pretrained) == \
        ("full", "linear", 0.0, False)
    assert lamo.data.dataset == "lamo/walker2d/medium-replay-like-v0" and lamo.data.data_ratio == 0.01
    assert lamo.eval.target_returns == [5000, 4000, 3000, 2500]


@pytest.mark.slow
def test_quickstart_trains_evaluates_and_prints_the_behaviour_score_beside_its_own(tmp_path, reacher_dataset):
    from lamo_scale.data.collect import behaviour_score

    args = TINY + [f"data.dataset={reacher_dataset}", "train.steps=3", "train.batch_size=8", "train.checkpoint_every=3",
                   "loss.language_weight=0", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "eval.episodes=2",
                   "eval.num_envs=2", "eval.target_returns=[50]"]
    out = run([str(BIN / "lamo-scale"), "quickstart", "--config", "quickstart-tiny", *args], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"dataset {reacher_dataset} already in the Minari store" in out.stdout and "[3/3] evaluating" in out.stdout
    assert f"the behaviour data's own episodes score {behaviour_score(reacher_dataset):.1f} normalised" in out.stdout
