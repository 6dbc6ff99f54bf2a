"""Minari episodes → one in-memory trajectory index (returns-to-go, state statistics).

All kept episodes are concatenated into flat arrays; ``episode_pos[i]`` is the position
of flat step ``i`` inside its episode, so a segment that ends at ``i`` reaches back at most
``episode_pos[i]`` steps without crossing into the previous episode.

Dict observations (goal-conditioned and kitchen datasets) are flattened the way
``gymnasium.spaces.flatten`` does it for the dataset's observation space: sub-spaces in
the space's key order (gymnasium sorts plain-dict keys), recursively, each raveled to 1-D.
Evaluation wraps the env in ``FlattenObservation``, which uses the same order.

Image observations (uint8 frames: Atari's 4 stacked 84x84 grey frames, Minari's 210x160x3
RGB ``atari/*`` data) are kept as they are stored, ``[N, *frame_shape]`` uint8 with identity
("raw") statistics: the CNN state encoder scales them to [0, 1] itself, and a float copy of a
100k-step Atari dataset would take 11 GB. Discrete actions are stored one-hot ``[N, n]``
(float32), so the action token, the window builder and the acting history are the same for
both kinds of action space; :func:`lamo_scale.data.spaces.resolve_model_io` decides what a
dataset's spaces need from the policy and refuses what it cannot encode.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import minari
from typing import Optional

import numpy as np

from lamo_scale.data.spaces import check_spaces, is_image_space

log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """A Minari dataset that is not in the local store, with the command that makes it."""


@dataclass
class StateStats:
    """Per-dimension state mean and std used to normalise policy inputs (``raw``: images, passed as stored)."""

    mean: np.ndarray
    std: np.ndarray
    raw: bool = False
    """The states reach the model as stored (uint8 frames); mean and std are unused."""

    def normalize(self, states: np.ndarray) -> np.ndarray:
        """``(states - mean) / std`` in float32; raw states unchanged (their own dtype)."""
        if self.raw:
            return np.asarray(states)
        return ((states - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-serialisable form (for checkpoints)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "raw": self.raw}

    @classmethod
    def from_dict(cls, data: dict) -> "StateStats":
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32),
                   bool(data.get("raw", False)))

    @classmethod
    def identity(cls) -> "StateStats":
        """Statistics of raw (image) states."""
        return cls(np.zeros(1, np.float32), np.ones(1, np.float32), raw=True)


def flatten_observations(space: gym.Space, obs) -> np.ndarray:
    """A batch of observations ``[T, ...]`` (array or nested dict of arrays) as ``[T, D]`` float32;
    image observations stay ``[T, *frame_shape]`` uint8 (see module doc)."""
    if is_image_space(space):
        return np.asarray(obs, dtype=np.uint8)
    if isinstance(space, gym.spaces.Dict):
        parts = [flatten_observations(sub, obs[key]) for key, sub in space.spaces.items()]
        return np.concatenate(parts, axis=1)
    arr = np.asarray(obs, dtype=np.float32)
    return arr.reshape(arr.shape[0], -1)


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go: ``rtg[t] = sum(rewards[t:])`` (float64 accumulation)."""
    return np.cumsum(np.asarray(rewards, np.float64)[::-1])[::-1].copy()


