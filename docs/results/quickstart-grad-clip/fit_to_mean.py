"""How well does a checkpoint fit the behaviour agent's *mean* action on the data? (issue 11)

    .venv/bin/python docs/results/quickstart-grad-clip/fit_to_mean.py <checkpoint dir> [...]
    .venv/bin/python docs/results/quickstart-grad-clip/fit_to_mean.py --mlp-bc 250 1000 4000

`lamo/reacher2d/medium-v1` is a PPO agent acting with its own sampled actions; its mean action is
known (`packaged_policy("reacher2d-ppo-medium")`), so the learnable part of the data can be scored
directly: R^2 of the predicted action against the agent's mean action (clipped to the action
bounds) on 2,000 dataset windows drawn once (seed 0), fp32. `--mlp-bc N...` trains the plain MLP BC
of ../reacher2d-bc-ceiling for N steps at batch 80 (the quickstart's 80 predicted actions per step:
16 segments x K 5), seed 0, and scores it the same way and in the env (64 episodes, eval seed 12345).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "docs" / "results" / "reacher2d-bc-ceiling"))
import _common  # noqa: E402

_common.offline_env(str(Path.home() / ".minari" / "datasets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lamo_scale.data.gaussian_policy import packaged_policy  # noqa: E402
from lamo_scale.data.trajectories import StateStats, load_trajectories, open_dataset  # noqa: E402

DATASET = "lamo/reacher2d/medium-v1"
WINDOWS = 2000


def behaviour_mean_actions(dataset) -> np.ndarray:
    """The PPO agent's mean action for every dataset step, clipped to the action bounds."""
    raw = np.concatenate([ep.observations[:-1] for ep in dataset.iterate_episodes()])
    return np.clip(packaged_policy("reacher2d-ppo-medium", deterministic=True).mean_action(raw), -1, 1)


def evaluation_windows(num_steps: int) -> np.ndarray:
    """The flat dataset steps scored (the same for every model)."""
    return np.random.default_rng(0).choice(num_steps, WINDOWS, replace=False)


def r_squared(pred: np.ndarray, mean_actions: np.ndarray) -> float:
    """1 - MSE(pred, mean action) / variance of the mean action (averaged over action dims)."""
    return float(1.0 - ((pred - mean_actions) ** 2).mean() / mean_actions.var(0).mean())


def score_checkpoint(ref: str, dataset, mean_actions: np.ndarray) -> None:
    """Print a checkpoint's fit to the data's actions and to the behaviour mean."""
    from lamo_scale import checkpoint as ckpt
    from lamo_scale.data.segments import gather_segments
    from lamo_scale.rollout.evaluate import load_policy

    policy, cfg = load_policy(ckpt.resolve_checkpoint(ref), bf16=False)
    index = load_trajectories(dataset, cfg.data.rtg_scale)
    ends = evaluation_windows(index.num_steps)
    preds = []
    with torch.no_grad():
        for start in range(0, WINDOWS, 500):
            b = gather_segments(index, ends[start:start + 500], cfg.data.context_len)
            preds.append(policy.predict_actions(b["states"], b["actions"], b["returns_to_go"], b["timesteps"],
                                                b["attention_mask"])[:, -1].float().numpy())
    pred = np.concatenate(preds)
    mse_data = float(((pred - index.actions[ends]) ** 2).mean())
    print(f"{ref}: MSE to the data's actions {mse_data:.4f}, R^2 vs the behaviour mean "
          f"{r_squared(pred, mean_actions[ends]):.3f}", flush=True)


def score_mlp_bc(steps_list: list[int], dataset, mean_actions: np.ndarray) -> None:
    """Plain MLP BC at batch 80 for each step count: R^2 vs the behaviour mean and env score."""
    import run as bc  # ../reacher2d-bc-ceiling/run.py

    from lamo_scale.rollout.acting import ActingSpec, run_episodes

    episodes = list(dataset.iterate_episodes())
    states = np.concatenate([ep.observations[:-1] for ep in episodes]).astype(np.float32)
    stats = StateStats(states.mean(0), states.std(0) + 1e-6)
    s = stats.normalize(states)
    a = np.concatenate([ep.actions for ep in episodes]).astype(np.float32)
    spec = ActingSpec("LaMoReacher2d-v1", stats, rtg_scale=10.0, context_len=1)
    bc.BATCH = 80
    for steps in steps_list:
        bc.STEPS = steps
        net = bc.train_bc(s, a, seed=0)
        ends = evaluation_windows(len(s))
        with torch.no_grad():
            pred = net(torch.from_numpy(s[ends])).numpy()

        def act(states, actions, returns_to_go, timesteps, attention_mask, net=net):
            return net(states[:, -1].float())

        res = run_episodes(act, spec, [0.0], episodes=64, num_envs=32, seed=12345, progress=False)
        print(f"MLP BC {steps} x 80: R^2 vs the behaviour mean {r_squared(pred, mean_actions[ends]):.3f}, "
              f"score {np.mean(res[0.0].returns):.1f}", flush=True)


def main() -> None:
    """See the module docstring."""
    torch.set_num_threads(1)
    dataset = open_dataset(DATASET)
    mean_actions = behaviour_mean_actions(dataset)
    if sys.argv[1:2] == ["--mlp-bc"]:
        score_mlp_bc([int(x) for x in sys.argv[2:]], dataset, mean_actions)
    else:
        for ref in sys.argv[1:]:
            score_checkpoint(ref, dataset, mean_actions)


if __name__ == "__main__":
    main()
