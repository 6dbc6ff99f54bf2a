"""A baseline checkpoint as the acting loop sees it: obs → action behind the window interface.

The project's one evaluation loop (:func:`lamo_scale.rollout.acting.run_episodes`) calls
``act(states=..., actions=..., returns_to_go=..., timesteps=..., attention_mask=...)`` on a
window of the last K steps, states already normalised with the checkpoint's statistics. A
baseline checkpoint is written with ``context_len = 1``, so the window is just the current
state; :class:`ObservationPolicy` hands that (normalised, as in training) to d3rlpy's
deterministic ``predict`` and ignores the return-to-go, which baselines are not conditioned on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lamo_scale import checkpoint as ckpt

MODEL_FILE = "model.d3"
"""The d3rlpy learnable (config + networks + optimiser states) inside a baseline checkpoint."""
KIND = "baseline"
"""``meta["kind"]`` of a baseline checkpoint."""


class ObservationPolicy:
    """Adapts ``predict(obs [B, D]) -> actions [B, A]`` to the acting loop's ``act(**window)``."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]):
        """Wrap a batched, deterministic observation → action function (numpy in, numpy out)."""
        self.predict = predict

    def __call__(self, states: torch.Tensor, **_window) -> torch.Tensor:
        """The actions for the window's last (current) states."""
        obs = states[:, -1].float().cpu().numpy()
        return torch.from_numpy(np.asarray(self.predict(obs), np.float32))


def load_algo(checkpoint: ckpt.Checkpoint, device: str = "cpu"):
    """The d3rlpy algorithm stored in a (verified) baseline checkpoint."""
    from lamo_scale.baselines.algos import import_d3rlpy

    d3rlpy = import_d3rlpy()
    return d3rlpy.load_learnable(str(Path(checkpoint.path) / MODEL_FILE), device=device)


def load_baseline(checkpoint: ckpt.Checkpoint, device: str = "cpu"):
    """``(act, eval config, trained under bf16)`` of a baseline checkpoint (see
    :func:`lamo_scale.rollout.evaluate.load_actor`)."""
    from lamo_scale.baselines.config import BaselineConfig
    from lamo_scale.config import _build

    cfg = _build(BaselineConfig, checkpoint.meta["config"])
    return ObservationPolicy(load_algo(checkpoint, device).predict), cfg.eval, False