def select_episodes(num_episodes: int, ratio: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random ``ratio`` of episodes (at least one)."""
    keep = max(1, int(round(ratio * num_episodes)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(num_episodes)[:keep])


def dataset_store_root() -> Path:
    """The local Minari store (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def open_dataset(name: str, download: bool = False) -> minari.MinariDataset:
    """Open a Minari dataset by id (local store) or by path to a dataset directory."""
    path = Path(name).expanduser()
    if path.exists():
        data_dir = path / "data" if (path / "data").is_dir() else path
        return minari.MinariDataset(data_dir)
    try:
        return minari.load_dataset(name, download=download)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(
            f"Minari dataset '{name}' is not in the local store {dataset_store_root()}.\n"
            f"Make it with:   lamo-scale collect --recipe <name>   (lamo-scale collect --list shows recipes)\n"
            f"or download a published one with data.download=true (network needed), or pass a dataset "
            f"directory path as data.dataset.") from err


def _one_hot(actions, space: gym.spaces.Discrete) -> np.ndarray:
    """Discrete actions ``[T]`` as one-hot rows ``[T, n]`` float32 (index = action - space.start)."""
    idx = np.asarray(actions, np.int64).reshape(-1) - int(space.start)
    if idx.size and (idx.min() < 0 or idx.max() >= space.n):
        raise ValueError(f"discrete actions outside {space}: min {idx.min() + space.start}, max {idx.max() + space.start}")
    return np.eye(space.n, dtype=np.float32)[idx]


@dataclass
class TrajectoryIndex:
    """Flat arrays of every kept step plus per-episode bookkeeping."""

    states: np.ndarray          # [N, state_dim] float32, normalised if stats were applied; images [N, *shape] uint8
    actions: np.ndarray         # [N, act_dim] float32 (discrete: one-hot over the act_dim actions)
    rtg: np.ndarray             # [N] float32, already divided by rtg_scale
    timesteps: np.ndarray       # [N] int64
    episode_pos: np.ndarray     # [N] int64: position of the step in its episode
    episode_lengths: np.ndarray # [E] int64
    episode_returns: np.ndarray # [E] float64 (unscaled)
    state_stats: StateStats
    action_low: np.ndarray
    action_high: np.ndarray
    dataset_id: str
    episode_ids: Optional[np.ndarray] = None
    """Minari episode ids of the kept (data-ratio) subset, in the order they were read."""
    rewards: Optional[np.ndarray] = None
    """[N] float32 per-step rewards, unscaled (what value-based baselines learn from)."""
    episode_terminated: Optional[np.ndarray] = None
    """[E] bool: the episode ended in a terminal state (False: truncated by a time limit)."""

    @property
    def num_steps(self) -> int:
        """Total kept steps N."""
        return int(self.states.shape[0])

    @property
    def state_dim(self) -> int:
        """Flattened observation size."""
        return int(np.prod(self.states.shape[1:]))

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one stored observation (``(state_dim,)`` for vectors, the frame shape for images)."""
        return tuple(int(d) for d in self.states.shape[1:])

    @property
    def act_dim(self) -> int:
        """Action size."""
        return int(self.actions.shape[1])


def load_trajectories(dataset: minari.MinariDataset, rtg_scale: float, data_ratio: float = 1.0,
                      seed: int = 0, normalize_states: bool = True) -> TrajectoryIndex:
    """Read a Minari dataset into a :class:`TrajectoryIndex` (seeded data-ratio subsampling).

    ``seed`` is the *ratio* seed (``data.ratio_seed``): the subset is a function of (dataset,
    ratio, ratio seed) only, as the official per-ratio index files are, so training seeds vary
    the training and not the data.
    """
    check_spaces(dataset.observation_space, dataset.action_space, dataset.id)
    action_space = dataset.action_space
    discrete = isinstance(action_space, gym.spaces.Discrete)
    image = is_image_space(dataset.observation_space)
    chosen = select_episodes(dataset.total_episodes, data_ratio, seed)
    episode_ids = dataset.episode_indices[chosen]
    states, actions, rtg, timesteps, lengths, returns = [], [], [], [], [], []
    rewards, terminated = [], []
    for episode in dataset.iterate_episodes(episode_ids):
        obs = flatten_observations(dataset.observation_space, episode.observations)[:-1]
        n = len(episode.rewards)
        states.append(obs[:n])
        actions.append(_one_hot(episode.actions, action_space) if discrete
                       else np.asarray(episode.actions, np.float32).reshape(n, -1))
        rtg.append(returns_to_go(episode.rewards))
        timesteps.append(np.arange(n, dtype=np.int64))
        lengths.append(n)
        returns.append(float(np.sum(episode.rewards, dtype=np.float64)))
        rewards.append(np.asarray(episode.rewards, np.float32).reshape(n))
        terminated.append(bool(np.asarray(episode.terminations).reshape(-1)[-1]) if n else False)
    if image:
        flat_states, stats = np.concatenate(states), StateStats.identity()
    else:
        flat_states = np.concatenate(states).astype(np.float32)
        mean = flat_states.mean(axis=0)
        std = flat_states.std(axis=0) + 1e-6
        stats = StateStats(mean.astype(np.float32), std.astype(np.float32))
        if not normalize_states:
            stats = StateStats(np.zeros_like(stats.mean), np.ones_like(stats.std))
    lengths_arr = np.asarray(lengths, np.int64)
    log.info("dataset %s: %d of %d episodes (ratio %.3g), %d steps", dataset.id, len(lengths),
             dataset.total_episodes, data_ratio, lengths_arr.sum())
    return TrajectoryIndex(
        states=stats.normalize(flat_states),
        actions=np.concatenate(actions),
        rtg=(np.concatenate(rtg) / rtg_scale).astype(np.float32),
        timesteps=np.concatenate(timesteps),
        episode_pos=np.concatenate(timesteps),
        episode_lengths=lengths_arr,
        episode_returns=np.asarray(returns, np.float64),
        state_stats=stats,
        # discrete: the one-hot's bounds (the policy predicts logits, these are not used to squash)
        action_low=(np.zeros(action_space.n, np.float32) if discrete
                    else np.asarray(action_space.low, np.float32).reshape(-1)),
        action_high=(np.ones(action_space.n, np.float32) if discrete
                     else np.asarray(action_space.high, np.float32).reshape(-1)),
        dataset_id=dataset.id,
        episode_ids=np.asarray(episode_ids, np.int64),
        rewards=np.concatenate(rewards),
        episode_terminated=np.asarray(terminated, bool),
    )
