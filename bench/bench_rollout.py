"""Rollout workers: a worker's evaluation throughput, and training with evaluation inline vs beside it.

    .venv/bin/python bench/bench_rollout.py --threads 1 \
        --out bench/results/rollout-cpu.json | tee bench/results/rollout-cpu.txt

Part 1 (throughput): a worker evaluates with ``rollout.acting.run_episodes`` (N episodes, one
forward per step for all of them); this reuses ``bench_eval.run_config`` (tiny size) for
N = 1, 8, 32, 64 against the sequential batch-1 loop, interleaved, medians.

Part 2 (wall clock), against a local ``mlflow server`` (sqlite, served artifacts):

- ``inline``   train a tiny policy, then evaluate each checkpoint in the same process
               (``evaluate_checkpoint``, all targets, logged to the run), one after another;
- ``workers``  the same training with ``lamo-scale rollout --workers W --watch`` started
               beside it; the clock stops when training AND the workers are done
               (every checkpoint × target evaluated and logged).

Both contenders do the same training and the same evaluations; repeated ``--repeats`` times,
alternating which goes first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

import bench_eval  # noqa: E402


def _train_overrides(args, tmp: Path, uri: str, experiment: str, run: str) -> list[str]:
    return ["model.backbone=tiny-gpt2", "model.pretrained=false", "model.tiny_layers=3", "model.tiny_width=128",
            "model.tiny_heads=1", "model.max_timestep=128", f"data.dataset={args.dataset}", "data.context_len=20",
            "data.rtg_scale=100", "loss.language_weight=0", f"train.steps={args.train_steps}",
            "train.batch_size=16", "train.warmup_steps=5", "train.log_every=5",
            f"train.checkpoint_every={args.checkpoint_every}", "train.keep_checkpoints=0",
            f"train.threads={args.threads or 1}", f"train.output_dir={tmp}/runs/{{run_name}}",
            f"tracking.uri={uri}", f"tracking.experiment={experiment}", f"tracking.run_name={run}",
            f"eval.target_returns={args.targets}", f"eval.episodes={args.episodes}",
            f"eval.num_envs={args.episodes}", f"eval.max_episode_steps={args.horizon}"]


def inline(args, tmp: Path, uri: str, tag: str) -> tuple[float, float]:
    """Train, then evaluate every checkpoint in this process; (training done, all done) wall seconds."""
    from lamo_scale import checkpoint as ckpt
    from lamo_scale.config import load_config
    from lamo_scale.rollout.evaluate import evaluate_checkpoint
    from lamo_scale.train import train

    t0 = time.perf_counter()
    result = train(load_config(None, _train_overrides(args, tmp, uri, f"inline-{tag}", "run")))
    trained = time.perf_counter() - t0
    for path in ckpt.list_checkpoints(result.run_dir / "checkpoints"):
        evaluate_checkpoint(path, progress=False, tracking_uri=uri)
    return trained, time.perf_counter() - t0


def beside(args, tmp: Path, uri: str, tag: str) -> tuple[float, float]:
    """Train with rollout workers watching the experiment; (training done, all done) wall seconds."""
    from lamo_scale.config import load_config
    from lamo_scale.train import train

    experiment = f"workers-{tag}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    t0 = time.perf_counter()
    workers = subprocess.Popen(
        [sys.executable, "-m", "lamo_scale.cli", "rollout", "--tracking-uri", uri, "--experiment", experiment,
         "--workers", str(args.workers), "--watch", "--poll-s", "1", "--no-registry",
         "--cache-dir", str(tmp / "cache")], env=env, stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"workers-{tag}.log", "w"))
    train(load_config(None, _train_overrides(args, tmp, uri, experiment, "run")))
    trained = time.perf_counter() - t0
    if workers.wait(timeout=1800) != 0:
        raise RuntimeError(f"rollout workers failed, see {tmp}/workers-{tag}.log")
    return trained, time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", default="1,8,32,64", help="parallel-episode counts N for part 1")
    p.add_argument("--repeats-tiny", type=int, default=3, help="timed runs per contender in part 1")
    p.add_argument("--train-steps", type=int, default=60, help="training steps in part 2")
    p.add_argument("--checkpoint-every", type=int, default=10, help="checkpoint interval in part 2")
    p.add_argument("--targets", default="[90, 50]", help="target returns in part 2")
    p.add_argument("--episodes", type=int, default=16, help="episodes per target in part 2 (all in parallel)")
    p.add_argument("--horizon", type=int, default=100, help="episode length in part 2")
    p.add_argument("--workers", type=int, default=2, help="rollout worker processes in part 2")
    p.add_argument("--repeats", type=int, default=1, help="repeats of each part-2 contender")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the trainer / part 1")
    p.add_argument("--skip-throughput", action="store_true", help="only part 2")
    p.add_argument("--out", default=None, help="write the raw results as JSON here")
    args = p.parse_args(argv)
    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    info = _common.machine_info()
    print(_common.machine_line(info))

    rows = []
    if not args.skip_throughput:
        ns = argparse.Namespace(num_envs=[int(x) for x in args.num_envs.split(",")], horizon_tiny=100,
                                seq_episodes_tiny=3, repeats_tiny=args.repeats_tiny, env_steps=2000,
                                context_len=20, seed=0, max_envs_small=0)
        import lamo_scale.envs  # noqa: F401  (registers LaMoReacher2d-v1)

        rows = bench_eval.run_config("tiny", "fp32", ns)
        print("\npart 1: worker evaluation throughput, tiny policy, LaMoReacher2d-v1, K 20")
        print(_common.table(rows, [("contender", "contender"), ("env_steps", "steps/run"),
                                   ("env_steps_per_s", "env-steps/s"), ("speedup_vs_sequential", "x vs sequential")]))

    from lamo_scale.data.collect import collect_recipe
    from lamo_scale.data.trajectories import DatasetNotFoundError, open_dataset
    from lamo_scale.rollout.server import LocalServer

    args.dataset = "bench/reacher2d/medium-v1"
    try:
        open_dataset(args.dataset)
    except DatasetNotFoundError:
        collect_recipe("reacher2d-medium", num_steps=3000, dataset_id=args.dataset, progress=False)
    walls = {"inline": [], "workers": []}
    trains = {"inline": [], "workers": []}
    with tempfile.TemporaryDirectory() as tmpdir, LocalServer(Path(tmpdir) / "server") as server:
        for r in range(args.repeats):
            order = ["inline", "workers"] if r % 2 == 0 else ["workers", "inline"]
            for name in order:
                tmp = Path(tmpdir) / f"{name}-{r}"
                tmp.mkdir()
                fn = inline if name == "inline" else beside
                trained, wall = fn(args, tmp, server.uri, str(r))
                trains[name].append(trained)
                walls[name].append(wall)
                print(f"  repeat {r + 1}: {name} trained at {trained:.1f} s, all done at {wall:.1f} s", flush=True)
    n_ckpt = args.train_steps // args.checkpoint_every
    from lamo_scale.rollout.jobs import parse_targets

    n_targets = len(parse_targets(args.targets))
    wall_rows = [{"contender": name, "train_s": _common.median(trains[name]), "wall_s": _common.median(w), "walls": w,
                  "vs_inline": _common.median(walls["inline"]) / _common.median(w)} for name, w in walls.items()]
    print(f"\npart 2: {args.train_steps} training steps, {n_ckpt} checkpoints x {n_targets} targets x "
          f"{args.episodes} episodes of {args.horizon} steps; workers = {args.workers}")
    print(_common.table(wall_rows, [("contender", "contender"), ("train_s", "training done s"),
                                    ("wall_s", "all evaluated s"), ("vs_inline", "x vs inline")]))
    _common.save_json(args.out, {"machine": info, "args": vars(args), "throughput": rows, "wall": wall_rows})


if __name__ == "__main__":
    main()
