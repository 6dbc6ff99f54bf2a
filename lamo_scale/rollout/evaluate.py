"""Evaluate a checkpoint in its environment and log the scores to its MLflow run.

Metrics go to the training run at the checkpoint's step:
``eval/<target>/return_mean``, ``.../return_std``, ``.../normalized_score``,
``.../episode_length``, ``.../wall_time_s`` (target written as an integer when whole).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch

from lamo_scale import checkpoint as ckpt
from lamo_scale.config import EvalConfig, from_dict
from lamo_scale.data.trajectories import StateStats
from lamo_scale.model import build_policy
from lamo_scale.rollout.acting import ActingSpec, env_steps_per_second, timed_run
from lamo_scale.tracking import Tracker

log = logging.getLogger(__name__)


def target_key(target: float) -> str:
    """Metric-name form of a target return (``3600`` not ``3600.0``)."""
    return str(int(target)) if float(target).is_integer() else f"{target:g}"


BEST_METRIC = "eval/best_normalized_score"
"""Per checkpoint: the normalised score at its best target return (the paper's rule)."""


def normalized_key(target: str) -> str:
    """Metric name of the normalised score at a target key (see :func:`target_key`)."""
    return f"eval/{target}/normalized_score"


def eval_metrics(summaries: dict[float, dict[str, float]], best: Optional[float] = None) -> dict[str, float]:
    """MLflow metric names and values of per-target summaries (plus the best score, if given)."""
    metrics = {f"eval/{target_key(t)}/{name}": v for t, s in summaries.items() for name, v in s.items()
               if name != "episodes"}
    if best is not None:
        metrics[BEST_METRIC] = best
    return metrics


def load_policy(checkpoint: ckpt.Checkpoint, device: str = "cpu", bf16: Optional[bool] = None):
    """Rebuild the policy a checkpoint was trained with, load its weights (verified), ready to act.

    ``bf16`` is the acting precision (``None``: as trained); it decides whether LoRA is merged.
    """
    meta = checkpoint.meta
    cfg = from_dict(meta["config"])
    policy, _ = build_policy(cfg.model, meta["state_dim"], meta["act_dim"],
                             np.asarray(meta["action_low"]),
                             np.asarray(meta["action_high"]), seed=cfg.train.seed,
                             language_loss=cfg.loss.language_weight > 0)
    if policy.frozen_fingerprint() != meta["frozen_fingerprint"]:
        raise ckpt.CheckpointError(f"{checkpoint.path}: the backbone loaded now differs from the one it was "
                                   "trained on (frozen-weight fingerprint mismatch)")
    ckpt.load_trainable(policy, checkpoint.weights(), checkpoint.path)
    return prepare_for_acting(policy, acts_in_bf16(cfg, bf16)).to(device), cfg


def acts_in_bf16(cfg, requested: Optional[bool] = None) -> bool:
    """Whether a policy acts under bf16 autocast: as requested, else as it was trained."""
    return cfg.train.mixed_precision == "bf16" if requested is None else bool(requested)


def prepare_for_acting(policy, bf16: bool):
    """Eval mode; LoRA folded into the base weights when acting in full fp32.

    Merged, each projection is one matmul instead of three plus dropout (~1.7x more
    env-steps/s at batch 1 on CPU, same actions in fp32). In bf16 (a bf16 base, or autocast,
    which rounds every weight to bf16 at the matmul) the small LoRA update folded into the
    weights is rounded away: measured up to 0.17 action change vs fp32, against 0.06 unmerged
    (tests/test_precision.py). So under bf16 the adapters stay separate.
    """
    if hasattr(policy.lm, "merge_adapter") and not bf16 and policy.backbone_dtype == torch.float32:
        policy.lm.merge_adapter()
    return policy.eval()


def load_actor(checkpoint: ckpt.Checkpoint, device: str = "cpu",
               bf16: Optional[bool] = None) -> tuple[Callable[..., torch.Tensor], EvalConfig, bool]:
    """What the acting loop needs from a checkpoint: its act callable, its ``eval`` settings and
    whether it acts under bf16 (``bf16=None``: as it trained). A LaMo policy, or (``meta["kind"] == "baseline"``) a d3rlpy
    baseline adapted to the same window interface by :mod:`lamo_scale.baselines.policy`."""
    if checkpoint.meta.get("kind") == "baseline":
        from lamo_scale.baselines.policy import load_baseline

        return load_baseline(checkpoint, device)
    policy, cfg = load_policy(checkpoint, device, bf16)
    return policy.act, cfg.eval, acts_in_bf16(cfg, bf16)


def acting_spec(meta: dict, max_episode_steps: Optional[int] = None) -> ActingSpec:
    """The env, state statistics and scales a checkpoint acts with."""
    env = gym.envs.registration.EnvSpec.from_json(meta["env_spec"]) if meta.get("env_spec") else meta["env_id"]
    if env is None:
        raise ValueError("checkpoint names no environment; set eval.env_id when training")
    return ActingSpec(env=env, state_stats=StateStats.from_dict(meta["state_stats"]), rtg_scale=meta["rtg_scale"],
                      context_len=meta["context_len"], max_episode_steps=max_episode_steps)


@dataclass
class EvalReport:
    """Per-target summaries of one checkpoint's evaluation."""

    step: int
    summaries: dict[float, dict[str, float]]
    note: Optional[str] = None
    """Why there is no normalised score (no reference scores), else None."""

    def best_normalized(self) -> Optional[float]:
        """This checkpoint's score (lamo_scale.scoring.checkpoint_score): the score at its best target return."""
        from lamo_scale.scoring import checkpoint_score

        scores = {t: s["normalized_score"] for t, s in self.summaries.items() if "normalized_score" in s}
        return checkpoint_score(scores) if scores else None


def evaluate_checkpoint(ref: str | Path | ckpt.Checkpoint, episodes: Optional[int] = None,
                        num_envs: Optional[int] = None, target_returns: Optional[list[float]] = None,
                        seed: Optional[int] = None, device: str = "cpu", log_to_mlflow: bool = True,
                        tracking_uri: Optional[str] = None, progress: bool = True,
                        bf16: Optional[bool] = None) -> EvalReport:
    """Roll a checkpoint out (defaults from its config's ``eval`` section) and log to its run.

    ``bf16=None`` acts in the precision the policy was trained in (bf16 autocast if it was).
    """
    checkpoint = ref if isinstance(ref, ckpt.Checkpoint) else ckpt.resolve_checkpoint(ref)
    act, eval_cfg, bf16 = load_actor(checkpoint, device, bf16)
    meta = checkpoint.meta
    targets = target_returns or meta.get("target_returns") or eval_cfg.target_returns
    spec = acting_spec(meta, eval_cfg.max_episode_steps)
    results, seconds = timed_run(act, spec, targets, episodes or eval_cfg.episodes,
                                 num_envs or eval_cfg.num_envs, eval_cfg.seed if seed is None else seed,
                                 device=device, progress=progress,
                                 autocast_dtype=torch.bfloat16 if bf16 else None)
    summaries = {t: dict(r.summary(meta.get("ref_min_score"), meta.get("ref_max_score")), wall_time_s=seconds)
                 for t, r in results.items()}
    note = None
    if meta.get("ref_min_score") is None or meta.get("ref_max_score") is None:
        note = f"no reference scores ({meta.get('reference_note') or 'none recorded'}): raw returns only"
    report = EvalReport(step=checkpoint.step, summaries=summaries, note=note)
    log.info("evaluated %s: %.1f env-steps/s", checkpoint.path, env_steps_per_second(results, seconds))
    run_id = meta.get("mlflow_run_id")
    if log_to_mlflow and run_id:
        tracker = Tracker(tracking_uri or meta["tracking_uri"], meta.get("experiment", "default"))
        tracker.run_id = run_id
        tracker.log_metrics(eval_metrics(summaries, report.best_normalized()), step=checkpoint.step)
        if not tracker.flush():
            log.warning("evaluation metrics for %s could not be sent to MLflow", checkpoint.path)
    return report
