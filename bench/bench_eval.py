"""Evaluation throughput: batched acting over N parallel episodes vs the sequential batch-1 loop.

    .venv/bin/python bench/bench_eval.py --sizes tiny,small --num-envs 1,8,32 \
        --out bench/results/eval-cpu.json | tee bench/results/eval-cpu.txt

Env: ``LaMoReacher2d-v1`` (obs 12, act 2, episodes of 100 steps that never terminate early).
Policy: the LaMo policy (frozen random-init tiny-gpt2 + LoRA + MLP embeddings/head), eval
mode, K = 20, identity state statistics, target return 100 (rtg scale 100).

Contenders, timed *interleaved* (one run of each in turn, order rotated every repeat):

- ``sequential``  the official LaMo/DT way, written here as a plain loop: one env, one
                  episode after another; each step the growing history tensors are
                  ``torch.cat``-ed, the last K steps left-padded to K, and the policy is run on
                  a batch of 1.
- ``batched N``   ``lamo_scale.rollout.acting.run_episodes`` with N envs in a ``SyncVectorEnv``
                  and N episodes: every step is ONE forward for all N episodes.
- ``env only``    the env stepped with random actions (the floor the policy sits on).

Rate = environment steps / wall seconds (median over repeats); the speed-up is each
contender's rate over the sequential loop's rate at the same size and precision.

Limits (printed per size and precision, issue 12): every env-step forwards a full window of
T = 3·K − 1 tokens (the last action token is not fed), ``window FLOP = 2·N·T + 4·L·d·T²`` (N = transformer-block weights, LoRA and the small
embedding/head MLPs left out), so the **compute limit** is the 2048² matmul rate of that dtype,
measured in the same run with the same threads, divided by the window FLOP; the **env limit** is
the env-only rate; acting does both in turn, so the **combined limit** is
``1 / (1 / compute + 1 / env)``. Each batched contender's "of limit" is its rate over the combined
limit, "of compute limit" its rate over the compute limit alone (issue 12's bar: ≥ 70 %). GPT-2-small
steps cost ~0.1 s per forward on 2 CPU cores, so ``--horizon-small`` (default 10) caps its
episodes (every step still uses a full K=20 window: the cost per step does not depend on t).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_train_step as bts  # noqa: E402

_common.offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZES = {"tiny": (3, 128, 1), "small": (12, 768, 12)}
ENV_ID = "LaMoReacher2d-v1"
RTG_SCALE = 100.0
TARGET = 100.0


def build(size: str, state_dim: int, act_dim: int, low, high, seed: int):
    from lamo_scale.config import load_config
    from lamo_scale.model.policy import build_policy

    layers, width, heads = SIZES[size]
    cfg = load_config(None, ["model.backbone=tiny-gpt2", "model.pretrained=false",
                             f"model.tiny_layers={layers}", f"model.tiny_width={width}",
                             f"model.tiny_heads={heads}"])
    policy, _ = build_policy(cfg.model, state_dim, act_dim, low, high, seed=seed)
    return policy.eval()


def sequential_loop(policy, stats, k: int, episodes: int, horizon: int, seed: int, autocast_dtype,
                    device: str = "cpu"):
    """Official-style evaluation: batch 1, one env, one episode after another. Returns (steps, returns).

    The history lives on the host, as in the official loop; each window is copied to ``device``."""
    from lamo_scale.rollout.acting import make_eval_env

    env = make_eval_env(ENV_ID, horizon)
    state_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    steps, returns = 0, []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        states = torch.from_numpy(stats.normalize(obs.reshape(1, state_dim)))
        actions = torch.zeros((0, act_dim), dtype=torch.float32)
        rtg = torch.tensor([[TARGET / RTG_SCALE]], dtype=torch.float32)
        timesteps = torch.zeros((1, 1), dtype=torch.long)
        ep_return = 0.0
        for t in range(horizon):
            actions = torch.cat([actions, torch.zeros((1, act_dim))], dim=0)
            s, a, r, ts = states[-k:], actions[-k:], rtg[-k:], timesteps[0, -k:]
            pad = k - s.shape[0]
            mask = torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(s.shape[0], dtype=torch.long)])
            s = torch.cat([torch.zeros((pad, state_dim)), s]).reshape(1, k, state_dim)
            a = torch.cat([torch.zeros((pad, act_dim)), a]).reshape(1, k, act_dim)
            r = torch.cat([torch.zeros((pad, 1)), r]).reshape(1, k, 1)
            ts = torch.cat([torch.zeros(pad, dtype=torch.long), ts]).reshape(1, k)
            with torch.inference_mode(), torch.autocast(torch.device(device).type,
                                                        dtype=autocast_dtype or torch.bfloat16,
                                                        enabled=autocast_dtype is not None):
                window = [x.to(device) for x in (s, a, r, ts, mask.reshape(1, k))]
                action = policy.act(*window).float()[0].cpu()
            action = action.clamp(torch.from_numpy(low), torch.from_numpy(high))
            actions[-1] = action
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            ep_return += float(reward)
            steps += 1
            states = torch.cat([states, torch.from_numpy(stats.normalize(obs.reshape(1, state_dim)))], dim=0)
            rtg = torch.cat([rtg, (rtg[-1] - reward / RTG_SCALE).reshape(1, 1).float()], dim=0)
            timesteps = torch.cat([timesteps, torch.full((1, 1), t + 1, dtype=torch.long)], dim=1)
            if terminated or truncated:
                break
        returns.append(ep_return)
    env.close()
    return steps, returns


def env_only(steps: int, seed: int) -> int:
    from lamo_scale.rollout.acting import make_eval_env

    env = make_eval_env(ENV_ID)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    env.close()
    return steps


def acting_limits(policy, size: str, precision: str, k: int, env_rate: float) -> dict:
    """Compute, env and combined upper bounds on env-steps/s (module docstring)."""
    layers, width, _ = SIZES[size]
    n = bts.block_params(policy.transformer.h)
    tokens = 3 * k - 1  # the window the policy forwards: the last action token is not fed
    window = 2 * n * tokens + 4 * layers * width * tokens ** 2
    peak = _common.matmul_peak("bfloat16" if precision == "bf16" else "float32")
    compute = peak / window
    return {"window_gflop": window / 1e9, "peak_gflops": peak / 1e9, "compute": compute, "env": env_rate,
            "combined": 1.0 / (1.0 / compute + 1.0 / env_rate)}


def run_config(size: str, precision: str, args) -> list[dict]:
    from lamo_scale.data.trajectories import StateStats
    from lamo_scale.rollout.acting import ActingSpec, make_eval_env, run_episodes

    probe = make_eval_env(ENV_ID)
    state_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    low, high = probe.action_space.low, probe.action_space.high
    probe.close()
    policy = build(size, state_dim, act_dim, low, high, args.seed)
    stats = StateStats(np.zeros(state_dim, np.float32), np.ones(state_dim, np.float32))
    horizon = args.horizon_small if size == "small" else args.horizon_tiny
    seq_episodes = args.seq_episodes_small if size == "small" else args.seq_episodes_tiny
    dtype = torch.bfloat16 if precision == "bf16" else None
    spec = ActingSpec(ENV_ID, stats, RTG_SCALE, args.context_len, max_episode_steps=horizon)
    num_envs = [n for n in args.num_envs if size != "small" or n <= args.max_envs_small]

    contenders = {}

    def seq():
        steps, returns = sequential_loop(policy, stats, args.context_len, seq_episodes, horizon, args.seed, dtype)
        return steps, returns[0]

    contenders["sequential (batch 1)"] = seq
    for n in num_envs:
        def batched(n=n):
            res = run_episodes(policy.act, spec, [TARGET], episodes=n, num_envs=n, seed=args.seed, device="cpu",
                               progress=False, autocast_dtype=dtype)
            stats_ = res[TARGET]
            return int(sum(stats_.lengths)), stats_.returns[0]
        contenders[f"batched N={n}"] = batched
    contenders["env only (random actions)"] = lambda: (env_only(args.env_steps, args.seed), None)

    names = list(contenders)
    times = {n: [] for n in names}
    steps = {}
    first_return = {}
    # warm-up: every contender at tiny size; at small size only the (cheap) sequential loop,
    # which warms the same model and allocator (a batched small run costs minutes).
    for name in (names if size != "small" else names[:1]):
        contenders[name]()
    reps = args.repeats_small if size == "small" else args.repeats_tiny
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            steps[name], first_return[name] = contenders[name]()
            times[name].append(time.perf_counter() - t0)
        print(f"  [{size}/{precision}] repeat {r + 1}/{reps}: "
              + ", ".join(f"{n} {steps[n] / times[n][-1]:.1f}/s" for n in names), flush=True)
    seq_rate = _common.median([steps[names[0]] / t for t in times[names[0]]])
    limits = acting_limits(policy, size, precision, args.context_len,
                           _common.median([steps[names[-1]] / t for t in times[names[-1]]]))
    print(f"  [{size}/{precision}] window {limits['window_gflop']:.3f} GFLOP, matmul peak "
          f"{limits['peak_gflops']:.0f} GFLOP/s: compute limit {limits['compute']:.1f}, env limit "
          f"{limits['env']:.0f}, combined {limits['combined']:.1f} env-steps/s", flush=True)
    rows = []
    for name in names:
        rates = [steps[name] / t for t in times[name]]
        rate = _common.median(rates)
        rows.append({"size": size, "precision": precision, "contender": name, "env_steps": steps[name],
                     "horizon": horizon, "env_steps_per_s": rate, "ms_per_env_step": 1000.0 / rate,
                     "speedup_vs_sequential": None if name.startswith("env only") else rate / seq_rate,
                     "combined_limit": limits["combined"],
                     "of_limit": rate / limits["combined"] if name.startswith("batched") else None,
                     "of_compute": rate / limits["compute"] if name.startswith("batched") else None,
                     "limits": limits,
                     "rates": rates, "first_episode_return": first_return[name]})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,small", help="comma list of: tiny, small")
    p.add_argument("--num-envs", default="1,8,32", help="comma list of parallel-episode counts N (e.g. 1,8,32,64)")
    p.add_argument("--max-envs-small", type=int, default=32, help="largest N tried at GPT-2-small size")
    p.add_argument("--precisions-tiny", default="fp32", help="precisions at tiny size (fp32, bf16)")
    p.add_argument("--precisions-small", default="fp32,bf16", help="precisions at GPT-2-small size")
    p.add_argument("--horizon-tiny", type=int, default=100, help="episode length at tiny size")
    p.add_argument("--horizon-small", type=int, default=10, help="episode length cap at GPT-2-small size")
    p.add_argument("--seq-episodes-tiny", type=int, default=3, help="episodes per sequential run, tiny")
    p.add_argument("--seq-episodes-small", type=int, default=2, help="episodes per sequential run, small")
    p.add_argument("--repeats-tiny", type=int, default=5, help="timed runs per contender, tiny")
    p.add_argument("--repeats-small", type=int, default=2, help="timed runs per contender, small")
    p.add_argument("--env-steps", type=int, default=2000, help="steps of the env-only contender")
    p.add_argument("--context-len", type=int, default=20, help="K")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the raw results as JSON here")
    args = p.parse_args(argv)
    args.num_envs = [int(x) for x in args.num_envs.split(",") if x]
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging
    logging.disable(logging.WARNING)
    import lamo_scale.envs  # noqa: F401  (registers LaMoReacher2d-v1)

    info = _common.machine_info()
    print(_common.machine_line(info))
    rows = []
    for size in [s for s in args.sizes.split(",") if s]:
        precs = args.precisions_small if size == "small" else args.precisions_tiny
        for precision in [x for x in precs.split(",") if x]:
            rows += run_config(size, precision, args)
    print(f"\n{ENV_ID}, K {args.context_len}, LaMo policy (LoRA, MLP embeddings); env-steps/s = median over "
          f"interleaved repeats; speed-up vs the sequential batch-1 loop at the same size and precision")
    print(_common.table(rows, [("size", "size"), ("precision", "prec"), ("contender", "contender"),
                               ("horizon", "horizon"), ("env_steps", "steps/run"),
                               ("env_steps_per_s", "env-steps/s"), ("ms_per_env_step", "ms/env-step"),
                               ("speedup_vs_sequential", "x vs sequential"),
                               ("combined_limit", "limit /s"), ("of_limit", "of limit"),
                               ("of_compute", "of compute limit"),
                               ("first_episode_return", "ep0 return")]))
    _common.save_json(args.out, {"machine": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
