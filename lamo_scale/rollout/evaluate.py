"""Evaluate a checkpoint in its environment and log the scores to its MLflow run.

Metrics go to the training run at the checkpoint's step:
``eval/<target>/return_mean``, ``.../return_std``, ``.../normalized_score``,
``.../episode_length``, ``.../wall_time_s`` (target written as an integer when whole).
"""
from __future__ import annotations

import json
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
from lamo_scale.model.placement import input_device, place_policy
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
    ``device="auto"`` spreads the frozen backbone over the node's GPUs (:mod:`lamo_scale.model.placement`).
    """
    policy, cfg = _build_unloaded(checkpoint)
    ckpt.load_trainable(policy, checkpoint.weights(), checkpoint.path)
    return place_policy(prepare_for_acting(policy, acts_in_bf16(cfg, bf16)), device), cfg


def _build_unloaded(checkpoint: ckpt.Checkpoint):
    """The checkpoint's policy with its frozen backbone verified, trainable weights not yet loaded."""
    meta = checkpoint.meta
    cfg = from_dict(meta["config"])
    policy, _ = build_policy(cfg.model, meta["state_dim"], meta["act_dim"],
                             np.asarray(meta["action_low"]),
                             np.asarray(meta["action_high"]), seed=cfg.train.seed,
                             language_loss=cfg.loss.language_weight > 0)
    if policy.frozen_fingerprint() != meta["frozen_fingerprint"]:
        raise ckpt.CheckpointError(f"{checkpoint.path}: the backbone loaded now differs from the one it was "
                                   "trained on (frozen-weight fingerprint mismatch)")
    return policy, cfg


class PolicyCache:
    """One frozen backbone per process, reused for every checkpoint trained on it.

    A rollout worker evaluates many checkpoints of the same run (and runs of one sweep share
    backbones): rebuilding the policy for each (loading the LM, hashing its frozen weights)
    costs more than acting at quickstart size. Checkpoints with the same build key (model
    config, dims, seed where the frozen weights are a random init, frozen-weight fingerprint,
    device and acting precision) only swap their trainable tensors (adapters, embeddings,
    heads) into the cached policy. Exact: where LoRA was merged for fp32 acting, the base
    weights are restored bit for bit from a copy before the next checkpoint's adapters go in,
    so a swapped policy acts as a freshly built one (tests/test_rollout_cache.py).
    """

    def __init__(self) -> None:
        """An empty cache (holds one policy)."""
        self._key: Optional[str] = None
        self._policy = None
        self._cfg = None
        self._merged_bases: dict[str, torch.Tensor] = {}
        self.builds = 0
        self.swaps = 0

    @staticmethod
    def build_key(checkpoint: ckpt.Checkpoint, device: str, bf16: bool) -> str:
        """What must match for two checkpoints to share one built policy."""
        meta = checkpoint.meta
        model = meta["config"]["model"]
        seed = None if model.get("pretrained") else meta["config"]["train"]["seed"]
        parts = [model, meta["state_dim"], meta["act_dim"], meta["action_low"], meta["action_high"],
                 meta["config"]["loss"]["language_weight"] > 0, seed, meta["frozen_fingerprint"], device, bf16]
        return json.dumps(parts, sort_keys=True, default=str)

    def load(self, checkpoint: ckpt.Checkpoint, device: str = "cpu", bf16: Optional[bool] = None):
        """``(policy, cfg)`` ready to act with ``checkpoint``'s weights (see :func:`load_policy`)."""
        cfg = from_dict(checkpoint.meta["config"])
        acting_bf16 = acts_in_bf16(cfg, bf16)
        key = self.build_key(checkpoint, device, acting_bf16)
        if key != self._key:
            self._policy, self._key, self._merged_bases = None, None, {}
            policy, _ = _build_unloaded(checkpoint)
            ckpt.load_trainable(policy, checkpoint.weights(), checkpoint.path)
            self._merged_bases = _lora_base_copies(policy) if _will_merge(policy, acting_bf16) else {}
            self._policy, self._key = place_policy(prepare_for_acting(policy, acting_bf16), device), key
            self.builds += 1
            return self._policy, cfg
        policy = self._policy
        if self._merged_bases:
            policy.lm.unmerge_adapter()
            params = dict(policy.named_parameters())
            with torch.no_grad():
                for name, base in self._merged_bases.items():
                    params[name].copy_(base)
        ckpt.load_trainable(policy, checkpoint.weights(), checkpoint.path)
        prepare_for_acting(policy, acting_bf16)
        self.swaps += 1
        return policy, cfg


def _will_merge(policy, bf16: bool) -> bool:
    return hasattr(policy.lm, "merge_adapter") and not bf16 and policy.backbone_dtype == torch.float32


def _lora_base_copies(policy) -> dict[str, torch.Tensor]:
    """Copies of the frozen base weights LoRA merges into (restored before the next swap)."""
    from peft.tuners.lora import LoraLayer

    names = {id(m.get_base_layer().weight) for m in policy.modules() if isinstance(m, LoraLayer)}
    return {name: p.detach().clone() for name, p in policy.named_parameters() if id(p) in names}


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
    if _will_merge(policy, bf16):
        policy.lm.merge_adapter()
    return policy.eval()


def load_actor(checkpoint: ckpt.Checkpoint, device: str = "cpu", bf16: Optional[bool] = None,
               cache: Optional[PolicyCache] = None) -> tuple[Callable[..., torch.Tensor], EvalConfig, bool]:
    """What the acting loop needs from a checkpoint: its act callable, its ``eval`` settings and
    whether it acts under bf16 (``bf16=None``: as it trained). A LaMo policy, or (``meta["kind"] == "baseline"``) a d3rlpy
    baseline adapted to the same window interface by :mod:`lamo_scale.baselines.policy`.
    With a :class:`PolicyCache`, a LaMo policy on an already-built backbone only swaps weights."""
    if checkpoint.meta.get("kind") == "baseline":
        from lamo_scale.baselines.policy import load_baseline

        return load_baseline(checkpoint, str(input_device(device)))
    policy, cfg = cache.load(checkpoint, device, bf16) if cache is not None else load_policy(checkpoint, device, bf16)
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
                        bf16: Optional[bool] = None, cache: Optional[PolicyCache] = None) -> EvalReport:
    """Roll a checkpoint out (defaults from its config's ``eval`` section) and log to its run.

    ``bf16=None`` acts in the precision the policy was trained in (bf16 autocast if it was).
    ``cache``: reuse the backbone built for an earlier checkpoint (see :class:`PolicyCache`).
    ``device``: cpu, cuda[:N], or auto (a large frozen backbone spread over the node's GPUs).
    """
    checkpoint = ref if isinstance(ref, ckpt.Checkpoint) else ckpt.resolve_checkpoint(ref)
    act, eval_cfg, bf16 = load_actor(checkpoint, device, bf16, cache)
    meta = checkpoint.meta
    targets = target_returns or meta.get("target_returns") or eval_cfg.target_returns
    spec = acting_spec(meta, eval_cfg.max_episode_steps)
    results, seconds = timed_run(act, spec, targets, episodes or eval_cfg.episodes,
                                 num_envs or eval_cfg.num_envs, eval_cfg.seed if seed is None else seed,
                                 device=input_device(device), progress=progress,
                                 autocast_dtype=torch.bfloat16 if bf16 else None, vector_env=eval_cfg.vector_env)
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
