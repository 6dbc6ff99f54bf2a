"""Acting env-steps/s on LaMoBreakout-v0, batched (8 envs, one forward per step) vs sequential (1 env).

    python docs/results/atari-breakout-cpu/acting_speed.py [recipe]   # default atari/quickstart-breakout-dt

Untrained policy of the recipe (speed does not depend on the weights), 8 episodes capped at 200
steps, target 30, torch threads 1.
"""
import sys

import gymnasium as gym
import torch

import lamo_scale.envs  # noqa: F401  registers LaMoBreakout-v0
from lamo_scale.config import load_config
from lamo_scale.data.spaces import resolve_model_io
from lamo_scale.data.trajectories import StateStats
from lamo_scale.model import build_policy
from lamo_scale.rollout.acting import ActingSpec, env_steps_per_second, timed_run

torch.set_num_threads(1)
recipe = sys.argv[1] if len(sys.argv) > 1 else "atari/quickstart-breakout-dt"
cfg = load_config(recipe)
env = gym.make("LaMoBreakout-v0")
model_cfg = resolve_model_io(cfg.model, env.observation_space, env.action_space, "LaMoBreakout-v0")
policy, _ = build_policy(model_cfg, 4 * 84 * 84, 4, None, None, language_loss=False)
policy.eval()
spec = ActingSpec("LaMoBreakout-v0", StateStats.identity(), cfg.data.rtg_scale, cfg.data.context_len, 200)
bf16 = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else None
for n in (8, 1):
    results, seconds = timed_run(policy.act, spec, [30.0], 8, n, 0, progress=False, autocast_dtype=bf16)
    print(f"{recipe} num_envs={n}: {env_steps_per_second(results, seconds):.1f} env-steps/s "
          f"({sum(results[30.0].lengths)} steps in {seconds:.1f} s)")
