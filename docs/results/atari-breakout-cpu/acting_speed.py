"""Acting env-steps/s on LaMoBreakout-v0: batched (8 envs, one forward per step) vs sequential (1 env),
each with the per-frame state-token cache (the CNN encodes each new frame once) and without it
(every step re-encodes the K frames of every window: the pre-cache acting loop), interleaved.

    python docs/results/atari-breakout-cpu/acting_speed.py [recipe] [repeats]   # default atari/quickstart-breakout-dt 3

Untrained policy of the recipe (speed does not depend on the weights), 8 episodes capped at 200
steps, target 30, torch threads 1. Prints the median over the repeats and the ratios.
"""
import statistics
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
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
cfg = load_config(recipe)
env = gym.make("LaMoBreakout-v0")
model_cfg = resolve_model_io(cfg.model, env.observation_space, env.action_space, "LaMoBreakout-v0")
policy, _ = build_policy(model_cfg, 4 * 84 * 84, 4, None, None, language_loss=False)
policy.eval()
spec = ActingSpec("LaMoBreakout-v0", StateStats.identity(), cfg.data.rtg_scale, cfg.data.context_len, 200)
bf16 = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else None
contenders = {"cached": policy.act, "re-encode": lambda **window: policy.act(**window)}  # a plain callable: no cache
speeds = {(name, n): [] for name in contenders for n in (8, 1)}
for _ in range(repeats):
    for (name, n) in speeds:
        results, seconds = timed_run(contenders[name], spec, [30.0], 8, n, 0, progress=False, autocast_dtype=bf16)
        speeds[name, n].append(env_steps_per_second(results, seconds))
median = {key: statistics.median(v) for key, v in speeds.items()}
for (name, n), value in median.items():
    print(f"{recipe} {name:9s} num_envs={n}: {value:7.1f} env-steps/s (median of {repeats})")
print(f"batched/sequential: cached {median['cached', 8] / median['cached', 1]:.2f}x, "
      f"re-encode {median['re-encode', 8] / median['re-encode', 1]:.2f}x; "
      f"cache gain batched {median['cached', 8] / median['re-encode', 8]:.2f}x, "
      f"sequential {median['cached', 1] / median['re-encode', 1]:.2f}x")
