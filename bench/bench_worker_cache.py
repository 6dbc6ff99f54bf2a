"""A rollout worker evaluating a run's checkpoints: time spent beyond the acting itself.

    # six checkpoints of the quickstart (SmolLM2-135M, bf16, LoRA), then the bench:
    .venv/bin/lamo-scale train --config quickstart train.steps=60 train.checkpoint_every=10 \
        train.output_dir=/tmp/qs6
    .venv/bin/python bench/bench_worker_cache.py --run-dir /tmp/qs6 \
        --out bench/results/worker_cache-cpu.json | tee bench/results/worker_cache-cpu.txt

A worker takes one job per (checkpoint, target return). For each job, three contenders, interleaved
(job by job, the order rotated), on the same episodes:

- ``acting``   the policy already loaded: only ``rollout.acting.run_episodes`` (env creation,
               the forward passes, the env steps) is timed: the floor;
- ``rebuild``  ``evaluate_checkpoint`` as the worker called it before: the policy rebuilt for
               every job (backbone loaded, frozen weights hashed, adapters loaded);
- ``cached``   the same with the worker's ``PolicyCache``: the backbone built once, each
               checkpoint's trainable tensors swapped in.

Printed: each contender's total seconds over all jobs, its ratio to ``acting`` (issue bar:
``cached`` <= 1.2x), and the time to make the vector envs alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

import torch  # noqa: E402

from lamo_scale import checkpoint as ckpt  # noqa: E402
from lamo_scale.rollout.acting import make_eval_env, run_episodes  # noqa: E402
from lamo_scale.rollout.evaluate import (PolicyCache, acting_spec, acts_in_bf16, evaluate_checkpoint,  # noqa: E402
                                         load_policy)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    """Time the three contenders over every (checkpoint, target) job of a run; print totals and ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a training run dir with several checkpoints")
    ap.add_argument("--checkpoints", type=int, default=6, help="evaluate the last N checkpoints")
    ap.add_argument("--episodes", type=int, default=None, help="episodes per target (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = _common.machine_info()
    print(_common.machine_line(info))
    checkpoints = [ckpt.verify(p) for p in ckpt.list_checkpoints(Path(args.run_dir) / "checkpoints")]
    checkpoints = checkpoints[-args.checkpoints:]
    meta = checkpoints[0].meta
    cfg_eval = meta["config"]["eval"]
    targets = meta.get("target_returns") or cfg_eval["target_returns"]
    episodes = args.episodes or cfg_eval["episodes"]
    num_envs = cfg_eval["num_envs"]
    spec = acting_spec(meta, cfg_eval.get("max_episode_steps"))
    print(f"{len(checkpoints)} checkpoints x {len(targets)} targets = {len(checkpoints) * len(targets)} jobs, "
          f"{episodes} episodes each, {num_envs} envs, backbone {meta['config']['model']['backbone']}")

    totals = {"acting": 0.0, "rebuild": 0.0, "cached": 0.0}
    cache = PolicyCache()
    bf16 = None
    env_s = []
    jobs = [(c, t) for c in checkpoints for t in targets]
    for i, (checkpoint, target) in enumerate(jobs):
        policy, cfg = load_policy(checkpoint)
        bf16 = acts_in_bf16(cfg)
        dtype = torch.bfloat16 if bf16 else None

        def acting():
            run_episodes(policy.act, spec, [target], episodes, num_envs, 0, progress=False, autocast_dtype=dtype)

        contenders = {
            "acting": acting,
            "rebuild": lambda: evaluate_checkpoint(checkpoint, episodes=episodes, target_returns=[target],
                                                   log_to_mlflow=False, progress=False),
            "cached": lambda: evaluate_checkpoint(checkpoint, episodes=episodes, target_returns=[target],
                                                  log_to_mlflow=False, progress=False, cache=cache),
        }
        names = list(contenders)
        order = names[i % 3:] + names[:i % 3]
        for name in order:
            totals[name] += _timed(contenders[name])
        env_s.append(_timed(lambda: [make_eval_env(spec.env, spec.max_episode_steps).close()
                                     for _ in range(min(num_envs, episodes))]))
        del policy
        print(f"job {i + 1}/{len(jobs)}: step {checkpoint.step} target {target:g}: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in totals.items()), flush=True)
    rows = [{"contender": k, "seconds": v, "ratio": v / totals["acting"]} for k, v in totals.items()]
    print(_common.table(rows, [("contender", "contender"), ("seconds", "total s"), ("ratio", "x acting")]))
    print(f"making the vector envs alone: {sum(env_s):.2f} s over all jobs "
          f"({100 * sum(env_s) / totals['acting']:.1f} % of acting); cache: {cache.builds} build(s), "
          f"{cache.swaps} swaps; acting in {'bf16' if bf16 else 'fp32'}")
    _common.save_json(args.out, {"machine": info, "jobs": len(jobs), "episodes": episodes, "num_envs": num_envs,
                                 "totals_s": totals, "env_creation_s": sum(env_s),
                                 "cache": {"builds": cache.builds, "swaps": cache.swaps}})


if __name__ == "__main__":
    main()
