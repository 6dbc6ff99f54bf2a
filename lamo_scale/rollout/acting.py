"""Batched acting: every (target return, episode) job of a wave advances in ONE forward pass.

Jobs are assigned to envs up front: a wave of ``num_envs`` episodes starts together, each
env runs exactly one episode of the wave (seeded ``seed + episode``), and an env whose
episode ended is masked out, so short episodes are never over-counted. Episode ``j`` gets
the same seed under every target return, so targets are compared on the same starts.
The context window is built with the same :func:`window_offsets` as training segments.
Discrete action spaces (Atari): the policy returns one-hot actions, the env is stepped with their
index and the history keeps the one-hot, as the training data does.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from lamo_scale.data.segments import window_offsets, window_tensors
from lamo_scale.data.trajectories import StateStats
from lamo_scale.envs import make_eval_env

log = logging.getLogger(__name__)


@dataclass
class EpisodeStats:
    """Returns and lengths of the episodes run for one target return."""

    target_return: float
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def summary(self, ref_min: Optional[float], ref_max: Optional[float]) -> dict[str, float]:
        """Mean/std return and length, and the normalised score where reference scores exist."""
        r = np.asarray(self.returns, np.float64)
        out = {"return_mean": float(r.mean()), "return_std": float(r.std()),
               "episode_length": float(np.mean(self.lengths)), "episodes": float(len(r))}
        if ref_min is not None and ref_max is not None:
            norm = 100.0 * (r - ref_min) / (ref_max - ref_min)
            out["normalized_score"] = float(norm.mean())
            out["normalized_score_std"] = float(norm.std())
        return out


@dataclass
class ActingSpec:
    """What acting needs besides the policy: env, stats, scales, context length."""

    env: str | gym.envs.registration.EnvSpec
    state_stats: StateStats
    rtg_scale: float
    context_len: int
    max_episode_steps: Optional[int] = None


def _horizon(envs: gym.vector.VectorEnv, spec: ActingSpec) -> int:
    limit = spec.max_episode_steps or envs.get_attr("spec")[0].max_episode_steps
    if not limit:
        raise ValueError("the env has no time limit; set eval.max_episode_steps")
    return int(limit)


def run_episodes(act: Callable[..., torch.Tensor], spec: ActingSpec, target_returns: list[float], episodes: int,
                 num_envs: int, seed: int, device: str | torch.device = "cpu", progress: bool = True,
                 autocast_dtype: Optional[torch.dtype] = None, vector_env: str = "sync") -> dict[float, EpisodeStats]:
    """Run ``episodes`` episodes per target with ``num_envs`` in parallel; returns stats per target.

    ``vector_env``: ``sync`` steps the envs in this process, ``async`` in one worker process each."""
    jobs = [(target, ep) for target in target_returns for ep in range(episodes)]
    results = {t: EpisodeStats(t) for t in target_returns}
    n_envs = min(num_envs, len(jobs))
    make = functools.partial(make_eval_env, spec.env, spec.max_episode_steps)
    if vector_env == "async":
        envs = gym.vector.AsyncVectorEnv([make] * n_envs)
    elif vector_env == "sync":
        envs = gym.vector.SyncVectorEnv([make] * n_envs)
    else:
        raise ValueError(f"vector_env must be 'sync' or 'async', not {vector_env!r}")
    try:
        horizon = _horizon(envs, spec)
        bar = tqdm(total=len(jobs), desc="rollout", unit="episode", disable=not progress, dynamic_ncols=True)
        for start in range(0, len(jobs), n_envs):
            wave = jobs[start:start + n_envs]
            for (target, _), ret, length in zip(wave, *_run_wave(act, envs, spec, wave, horizon, seed, device,
                                                                autocast_dtype)):
                results[target].returns.append(ret)
                results[target].lengths.append(length)
            bar.update(len(wave))
        bar.close()
    finally:
        envs.close()
    return results


def frame_encoder(act: Callable[..., torch.Tensor]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The state encoder of the policy whose ``act`` method this is, when its states are images.

    Acting then encodes each new frame once and passes the window's cached state tokens
    (``state_tokens``) instead of re-running the CNN over all K frames at every step. Any other
    ``act`` callable (vector-state policies, baselines) gets None and sees raw windows.
    """
    policy = getattr(act, "__self__", None)
    return policy.encode_states if getattr(policy, "image_states", False) else None


