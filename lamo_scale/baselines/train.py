"""Train a d3rlpy baseline (BC, CQL, IQL, TD3+BC) on a LaMo run's data and evaluate it the LaMo way.

    lamo-scale baseline --algo iql --dataset lamo/hopper/medium-v0 --steps 5000
    lamo-scale baseline --algo cql --config paper/hopper-medium-r0.1-lamo train.seed=1   # a task's data/eval
    python -m lamo_scale.baselines --config paper/hopper-medium-r1-lamo --config baselines/td3bc  # what sweeps run

One job: open the dataset with the project's loader (:func:`load_trajectories`: same data-ratio
subset, same state normalisation), hand those arrays to d3rlpy (:mod:`lamo_scale.baselines.algos`),
take ``train.steps`` gradient steps with the recipe's published hyper-parameters, write project
checkpoints (``meta.json`` + the d3rlpy model, hashed, atomic) and log them as MLflow artifacts,
then roll every checkpoint out with :func:`lamo_scale.rollout.evaluate.evaluate_checkpoint`: the
same envs, seeds, episodes, D4RL normalisation and metric names (``eval/0/normalized_score``,
``eval/best_normalized_score``) at the checkpoint's step as a LaMo run. Run tags and params use the
LaMo names too (``recipe``, ``dataset``, ``variant``, ``data.data_ratio``, ``train.seed``, ...).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import gymnasium as gym

from lamo_scale import checkpoint as ckpt
from lamo_scale.baselines.config import (ALGO_NAMES, ALGOS, BaselineConfig, baseline_recipe, help_epilog,
                                         is_baseline_recipe, load_baseline_config)
from lamo_scale.baselines.policy import KIND, MODEL_FILE
from lamo_scale.config import ConfigError, dump_yaml, flatten, to_dict

log = logging.getLogger("lamo_scale.baselines")


class BaselineInputError(ConfigError):
    """Input a baseline cannot train on (refused before anything is built), with the valid choices."""


@dataclass
class BaselineResult:
    """What a finished baseline job leaves behind."""

    run_dir: Path
    checkpoint: Optional[Path]
    run_id: Optional[str]
    steps_done: int = 0
    steps_per_s: float = float("nan")
    """Gradient steps per second over the whole run (minibatch sampling included, checkpoints not)."""
    reports: dict = field(default_factory=dict)
    """Checkpoint step -> its :class:`EvalReport` (when train.evaluate)."""


def check_action_space(dataset, algo: str) -> None:
    """Refuse datasets whose actions the continuous-control baselines cannot act in."""
    space = dataset.action_space
    if isinstance(space, gym.spaces.Box):
        return
    from lamo_scale.data.collect import list_local

    continuous = []
    for ds_id in list_local():
        try:
            from lamo_scale.data.trajectories import open_dataset

            if isinstance(open_dataset(ds_id).action_space, gym.spaces.Box):
                continuous.append(ds_id)
        except Exception:  # an unreadable dataset is not a choice
            continue
    raise BaselineInputError(
        f"dataset {dataset.id} has {space} actions, but {algo} ({ALGO_NAMES[algo]}) needs continuous (Box) "
        f"actions, as do all the baselines here ({', '.join(ALGOS)}), LaMo and its trajectory index. "
        f"Valid choices: a continuous-action dataset"
        + (f" such as {', '.join(continuous[:8])}" if continuous else " (lamo-scale collect --list makes them)"))


def _save(algo, cfg: BaselineConfig, meta: dict, run_dir: Path, step: int, tracker) -> Path:
    checkpoints = run_dir / "checkpoints"
    staging = ckpt.staging_dir(checkpoints, step)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    algo.save(str(staging / MODEL_FILE))
    path = ckpt.commit_checkpoint(staging, step, {}, {"step": step, "rng": ckpt.rng_state()}, meta,
                                  keep=cfg.train.keep_checkpoints)
    tracker.log_artifacts(path, f"checkpoints/{path.name}")
    tracker.set_tags({"last_checkpoint_step": step, "last_checkpoint": str(path.resolve())})
    return path


def train_baseline(cfg: BaselineConfig) -> BaselineResult:
    """Train, checkpoint and (``train.evaluate``) evaluate one baseline as configured."""
    import torch

    from lamo_scale.baselines.algos import build_algo, import_d3rlpy, prepare, to_d3rlpy_dataset
    from lamo_scale.baselines.policy import load_algo
    from lamo_scale.data.trajectories import load_trajectories, open_dataset
    from lamo_scale.tracking import Tracker, run_url
    from lamo_scale.train import check_compatible, dataset_meta, find_resume, resolve_names, subset_record

    d3rlpy = import_d3rlpy()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    experiment, run_name, run_dir = resolve_names(cfg)
    dataset = open_dataset(cfg.data.dataset, cfg.data.download)
    check_action_space(dataset, cfg.algo)
    index = load_trajectories(dataset, cfg.data.rtg_scale, cfg.data.data_ratio, cfg.data.ratio_seed,
                              cfg.data.normalize_states)
    meta = dataset_meta(dataset, index, cfg)
    meta.update(kind=KIND, algo=cfg.algo, context_len=1, target_returns=list(cfg.eval.target_returns))
    mdp = to_d3rlpy_dataset(index)
    resume = find_resume(cfg, run_dir)
    start_step, run_id = 0, None
    d3rlpy.seed(cfg.train.seed)
    if resume is not None:
        check_compatible(resume, meta)
        if resume.meta.get("algo") != cfg.algo:
            raise ckpt.CheckpointError(f"checkpoint {resume.path} is a {resume.meta.get('algo')} baseline, not {cfg.algo}")
        run_dir = resume.path.parent.parent
        algo = load_algo(resume, cfg.train.device)
        start_step, run_id = resume.step, resume.meta.get("mlflow_run_id")
        algo._grad_step = start_step  # d3rlpy's update counter (TD3+BC's delayed actor updates read it)
        ckpt.set_rng_state(resume.trainer_state()["rng"])
        log.info("resuming %s from %s at step %d", cfg.algo, resume.path, start_step)
    else:
        algo = build_algo(cfg, index.action_low, index.action_high)
        prepare(algo, mdp)

    tracker = Tracker(cfg.tracking.uri, experiment, enabled=cfg.tracking.enabled)
    tags = {"recipe": cfg.recipe, "dataset": index.dataset_id, "backbone": "none", "algo": cfg.algo,
            "variant": cfg.algo, **cfg.tracking.tags}
    run_id = tracker.start(run_name, run_id=run_id, tags=tags)
    if resume is None and tracker.enabled:
        tracker.log_params(flatten(cfg))
        tracker.log_text(dump_yaml(cfg), "config.yaml")
        subset = subset_record(index, cfg)
        tracker.log_text(json.dumps(subset, indent=1), "data_subset.json")
        n_params = sum(p.numel() for m in vars(algo.impl.modules).values() if isinstance(m, torch.nn.Module)
                       for p in m.parameters())
        tracker.log_params({"data.subset_episodes": subset["episodes"], "data.subset_sha256": subset["sha256"],
                            "data.episodes": len(index.episode_lengths), "data.steps": index.num_steps,
                            "baseline.library": f"d3rlpy=={d3rlpy.__version__}", "policy.trainable_params": n_params})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    log.info("%s on %s (%d steps of data); run dir %s; MLflow: %s", cfg.algo, index.dataset_id, index.num_steps,
             run_dir, run_url(cfg.tracking.uri, run_id) if run_id else "off")
    meta.update(config=to_dict(cfg), mlflow_run_id=run_id, tracking_uri=cfg.tracking.uri, experiment=experiment,
                d3rlpy_version=d3rlpy.__version__)

    result = BaselineResult(run_dir=run_dir, checkpoint=resume.path if resume else None, run_id=run_id,
                            steps_done=start_step)
    batch_size = cfg.params.batch_size
    status, train_seconds = "FAILED", 0.0
    try:
        window: dict[str, list[float]] = defaultdict(list)
        window_start = time.perf_counter()
        for step in range(start_step + 1, cfg.train.steps + 1):
            for key, value in algo.update(mdp.sample_transition_batch(batch_size)).items():
                window[key].append(float(value))
            result.steps_done = step
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                train_seconds += elapsed
                n = cfg.train.log_every if step % cfg.train.log_every == 0 else step % cfg.train.log_every
                metrics = {f"train/{k}": sum(v) / len(v) for k, v in window.items()}
                metrics.update({"train/steps_per_s": n / elapsed, "train/samples_per_s": n * batch_size / elapsed})
                tracker.log_metrics(metrics, step)
                window.clear()
                window_start = time.perf_counter()
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                result.checkpoint = _save(algo, cfg, meta, run_dir, step, tracker)
                window_start = time.perf_counter()
        if result.checkpoint is None or ckpt.verify(result.checkpoint).step != cfg.train.steps:
            result.checkpoint = _save(algo, cfg, meta, run_dir, cfg.train.steps, tracker)  # resumed at the end
        status = "FINISHED"
    finally:
        tracker.end(status)
    done = result.steps_done - start_step
    result.steps_per_s = done / train_seconds if done and train_seconds > 0 else float("nan")
    if cfg.train.evaluate:
        from lamo_scale.rollout.evaluate import evaluate_checkpoint

        for path in ckpt.list_checkpoints(run_dir / "checkpoints"):
            checkpoint = ckpt.verify(path)
            result.reports[checkpoint.step] = evaluate_checkpoint(checkpoint, device=cfg.train.device,
                                                                  log_to_mlflow=cfg.tracking.enabled,
                                                                  progress=False)
    return result


def build_arg_parser(prog: str = "lamo-scale baseline") -> argparse.ArgumentParser:
    """``lamo-scale baseline``: an algorithm, a dataset, and ``key=value`` overrides (all in --help)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an offline-RL baseline (d3rlpy) on a LaMo run's data, evaluate it with the project's "
                    "evaluation and log it to MLflow like a LaMo run. Hyper-parameters default to d3rlpy's "
                    "published D4RL settings (lamo_scale/recipes/baselines/<algo>.yaml).",
        epilog="settings (recipe YAML or key=value overrides):\n" + help_epilog())
    parser.add_argument("--algo", choices=ALGOS, help="the baseline: bc, cql, iql or td3bc (loads recipe baselines/<algo>)")
    parser.add_argument("--dataset", help="Minari dataset id in the local store, or a dataset directory (data.dataset)")
    parser.add_argument("--steps", type=int, help="gradient steps (train.steps; the recipes say 500000)")
    parser.add_argument("--config", "-c", action="append", default=[],
                        help="more recipes merged first, e.g. a LaMo task recipe for its data and eval sections "
                             "(--config paper/hopper-medium-r0.1-lamo); a baselines/<algo> recipe may stand for --algo")
    parser.add_argument("--resume", help="checkpoint or run dir to continue ('auto': latest in the run dir)")
    parser.add_argument("--no-eval", action="store_true", help="train and checkpoint only (train.evaluate=false)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. iql.expectile=0.8 eval.episodes=5")
    return parser


