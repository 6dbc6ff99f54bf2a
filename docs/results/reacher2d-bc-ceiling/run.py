"""How far above its behaviour data can a policy cloned from `lamo/reacher2d/medium-v1` go? (issue 11)

    .venv/bin/python docs/results/reacher2d-bc-ceiling/run.py > docs/results/reacher2d-bc-ceiling/output.txt

Plain MLP behaviour cloning (12 -> 256 -> 256 -> 2, ReLU, tanh, MSE, Adam 1e-3, batch 100, 20,000
steps; the settings of d3rlpy's BC that `lamo-scale baseline --algo bc` uses) on the quickstart's data,
trained on every episode and on the episodes whose return is at least the data's 50th / 70th
percentile ("filtered BC", the return-conditioning ceiling a Decision Transformer is usually
compared with). States normalised by the whole dataset's statistics. Each policy acts through the
project's acting loop (`run_episodes`, the last state of the window) on 64 evaluation episodes
(eval seed 12345, the quickstart's). Recipe and seeds (0, 1, 2) fixed before running.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import _common  # noqa: E402

_common.offline_env(str(Path.home() / ".minari" / "datasets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lamo_scale.data.trajectories import StateStats, open_dataset  # noqa: E402
from lamo_scale.rollout.acting import ActingSpec, run_episodes  # noqa: E402

DATASET = "lamo/reacher2d/medium-v1"
STEPS, BATCH, LR = 20_000, 100, 1e-3


def train_bc(states: np.ndarray, actions: np.ndarray, seed: int) -> torch.nn.Module:
    """An MLP trained by MSE on (state, action) pairs."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(states.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, actions.shape[1]), torch.nn.Tanh())
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    s, a = torch.from_numpy(states), torch.from_numpy(actions)
    g = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        idx = torch.randint(0, len(s), (BATCH,), generator=g)
        loss = ((net(s[idx]) - a[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def main() -> None:
    """Train and evaluate each subset x seed; print a table."""
    torch.set_num_threads(1)
    ds = open_dataset(DATASET)
    episodes = list(ds.iterate_episodes())
    returns = np.array([ep.rewards.sum() for ep in episodes])
    all_states = np.concatenate([ep.observations[:-1] for ep in episodes]).astype(np.float32)
    stats = StateStats(all_states.mean(0), all_states.std(0) + 1e-6)
    spec = ActingSpec("LaMoReacher2d-v1", stats, rtg_scale=10.0, context_len=1)
    print(f"{DATASET}: {len(episodes)} episodes, behaviour score {returns.mean():.2f}")
    rows = []
    for label, q in (("all episodes", 0), ("return >= 50th pct", 50), ("return >= 70th pct", 70)):
        cut = np.percentile(returns, q) if q else -np.inf
        keep = [ep for ep, r in zip(episodes, returns) if r >= cut]
        s = stats.normalize(np.concatenate([ep.observations[:-1] for ep in keep]))
        a = np.concatenate([ep.actions for ep in keep]).astype(np.float32)
        scores = []
        for seed in (0, 1, 2):
            net = train_bc(s, a, seed)

            def act(states, actions, returns_to_go, timesteps, attention_mask, net=net):
                return net(states[:, -1].float())

            res = run_episodes(act, spec, [0.0], episodes=64, num_envs=32, seed=12345, progress=False)
            scores.append(float(np.mean(res[0.0].returns)))  # Reacher2d: normalised score = return
        rows.append((label, len(keep), float(np.mean([r for r in returns if r >= cut])), scores))
        print(f"{label:20s} {len(keep):4d} episodes (their mean return {rows[-1][2]:5.1f}): "
              f"score {np.mean(scores):5.1f} ± {np.std(scores, ddof=1):4.1f}  seeds {scores}", flush=True)


if __name__ == "__main__":
    main()
