"""Segment-stream throughput on one core: ``SegmentStream`` vs the official DT ``get_batch`` loop.

    .venv/bin/python bench/bench_segments.py --recipe hopper-medium --steps 50000 \
        --out bench/results/segments-cpu.json | tee bench/results/segments-cpu.txt

A Hopper-like Minari dataset is collected first (``collect_recipe("hopper-medium")`` with
the rl-zoo SAC policy, ~50k steps; falls back to ``reacher2d-medium`` when the zoo policy is
missing) into a temporary store, read with ``load_trajectories`` (rtg scale 1000, states
normalised), and then, with ``torch.set_num_threads(1)``, batches of K=20 × 64 segments
are drawn by each contender, *interleaved* (one block of batches each in turn, the order
rotated every repeat):

- ``SegmentStream``   ``lamo_scale.data.segments.SegmentStream`` (vectorised gather of all
                      64 windows at once, left padding by mask).
- ``get_batch (official)``  the official Decision Transformer ``get_batch`` as a plain
                      per-sample Python loop: choose an episode ∝ length, a random start,
                      slice K steps, compute return-to-go with its Python ``discount_cumsum``
                      over the rest of the episode, left-pad each array with ``np.concatenate``,
                      normalise, stack, convert to tensors.
- ``get_batch (precomputed rtg)`` the same loop reading a precomputed return-to-go (the loop
                      without the O(episode length) ``discount_cumsum``): the fairer baseline.

Rate = segments per second (median over repeats) and the ratio over each baseline.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def discount_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    """The official DT helper (a Python loop over the whole array)."""
    out = np.zeros_like(x)
    out[-1] = x[-1]
    for t in reversed(range(x.shape[0] - 1)):
        out[t] = x[t] + gamma * out[t + 1]
    return out


class OfficialGetBatch:
    """The official DT ``experiment.py:get_batch`` over a list of episode dicts (per-sample loop)."""

    def __init__(self, trajectories: list[dict], state_mean, state_std, scale: float, max_len: int,
                 max_ep_len: int = 1000, seed: int = 0, precomputed_rtg: bool = False):
        self.trajectories = trajectories
        self.state_mean, self.state_std = state_mean, state_std
        self.scale, self.max_len, self.max_ep_len = scale, max_len, max_ep_len
        self.precomputed_rtg = precomputed_rtg
        lengths = np.array([len(t["observations"]) for t in trajectories])
        self.p_sample = lengths / lengths.sum()
        self.state_dim = trajectories[0]["observations"].shape[1]
        self.act_dim = trajectories[0]["actions"].shape[1]
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch_size: int):
        max_len, state_dim, act_dim = self.max_len, self.state_dim, self.act_dim
        batch_inds = self.rng.choice(np.arange(len(self.trajectories)), size=batch_size, replace=True,
                                     p=self.p_sample)
        s, a, r, d, rtg, timesteps, mask = [], [], [], [], [], [], []
        for i in range(batch_size):
            traj = self.trajectories[int(batch_inds[i])]
            si = int(self.rng.integers(0, traj["rewards"].shape[0]))
            s.append(traj["observations"][si:si + max_len].reshape(1, -1, state_dim))
            a.append(traj["actions"][si:si + max_len].reshape(1, -1, act_dim))
            r.append(traj["rewards"][si:si + max_len].reshape(1, -1, 1))
            d.append(traj["terminals"][si:si + max_len].reshape(1, -1))
            timesteps.append(np.arange(si, si + s[-1].shape[1]).reshape(1, -1))
            timesteps[-1][timesteps[-1] >= self.max_ep_len] = self.max_ep_len - 1
            if self.precomputed_rtg:
                rtg.append(traj["rtg"][si:si + s[-1].shape[1] + 1].reshape(1, -1, 1))
            else:
                rtg.append(discount_cumsum(traj["rewards"][si:], gamma=1.0)[:s[-1].shape[1] + 1].reshape(1, -1, 1))
            if rtg[-1].shape[1] <= s[-1].shape[1]:
                rtg[-1] = np.concatenate([rtg[-1], np.zeros((1, 1, 1))], axis=1)
            tlen = s[-1].shape[1]
            s[-1] = np.concatenate([np.zeros((1, max_len - tlen, state_dim)), s[-1]], axis=1)
            s[-1] = (s[-1] - self.state_mean) / self.state_std
            a[-1] = np.concatenate([np.ones((1, max_len - tlen, act_dim)) * -10.0, a[-1]], axis=1)
            r[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), r[-1]], axis=1)
            d[-1] = np.concatenate([np.ones((1, max_len - tlen)) * 2, d[-1]], axis=1)
            rtg[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), rtg[-1]], axis=1) / self.scale
            timesteps[-1] = np.concatenate([np.zeros((1, max_len - tlen)), timesteps[-1]], axis=1)
            mask.append(np.concatenate([np.zeros((1, max_len - tlen)), np.ones((1, tlen))], axis=1))
        s = torch.from_numpy(np.concatenate(s, axis=0)).to(dtype=torch.float32)
        a = torch.from_numpy(np.concatenate(a, axis=0)).to(dtype=torch.float32)
        r = torch.from_numpy(np.concatenate(r, axis=0)).to(dtype=torch.float32)
        d = torch.from_numpy(np.concatenate(d, axis=0)).to(dtype=torch.long)
        rtg = torch.from_numpy(np.concatenate(rtg, axis=0)).to(dtype=torch.float32)
        timesteps = torch.from_numpy(np.concatenate(timesteps, axis=0)).to(dtype=torch.long)
        mask = torch.from_numpy(np.concatenate(mask, axis=0))
        return s, a, r, d, rtg, timesteps, mask


def make_dataset(recipe: str, steps: int):
    """Collect (once, into the bench Minari store) and open the dataset; returns (dataset, recipe used)."""
    import minari

    from lamo_scale.data.collect import collect_recipe
    from lamo_scale.data.trajectories import open_dataset

    for name in (recipe, "reacher2d-medium"):
        dataset_id = f"bench/{name.replace('-', '/')}-{steps}-v0"
        if dataset_id in minari.list_local_datasets():
            return open_dataset(dataset_id), name
        try:
            t0 = time.perf_counter()
            collect_recipe(name, num_steps=steps, dataset_id=dataset_id, progress=False)
            print(f"collected {name} ({steps} steps) in {time.perf_counter() - t0:.1f}s -> {dataset_id}")
            return open_dataset(dataset_id), name
        except Exception as err:  # noqa: BLE001 - zoo policy missing etc.: fall back
            print(f"could not collect {name}: {type(err).__name__}: {err}; falling back")
    raise RuntimeError("no dataset could be collected")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="hopper-medium", help="collection recipe (falls back to reacher2d-medium)")
    p.add_argument("--steps", type=int, default=50_000, help="environment steps to collect")
    p.add_argument("--batch", type=int, default=64, help="segments per batch")
    p.add_argument("--context-len", type=int, default=20, help="K")
    p.add_argument("--batches", type=int, default=50, help="batches per timed block")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per contender")
    p.add_argument("--rtg-scale", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the raw results as JSON here")
    args = p.parse_args(argv)
    import logging
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)

    from lamo_scale.data.segments import SegmentStream
    from lamo_scale.data.trajectories import load_trajectories

    info = _common.machine_info()
    print(_common.machine_line(info))
    dataset, used = make_dataset(args.recipe, args.steps)
    index = load_trajectories(dataset, rtg_scale=args.rtg_scale, seed=args.seed)
    # The official loader's input: a list of raw episode dicts + the state statistics.
    trajectories = []
    for ep in dataset.iterate_episodes():
        n = len(ep.rewards)
        rewards = np.asarray(ep.rewards, np.float64)
        trajectories.append({"observations": np.asarray(ep.observations, np.float32)[:n],
                             "actions": np.asarray(ep.actions, np.float32).reshape(n, -1),
                             "rewards": rewards, "terminals": np.asarray(ep.terminations, bool),
                             "rtg": np.cumsum(rewards[::-1])[::-1].copy()})
    mean, std = index.state_stats.mean, index.state_stats.std
    print(f"dataset: {used}, {len(trajectories)} episodes, {index.num_steps} steps, state_dim {index.state_dim}, "
          f"act_dim {index.act_dim}, mean episode length {index.num_steps / len(trajectories):.0f}")

    stream = iter(SegmentStream(index, args.context_len, args.batch, seed=args.seed))
    official = OfficialGetBatch(trajectories, mean, std, args.rtg_scale, args.context_len, seed=args.seed)
    official_pre = OfficialGetBatch(trajectories, mean, std, args.rtg_scale, args.context_len, seed=args.seed,
                                    precomputed_rtg=True)
    contenders = {
        "SegmentStream": lambda: next(stream),
        "get_batch (official)": lambda: official(args.batch),
        "get_batch (precomputed rtg)": lambda: official_pre(args.batch),
    }
    names = list(contenders)
    for name in names:  # warm-up
        for _ in range(3):
            contenders[name]()
    times = {n: [] for n in names}
    for r in range(args.repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = contenders[name]
            t0 = time.perf_counter()
            for _ in range(args.batches):
                fn()
            times[name].append(time.perf_counter() - t0)
    per_block = args.batches * args.batch
    rates = {n: _common.median([per_block / t for t in times[n]]) for n in names}
    rows = [{"contender": n, "segments_per_s": rates[n], "batches_per_s": rates[n] / args.batch,
             "ms_per_batch": 1000.0 * args.batch / rates[n],
             "x_vs_official": rates[n] / rates["get_batch (official)"],
             "x_vs_precomputed": rates[n] / rates["get_batch (precomputed rtg)"],
             "rates": [per_block / t for t in times[n]]} for n in names]
    print(f"\nK {args.context_len}, batch {args.batch}, 1 torch thread; median of {args.repeats} interleaved blocks "
          f"of {args.batches} batches")
    print(_common.table(rows, [("contender", "contender"), ("segments_per_s", "segments/s"),
                               ("ms_per_batch", "ms/batch"), ("x_vs_official", "x vs official"),
                               ("x_vs_precomputed", "x vs precomputed-rtg loop")]))
    _common.save_json(args.out, {"machine": info, "args": vars(args), "dataset": used,
                                 "episodes": len(trajectories), "steps": index.num_steps, "rows": rows})


if __name__ == "__main__":
    main()
