"""A rollout worker's policy cache: one backbone built, checkpoints swapped in, actions as if fresh.

Three checkpoints of one tiny fp32 LoRA run (fp32 acting merges LoRA into the base weights,
so a swap must restore those weights exactly before the next adapters go in).
"""
from __future__ import annotations

import pytest
import torch

from lamo_scale import checkpoint as ckpt
from lamo_scale.config import load_config
from lamo_scale.data.segments import gather_segments
from lamo_scale.data.trajectories import load_trajectories, open_dataset
from lamo_scale.model.placement import place_policy
from lamo_scale.rollout.evaluate import PolicyCache, evaluate_checkpoint, load_policy
from lamo_scale.train import train

from conftest import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, reacher_dataset):
    tmp = tmp_path_factory.mktemp("cache")
    cfg = load_config(None, TINY + [
        f"data.dataset={reacher_dataset}", "data.context_len=4", "data.rtg_scale=100", "model.finetune=lora",
        "loss.language_weight=0", "train.steps=9", "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=1",
        "train.checkpoint_every=3", "train.keep_checkpoints=0", "train.threads=1",
        f"train.output_dir={tmp}/run", f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=cache",
        "eval.target_returns=[90]", "eval.episodes=3", "eval.num_envs=3"])
    run = train(cfg)
    found = [ckpt.verify(p) for p in ckpt.list_checkpoints(run.checkpoint.parent)]
    assert [c.step for c in found] == [3, 6, 9]
    index = load_trajectories(open_dataset(reacher_dataset), rtg_scale=100)
    windows = gather_segments(index, torch.arange(0, 64, 8).numpy(), 4)
    return found, windows


def _actions(policy, windows) -> torch.Tensor:
    with torch.inference_mode():
        return policy.act(**windows)


def test_swapped_checkpoints_act_exactly_as_freshly_loaded_ones(three_checkpoints):
    checkpoints, windows = three_checkpoints
    fresh = [_actions(load_policy(c)[0], windows) for c in checkpoints]
    assert not torch.equal(fresh[0], fresh[2]), "the checkpoints must differ for the test to mean anything"
    cache = PolicyCache()
    # 1, 2, 3 and back to 1: each swap undoes the previous merge before loading the next adapters
    for i in (0, 1, 2, 0):
        policy, _ = cache.load(checkpoints[i])
        torch.testing.assert_close(_actions(policy, windows), fresh[i], rtol=0, atol=0)
    assert (cache.builds, cache.swaps) == (1, 3)


def test_evaluation_through_the_cache_equals_fresh_evaluation(three_checkpoints):
    checkpoints, _ = three_checkpoints
    cache = PolicyCache()
    for c in checkpoints:
        cached = evaluate_checkpoint(c, log_to_mlflow=False, progress=False, cache=cache)
        plain = evaluate_checkpoint(c, log_to_mlflow=False, progress=False)
        assert cached.summaries[90.0]["return_mean"] == plain.summaries[90.0]["return_mean"]
    assert cache.builds == 1


def test_a_different_backbone_is_built_not_swapped(three_checkpoints):
    checkpoints, _ = three_checkpoints
    cache = PolicyCache()
    cache.load(checkpoints[0], bf16=False)
    cache.load(checkpoints[1], bf16=True)  # another acting precision: no merge, so another build
    assert (cache.builds, cache.swaps) == (2, 0)


def _split_device_map(policy) -> dict[str, str]:
    """One map entry per backbone submodule (blocks, norms, LM head), every one on the CPU."""
    names = {id(m): n for n, m in policy.lm.named_modules()}
    parts = list(policy.transformer.children()) + [m for m in policy.causal_lm.children()
                                                  if m is not policy.transformer]
    return {names[id(m)]: "cpu" for m in parts}


def test_device_auto_dispatches_the_backbone_and_acts_as_one_device(three_checkpoints):
    checkpoints, windows = three_checkpoints
    fresh = _actions(load_policy(checkpoints[2])[0], windows)
    auto, _ = load_policy(checkpoints[2], device="auto")
    assert set(auto.lm.hf_device_map.values()) == {"cpu"}  # accelerate's device_map="auto", no GPU here
    torch.testing.assert_close(_actions(auto, windows), fresh, rtol=0, atol=0)
    # The multi-device path (alignment hooks on every block) run on the CPU: same actions
    split, _ = load_policy(checkpoints[2])
    place_policy(split, "auto", device_map=_split_device_map(split), force_hooks=True)
    assert len(split.lm.hf_device_map) > 3
    assert all(hasattr(m, "_hf_hook") for m in split.transformer.children())
    torch.testing.assert_close(_actions(split, windows), fresh, rtol=0, atol=0)