class EpisodeWindows:
    """The running history of ``n`` parallel episodes, and the policy's input window at step ``t``.

    States are normalised with the dataset's statistics, the return-to-go starts at the target
    and drops by each reward (both divided by ``rtg_scale``), timesteps count from 0: exactly
    what training segments hold (tests replay a dataset episode through it). Image states stay
    uint8 frames. Only the last K states are kept (a ring of K slots: 32 Atari episodes of 27,000
    steps of stacked frames would otherwise take 24 GB); actions and returns keep the whole episode.
    With ``encode`` (see :func:`frame_encoder`) the ring holds each state's token instead, encoded
    once when the state arrives, and windows carry ``state_tokens`` (padding: the zero state's token,
    as a training window's zeroed padding is).
    """

    def __init__(self, spec: ActingSpec, first_obs: np.ndarray, targets: np.ndarray, horizon: int, act_dim: int,
                 encode: Optional[Callable[[np.ndarray], torch.Tensor]] = None):
        """Start ``len(first_obs)`` episodes conditioned on ``targets`` (unscaled returns)."""
        n = len(first_obs)
        self.spec, self.k, self.encode = spec, spec.context_len, encode
        first = self._state(first_obs)
        if encode is None:
            self.states = np.zeros((n, self.k, *first.shape[1:]), first.dtype)
            self.states[:, 0] = first
        else:
            token = encode(first)
            self.pad_token = encode(np.zeros_like(first[:1]))[0]
            self.states = np.zeros((n, self.k, 1), np.float32)  # placeholder for window_tensors
            self.tokens = token.new_zeros((n, self.k, token.shape[-1]))
            self.tokens[:, 0] = token
        self.actions = np.zeros((n, horizon + 1, act_dim), np.float32)
        self.rtg = np.zeros((n, horizon + 1), np.float32)
        self.rtg[:, 0] = np.asarray(targets, np.float32) / spec.rtg_scale

    def _state(self, obs: np.ndarray) -> np.ndarray:
        """Observations as the model reads them: normalised flat vectors, or raw frames."""
        obs = np.asarray(obs)
        return self.spec.state_stats.normalize(obs if self.spec.state_stats.raw else obs.reshape(len(obs), -1))

    def window(self, t: int) -> dict[str, torch.Tensor]:
        """The left-padded K-step window ending at step ``t`` (same builder as training segments)."""
        n = len(self.states)
        offsets, valid = window_offsets(np.full(n, t), self.k)
        idx = np.clip(t + offsets, 0, None)
        timesteps = np.broadcast_to(idx, (n, self.k))
        batch = window_tensors(self.states[:, idx % self.k], self.actions[:, idx], self.rtg[:, idx], timesteps, valid)
        if self.encode is not None:
            real = torch.from_numpy(valid).to(self.tokens.device)[..., None]
            batch["state_tokens"] = torch.where(real, self.tokens[:, idx % self.k], self.pad_token)
            batch["states"] = None
        return batch

    def record(self, t: int, action: np.ndarray, next_obs: np.ndarray, reward: np.ndarray,
               live: Optional[np.ndarray] = None) -> None:
        """Store step ``t``'s action, then the next state and the decremented return-to-go.

        ``live``: indices of the episodes still running (with ``encode``, only their states are encoded)."""
        self.actions[:, t] = action
        slot = (t + 1) % self.k
        if self.encode is None:
            self.states[:, slot] = self._state(next_obs)
        else:
            live = np.arange(len(next_obs)) if live is None else live
            if len(live):
                self.tokens[torch.from_numpy(live), slot] = self.encode(self._state(np.asarray(next_obs)[live]))
        self.rtg[:, t + 1] = self.rtg[:, t] - reward / self.spec.rtg_scale


def _run_wave(act, envs, spec: ActingSpec, wave, horizon: int, seed: int, device, autocast_dtype):
    n_active, n = len(wave), envs.num_envs
    space = envs.single_action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    act_dim = int(space.n) if discrete else int(np.prod(space.shape))
    seeds = [seed + ep for _, ep in wave] + [seed + 10_000_000 + i for i in range(n - n_active)]
    obs, _ = envs.reset(seed=seeds)
    targets = np.array([t for t, _ in wave] + [0.0] * (n - n_active), np.float32)
    with _acting_mode(device, autocast_dtype):
        history = EpisodeWindows(spec, obs, targets, horizon, act_dim, _on_device(frame_encoder(act), device))
    returns = np.zeros(n, np.float64)
    lengths = np.zeros(n, np.int64)
    alive = np.arange(n) < n_active
    for t in range(horizon):
        # Only the episodes still running go through the policy (finished ones and a short
        # wave's filler envs are stepped with zero actions whose rewards are masked below).
        live = np.flatnonzero(alive)
        with _acting_mode(device, autocast_dtype):
            batch = {key: None if v is None else v[torch.from_numpy(live).to(v.device)].to(device)
                     for key, v in history.window(t).items()}
            action = np.zeros((n, act_dim), np.float32)
            action[live] = act(**batch).float().cpu().numpy().reshape(len(live), act_dim)
        if discrete:  # one-hot -> index (finished envs' zero rows step action 0; their rewards are masked)
            obs, reward, terminated, truncated, _ = envs.step(space.start + action.argmax(-1))
        else:
            action = np.clip(action, space.low, space.high)
            obs, reward, terminated, truncated, _ = envs.step(action)
        reward = np.where(alive, reward, 0.0)
        returns += reward
        lengths += alive
        done = terminated | truncated
        alive &= ~done
        with _acting_mode(device, autocast_dtype):
            history.record(t, action, obs, reward, live=np.flatnonzero(alive))
        if not alive.any():
            break
    return returns[:n_active].tolist(), lengths[:n_active].tolist()


@contextlib.contextmanager
def _acting_mode(device, autocast_dtype):
    """No autograd, and bf16 autocast where acting asks for it (the policy's forward and its encoder alike)."""
    with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type,
                                                dtype=autocast_dtype or torch.bfloat16,
                                                enabled=autocast_dtype is not None):
        yield


def _on_device(encode, device):
    """``encode`` taking numpy states (moved to ``device``), or None."""
    if encode is None:
        return None
    return lambda states: encode(torch.from_numpy(np.ascontiguousarray(states)).to(device))


def env_steps_per_second(results: dict[float, EpisodeStats], seconds: float) -> float:
    """Environment steps per wall-clock second over all episodes in ``results``."""
    return sum(sum(r.lengths) for r in results.values()) / max(seconds, 1e-9)


def timed_run(*args, **kwargs) -> tuple[dict[float, EpisodeStats], float]:
    """:func:`run_episodes` plus its wall-clock seconds."""
    start = time.perf_counter()
    out = run_episodes(*args, **kwargs)
    return out, time.perf_counter() - start
