"""Environment construction: our gymnasium ids, single and vectorised envs.

Importing this package registers ``LaMoReacher2d-v1`` (the LaMo paper's sparse-reward
Reacher2d, see :mod:`lamo_scale.envs.reacher2d`) and the Atari games ``LaMoBreakout-v0``,
``LaMoPong-v0``, ``LaMoQbert-v0`` (84x84 grey, 4 stacked; :mod:`lamo_scale.envs.atari`, built
only with ale-py installed). gymnasium-robotics ids (PointMaze,
FrankaKitchen) are made available on demand, see :mod:`lamo_scale.envs.pointmaze`.
"""

from __future__ import annotations

from typing import Optional

import gymnasium as gym

from lamo_scale.envs.atari import register_atari
from lamo_scale.envs.pointmaze import ensure_robotics_registered

REACHER2D_ID = "LaMoReacher2d-v1"
REACHER2D_HORIZON = 100

if REACHER2D_ID not in gym.registry:
    gym.register(
        id=REACHER2D_ID,
        entry_point="lamo_scale.envs.reacher2d:Reacher2dEnv",
        max_episode_steps=REACHER2D_HORIZON,
    )
register_atari()


def make_env(env_id: str | gym.envs.registration.EnvSpec, **kwargs) -> gym.Env:
    """Build one environment by id; our own ids (``LaMoReacher2d-v1``) and gymnasium-robotics ids resolve too."""
    ensure_robotics_registered(env_id)
    return gym.make(env_id, **kwargs)


def make_eval_env(env: str | gym.envs.registration.EnvSpec, max_episode_steps: Optional[int] = None) -> gym.Env:
    """One evaluation env (dict observations flattened as in the dataset)."""
    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    e = make_env(env, **kwargs)
    if isinstance(e.observation_space, gym.spaces.Dict):
        e = gym.wrappers.FlattenObservation(e)
    return e


def make_vector_env(env_id: str, num_envs: int, seed: int | None = None, **kwargs) -> gym.vector.SyncVectorEnv:
    """Build ``num_envs`` copies of ``env_id`` stepped in-process (Sync beats Async on few cores).

    Uses gymnasium's default next-step autoreset: the step after an episode ends returns the
    first observation of the next episode with reward 0 and must not be recorded. When
    ``seed`` is given the sub-envs are reset with seeds ``seed, seed+1, ...``.
    """
    ensure_robotics_registered(env_id)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)])
    if seed is not None:
        envs.reset(seed=seed)
        envs.action_space.seed(seed)
    return envs


__all__ = ["REACHER2D_ID", "REACHER2D_HORIZON", "ensure_robotics_registered", "make_env", "make_eval_env", "make_vector_env"]
