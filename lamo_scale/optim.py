"""Optimizer and learning-rate schedule: AdamW with a backbone group, warm-up, then constant or decay.

The official LaMo code warms up linearly and then keeps the rate constant; its separate
(lower) rate for the language model is parsed but never used. Here both are switches:
``train.backbone_lr`` gives the backbone's trainable weights (LoRA, or all of them under full
fine-tuning) their own rate, and ``train.lr_schedule=cosine|linear`` decays every group to
``train.min_lr_ratio`` of its rate at the last step, so the final weights are not a noisy
snapshot taken at full learning rate.
"""
from __future__ import annotations

import math

import torch

from lamo_scale.config import TrainConfig


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Factor on each group's base rate for optimizer step ``step`` (0-based)."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def is_backbone_parameter(name: str) -> bool:
    """Whether a (trainable) parameter belongs to the LM backbone rather than the RL embeddings/heads."""
    return name.startswith("lm.")


def build_optimizer(policy: torch.nn.Module, cfg: TrainConfig):
    """AdamW over the trainable parameters (two groups when ``backbone_lr`` is set) and its LambdaLR."""
    named = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    backbone = [p for n, p in named if is_backbone_parameter(n)]
    heads = [p for n, p in named if not is_backbone_parameter(n)]
    if cfg.backbone_lr is None or not backbone:
        groups = [{"params": [p for _, p in named], "lr": cfg.lr}]
    else:
        groups = [{"params": heads, "lr": cfg.lr}, {"params": backbone, "lr": cfg.backbone_lr}]
    # fused: one kernel over all tensors per step instead of several per tensor (same update)
    fused = all(p.device.type in ("cpu", "cuda") for _, p in named)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, cfg))
    return optimizer, scheduler