def config_from_args(args: argparse.Namespace) -> BaselineConfig:
    """The validated config of a parsed command line."""
    recipes = list(args.config)
    if args.algo:
        recipes.append(baseline_recipe(args.algo))
    elif not any(is_baseline_recipe(r) for r in recipes):
        raise ConfigError(f"choose a baseline: --algo {{{','.join(ALGOS)}}} (or --config baselines/<algo>)")
    overrides = [f"algo={args.algo}"] if args.algo else []
    overrides += [f"data.dataset={args.dataset}"] if args.dataset else []
    overrides += [f"train.steps={args.steps}"] if args.steps else []
    overrides += [f"train.resume={args.resume}"] if args.resume else []
    overrides += ["train.evaluate=false"] if args.no_eval else []
    return load_baseline_config(recipes, overrides + list(args.overrides))


def main(argv: Optional[list[str]] = None, prog: str = "lamo-scale baseline") -> int:
    """Entry point of ``lamo-scale baseline`` and ``python -m lamo_scale.baselines``."""
    from lamo_scale.data.trajectories import DatasetNotFoundError
    from lamo_scale.train import setup_logging

    args = build_arg_parser(prog).parse_args(argv)
    setup_logging()
    for noisy in ("d3rlpy",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = config_from_args(args)
        result = train_baseline(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DatasetNotFoundError, ckpt.CheckpointError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    scores = {step: r.best_normalized() for step, r in sorted(result.reports.items())}
    summary = {"algo": cfg.algo, "run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint),
               "mlflow_run_id": result.run_id, "steps": result.steps_done,
               "steps_per_s": round(result.steps_per_s, 2), "normalized_score_by_step": scores}
    print(json.dumps(summary))
    return 0
