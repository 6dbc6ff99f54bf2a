#!/usr/bin/env python
"""Train the PPO agent whose mid-training checkpoint makes ``reacher2d-medium`` (as the paper's data).

    .venv/bin/python scripts/train_reacher2d_ppo.py --out runs/reacher2d-ppo   # ~5 min, 2 cores

The official LaMo Reacher2d data (data/data_generation_PPO) comes from a PPO agent with a
Gaussian policy trained on the env; "medium" is a mid-training checkpoint. Here:
stable-baselines3 PPO (MlpPolicy 64x64 tanh, observation normalisation) on
``LaMoReacher2d-v1``. One difference, said plainly: the agent trains on the sparse reward
*plus* a dense shaping term ``-0.1 × L1 distance`` (the official env's commented-out
``reward_dist``), because sparse-only PPO needs millions of steps (the official run: 3M) that
this CPU does not have; the collected data carries the sparse reward only. As in the official
trainer, the policy's std is not learned but decays linearly, 0.6 → 0.1 (there in steps of
0.05 every 250k of 3M steps; here continuously over ``--steps``).

Every ``--eval-every`` steps the current policy is exported (plain arrays, see
lamo_scale.data.gaussian_policy) and its *sparse* return with sampled actions is measured
on 100 episodes. The rule that picks "medium", fixed before training: the first checkpoint
whose mean return reaches half of the best checkpoint's. It is copied to
``lamo_scale/data/policies/reacher2d-ppo-medium.npz`` with ``--install``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import lamo_scale.envs  # noqa: F401  (registers LaMoReacher2d-v1)
from lamo_scale.data.gaussian_policy import PACKAGED_DIR, GaussianMLPPolicy

SHAPING = 0.1


class DistanceShaping(gym.Wrapper):
    """Adds ``-SHAPING × L1 distance`` to the sparse reward (training only)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward - SHAPING * info["distance"], terminated, truncated, info


def export(model, vecnorm, path: Path, meta: dict) -> None:
    """Write the PPO actor (and observation statistics) as the arrays GaussianMLPPolicy reads."""
    policy = model.policy
    arrays = {}
    linears = [m for m in policy.mlp_extractor.policy_net if hasattr(m, "weight")]
    for i, layer in enumerate(linears):
        arrays[f"w{i}"] = layer.weight.detach().numpy().T.astype(np.float64)
        arrays[f"b{i}"] = layer.bias.detach().numpy().astype(np.float64)
    arrays["w_out"] = policy.action_net.weight.detach().numpy().T.astype(np.float64)
    arrays["b_out"] = policy.action_net.bias.detach().numpy().astype(np.float64)
    arrays["log_std"] = policy.log_std.detach().numpy().astype(np.float64)
    arrays["obs_mean"] = vecnorm.obs_rms.mean.astype(np.float64)
    arrays["obs_var"] = vecnorm.obs_rms.var.astype(np.float64)
    arrays["obs_clip"] = np.float64(vecnorm.clip_obs)
    arrays["action_low"] = np.full(2, -1.0)
    arrays["action_high"] = np.full(2, 1.0)
    np.savez(path, meta=json.dumps(meta), **arrays)


def sparse_return(path: Path, episodes: int = 100, seed: int = 10_000) -> tuple[float, float]:
    """Mean and std of the sparse return of the exported policy, sampled actions."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("LaMoReacher2d-v1") for _ in range(episodes)])
    policy = GaussianMLPPolicy(path, deterministic=False, seed=seed)
    obs, _ = envs.reset(seed=seed)
    total = np.zeros(episodes)
    for _ in range(100):
        obs, reward, *_ = envs.step(policy(obs))
        total += reward
    return float(total.mean()), float(total.std())


def main() -> None:
    """Train, export a checkpoint every ``--eval-every`` steps, pick "medium" by the fixed rule."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/reacher2d-ppo")
    parser.add_argument("--steps", type=int, default=600_000)
    parser.add_argument("--eval-every", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--install", action="store_true", help="copy the medium checkpoint into the package")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    venv = VecNormalize(make_vec_env("LaMoReacher2d-v1", n_envs=8, seed=args.seed, wrapper_class=DistanceShaping),
                        norm_obs=True, norm_reward=True, gamma=0.99)
    model = PPO("MlpPolicy", venv, n_steps=512, batch_size=256, n_epochs=10, learning_rate=3e-4, gamma=0.99,
                gae_lambda=0.95, seed=args.seed, device="cpu", verbose=0, policy_kwargs={"log_std_init": np.log(0.6)})
    model.policy.log_std.requires_grad_(False)
    history: list[dict] = []
    start = time.time()

    class Snapshot(BaseCallback):
        def _on_step(self) -> bool:
            frac = min(1.0, self.num_timesteps / args.steps)
            self.model.policy.log_std.data.fill_(float(np.log(0.6 + (0.1 - 0.6) * frac)))
            if self.num_timesteps % args.eval_every < venv.num_envs:
                path = out / f"step-{self.num_timesteps}.npz"
                meta = {"algo": "stable-baselines3 PPO", "std_schedule": "linear 0.6 -> 0.1 over the run", "env": "LaMoReacher2d-v1", "train_steps": self.num_timesteps,
                        "seed": args.seed, "reward": f"sparse - {SHAPING} * L1 distance (training only)",
                        "script": "scripts/train_reacher2d_ppo.py"}
                export(self.model, venv, path, meta)
                mean, std = sparse_return(path)
                history.append({"step": self.num_timesteps, "return_mean": mean, "return_std": std,
                                "std": np.exp(self.model.policy.log_std.detach().numpy()).round(3).tolist(),
                                "seconds": round(time.time() - start, 1)})
                print(json.dumps(history[-1]), flush=True)
            return True

    model.learn(args.steps, callback=Snapshot())
    best = max(h["return_mean"] for h in history)
    medium = next(h for h in history if h["return_mean"] >= best / 2)
    summary = {"history": history, "best": best, "medium": medium,
               "rule": "first checkpoint whose mean sparse return (sampled actions) >= half the best checkpoint's"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("medium:", json.dumps(medium))
    if args.install:
        PACKAGED_DIR.mkdir(exist_ok=True)
        shutil.copy(out / f"step-{medium['step']}.npz", PACKAGED_DIR / "reacher2d-ppo-medium.npz")
        (PACKAGED_DIR / "reacher2d-ppo-medium.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
