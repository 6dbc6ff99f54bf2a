"""End to end: train a tiny policy on a real Minari dataset, checkpoint, resume exactly,
evaluate in the real env, and find everything in MLflow."""
from __future__ import annotations

import math

import minari
import numpy as np
import torch
import pytest
from minari.data_collector.episode_buffer import EpisodeBuffer
from mlflow import MlflowClient

from lamo_scale import checkpoint as ckpt
from lamo_scale.config import load_config
from lamo_scale.rollout.evaluate import evaluate_checkpoint
from lamo_scale.train import NonFiniteLossError, train

from conftest import TINY

pytestmark = pytest.mark.slow


def make_cfg(tmp_path, dataset, text, *extra):
    return load_config(None, TINY + [
        f"data.dataset={dataset}", "data.context_len=4", "data.rtg_scale=100",
        f"text.source={text}", "text.block_size=32", "text.batch_size=2", "loss.language_weight=0.1",
        "train.steps=6", "train.batch_size=8", "train.lr=1e-3", "train.warmup_steps=2", "train.log_every=1",
        "train.checkpoint_every=3", "train.keep_checkpoints=0", "train.threads=1",
        f"train.output_dir={tmp_path}/runs/{{run_name}}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.experiment=test", "eval.target_returns=[90, 50]", "eval.episodes=3", "eval.num_envs=4",
        *extra])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, reacher_dataset):
    tmp = tmp_path_factory.mktemp("straight")
    from conftest import english_text_file
    text = english_text_file(tmp)  # without ../shared a fixed English text committed with the tests
    cfg = make_cfg(tmp, reacher_dataset, text, "tracking.run_name=straight")
    return tmp, text, cfg, train(cfg)


def test_losses_pinned_and_falling(straight_run):
    _, _, _, result = straight_run
    assert result.steps_done == 6 and len(result.losses) == 6
    assert all(math.isfinite(x) for x in result.losses)
    # Seeded CPU run (torch 2.13.0, 1 thread, WikiText-103 valid as text): the first loss is fixed.
    from conftest import WIKITEXT_VALID
    if WIKITEXT_VALID.exists():
        assert result.losses[0] == pytest.approx(PINNED_FIRST_LOSS, rel=1e-4)
    assert np.mean(result.losses[3:]) < np.mean(result.losses[:3])


# The value moves with the backbone's dropout draws: packing RL windows and text into one call
# (model.pack_text) draws them over one tensor instead of two, the never-read last action token is
# no longer fed, and the CPU mask is a uniform draw and a compare (lamo_scale/model/dropout.py).
# Before these: 0.8186963200569153, 0.8220093250274658 (packing), 0.8137170672416687 (+ trim).
PINNED_FIRST_LOSS = 0.8262068629264832


def test_resume_reproduces_the_uninterrupted_run(straight_run, reacher_dataset):
    tmp, text, _, result = straight_run
    first = train(make_cfg(tmp, reacher_dataset, text, "tracking.run_name=split", "train.steps=3"))
    assert first.losses == pytest.approx(result.losses[:3], abs=0)
    second = train(make_cfg(tmp, reacher_dataset, text, "tracking.run_name=split", "train.resume=auto"))
    assert second.run_id == first.run_id  # the same MLflow run continues
    assert second.losses == result.losses[3:]  # bitwise: same data, RNG, optimizer state
    w_straight = ckpt.resolve_checkpoint(result.checkpoint).weights()
    w_resumed = ckpt.resolve_checkpoint(second.checkpoint).weights()
    for name, tensor in w_straight.items():
        assert torch.equal(w_resumed[name], tensor), name


def test_checkpoints_are_small_and_complete(straight_run):
    _, _, _, result = straight_run
    paths = ckpt.list_checkpoints(result.run_dir / "checkpoints")
    assert [p.name for p in paths] == ["step-00000003", "step-00000006"]
    c = ckpt.verify(paths[-1])
    weights = c.weights()
    assert any("lora_A" in k for k in weights) and any(k.startswith("action_head") for k in weights)
    assert not any("wte" in k or ".mlp.c_fc.base_layer" in k for k in weights)  # no frozen backbone
    meta = c.meta
    assert meta["state_dim"] == 12 and meta["act_dim"] == 2 and meta["env_id"] == "LaMoReacher2d-v1"
    assert len(meta["state_stats"]["mean"]) == 12 and meta["ref_max_score"] == 100.0


def test_mlflow_has_params_metrics_config_and_eval(straight_run):
    tmp, _, cfg, result = straight_run
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.lora.rank"] == "16" and run.data.params["data.context_len"] == "4"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in history] == pytest.approx(result.losses, rel=1e-6)
    assert client.get_metric_history(result.run_id, "train/language_loss")
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "config.yaml" in artifacts and "checkpoints" in artifacts

    report = evaluate_checkpoint(result.checkpoint, progress=False)
    assert report.step == 6 and set(report.summaries) == {90.0, 50.0}
    for summary in report.summaries.values():
        assert summary["episodes"] == 3 and summary["episode_length"] == 100.0
        assert 0.0 <= summary["normalized_score"] <= 100.0
        assert summary["normalized_score"] == pytest.approx(summary["return_mean"])  # Reacher2d: 0..100
    points = client.get_metric_history(result.run_id, "eval/90/normalized_score")
    assert [p.step for p in points] == [6]
    assert points[0].value == pytest.approx(report.summaries[90.0]["normalized_score"])


def test_evaluation_is_deterministic_and_independent_of_parallelism(straight_run):
    _, _, _, result = straight_run
    a = evaluate_checkpoint(result.checkpoint, num_envs=6, log_to_mlflow=False, progress=False)
    b = evaluate_checkpoint(result.checkpoint, num_envs=1, log_to_mlflow=False, progress=False)
    for t in a.summaries:
        assert a.summaries[t]["return_mean"] == b.summaries[t]["return_mean"]


def _copy_dataset(source_id: str, new_id: str, reward_fn=None, obs_fn=None):
    src = minari.load_dataset(source_id)
    buffers = []
    for ep in src.iterate_episodes():
        obs = obs_fn(ep.observations) if obs_fn else ep.observations
        rewards = reward_fn(ep.rewards) if reward_fn else ep.rewards
        buffers.append(EpisodeBuffer(observations=list(obs), actions=list(ep.actions), rewards=list(rewards),
                                     terminations=list(ep.terminations), truncations=list(ep.truncations)))
    import gymnasium as gym
    obs_space = gym.spaces.Box(-np.inf, np.inf, (np.asarray(obs).shape[1],), np.float64)
    return minari.create_dataset_from_buffers(new_id, buffers, env=None, observation_space=obs_space,
                                              action_space=src.action_space).id


def test_nan_loss_stops_and_keeps_last_good_checkpoint(straight_run, reacher_dataset):
    tmp, text, _, _ = straight_run
    good = train(make_cfg(tmp, reacher_dataset, text, "tracking.run_name=nan", "train.steps=3"))
    nan_id = _copy_dataset(reacher_dataset, "test/reacher2d/nan-v0", reward_fn=lambda r: np.full_like(r, np.nan))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint") as err:
        train(make_cfg(tmp, nan_id, text, "tracking.run_name=nan", "train.resume=auto", "eval.env_id=LaMoReacher2d-v1"))
    assert "step 4" in str(err.value)
    latest = ckpt.latest_checkpoint(good.run_dir / "checkpoints")
    assert latest.step == 3


def test_resume_on_data_of_another_shape_is_refused(straight_run, reacher_dataset):
    tmp, text, _, result = straight_run
    wide_id = _copy_dataset(reacher_dataset, "test/reacher2d/wide-v0",
                            obs_fn=lambda o: np.concatenate([o, o[:, :1]], axis=1))
    with pytest.raises(ckpt.CheckpointError, match="state_dim=12 but dataset test/reacher2d/wide-v0 has state_dim=13"):
        train(make_cfg(tmp, wide_id, text, "tracking.run_name=wide", f"train.resume={result.run_dir}",
                       "eval.env_id=LaMoReacher2d-v1"))


def test_no_text_read_without_language_loss(straight_run, reacher_dataset):
    tmp, _, _, _ = straight_run
    result = train(make_cfg(tmp, reacher_dataset, "/no/such/text/file", "tracking.run_name=nolm",
                            "loss.language_weight=0", "train.steps=2"))
    assert result.steps_done == 2


def test_kill_and_resume_2k_to_4k_equals_the_uninterrupted_run(tmp_path, reacher_dataset):
    """The issue's exact-resume check at its stated length: (2k steps, stop, resume, to 4k) ==
    4k uninterrupted, step by step — optimizer, scheduler, RNG and stream positions restored."""
    common = ["model.tiny_layers=1", "model.tiny_width=16", "loss.language_weight=0", "train.batch_size=4",
              "train.log_every=1000", "train.checkpoint_every=2000", "train.warmup_steps=500",
              "tracking.enabled=false", "data.context_len=3"]
    straight = train(make_cfg(tmp_path, reacher_dataset, "unused", "tracking.run_name=long", "train.steps=4000",
                              *common))
    first = train(make_cfg(tmp_path, reacher_dataset, "unused", "tracking.run_name=long-split", "train.steps=2000",
                           *common))
    second = train(make_cfg(tmp_path, reacher_dataset, "unused", "tracking.run_name=long-split", "train.steps=4000",
                            "train.resume=auto", *common))
    assert len(straight.losses) == 4000 and len(second.losses) == 2000
    assert first.losses + second.losses == straight.losses


def test_gradient_accumulation_equals_one_big_batch(tmp_path, reacher_dataset):
    common = ["loss.language_weight=0", "model.lora.dropout=0", "model.backbone_dropout=0", "train.steps=4",
              "tracking.enabled=false", "train.batch_size=8"]
    one = train(make_cfg(tmp_path, reacher_dataset, "unused", "tracking.run_name=acc1", *common))
    four = train(make_cfg(tmp_path, reacher_dataset, "unused", "tracking.run_name=acc4", "train.grad_accum=4", *common))
    np.testing.assert_allclose(four.losses, one.losses, rtol=1e-5)


def test_data_ratio_subset_depends_on_the_ratio_seed_not_the_training_seed(tmp_path, reacher_dataset):
    """The official ratio files fix one subset per (dataset, ratio); train.seed must not redraw it."""
    import json

    from lamo_scale.data.trajectories import load_trajectories, open_dataset

    subsets = {}
    for seed in (0, 7):
        cfg = make_cfg(tmp_path, reacher_dataset, "builtin:python-docstrings", f"tracking.run_name=ratio-{seed}",
                       "data.data_ratio=0.5", f"train.seed={seed}", "train.steps=1", "loss.language_weight=0")
        result = train(cfg)
        client = MlflowClient(tracking_uri=cfg.tracking.uri)
        path = client.download_artifacts(result.run_id, "data_subset.json", str(tmp_path / f"dl-{seed}"))
        subsets[seed] = json.load(open(path))
        assert client.get_run(result.run_id).data.params["data.subset_sha256"] == subsets[seed]["sha256"]
    expected = load_trajectories(open_dataset(reacher_dataset), 100.0, 0.5, seed=0).episode_ids.tolist()
    assert subsets[0]["episode_ids"] == subsets[7]["episode_ids"] == expected
    assert subsets[0]["ratio_seed"] == 0 and subsets[0]["episodes"] == len(expected)


def test_compile_gives_the_losses_of_the_eager_model(tmp_path, reacher_dataset):
    """train.compile (inductor, CPU here): same losses as eager, language loss on, and a checkpoint that
    loads into an eager policy (nn.Module.compile keeps the parameter names)."""
    from conftest import english_text_file

    text = english_text_file(tmp_path)
    common = ["model.lora.dropout=0", "model.backbone_dropout=0", "train.steps=3", "tracking.enabled=false",
              "train.checkpoint_every=3"]
    eager = train(make_cfg(tmp_path, reacher_dataset, text, "tracking.run_name=eager", *common))
    compiled = train(make_cfg(tmp_path, reacher_dataset, text, "tracking.run_name=compiled", "train.compile=true",
                              *common))
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4)
    assert ckpt.resolve_checkpoint(compiled.checkpoint).weights().keys() == \
        ckpt.resolve_checkpoint(eager.checkpoint).weights().keys()
