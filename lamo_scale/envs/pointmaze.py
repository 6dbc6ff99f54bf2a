"""gymnasium-robotics environments (PointMaze, FrankaKitchen) as optional dependencies.

``gymnasium-robotics`` registers its ids (``PointMaze_UMaze-v3``, ``PointMaze_Medium-v3``,
``FrankaKitchen-v1``, ...) when imported; :func:`ensure_robotics_registered` imports it on
demand so ``make_env("PointMaze_UMaze-v3")`` works without the caller knowing.

Measured here with gymnasium-robotics 1.4.2 on mujoco 4.0.0 / gymnasium 1.4.0:

- PointMaze (sparse, ``continuing_task=True``, ``reset_target=False``: the episode never
  terminates, reward 1 on every step the ball is within 0.45 of the goal; truncated at 300
  steps for UMaze, 600 for Medium) runs, ~7k steps/s single-env;
- ``FrankaKitchen-v1`` does not construct: ``gymnasium_robotics.utils.mujoco_utils
  .get_joint_qpos`` asserts ``joint_type in (mjJNT_HINGE, mjJNT_SLIDE)`` and fails under
  mujoco 4 (the kitchen needs mujoco <= 3.x). Kitchen data therefore comes from Minari's
  ``D4RL/kitchen/*`` datasets, see :mod:`lamo_scale.data.collect`.
"""

from __future__ import annotations

import importlib
import re

import gymnasium as gym

POINTMAZE_UMAZE_ID = "PointMaze_UMaze-v3"
POINTMAZE_MEDIUM_ID = "PointMaze_Medium-v3"
ROBOTICS_ID = re.compile(r"^(PointMaze|AntMaze|FrankaKitchen|Adroit|Fetch|HandManipulate|HandReach)")


def robotics_available() -> bool:
    """Whether gymnasium-robotics can be imported."""
    try:
        importlib.import_module("gymnasium_robotics")
    except ImportError:
        return False
    return True


def ensure_robotics_registered(env_id) -> None:
    """Import gymnasium-robotics when ``env_id`` is one of its ids and is not registered yet.

    ``env_id`` may also be an ``EnvSpec`` (``gym.make`` accepts both; a spec carries its
    entry point, so nothing needs registering). Raises ImportError naming the missing
    package (``pip install gymnasium-robotics``).
    """
    if not isinstance(env_id, str) or env_id in gym.registry or not ROBOTICS_ID.match(env_id):
        return
    try:
        gymnasium_robotics = importlib.import_module("gymnasium_robotics")
    except ImportError as exc:
        raise ImportError(
            f"{env_id} needs gymnasium-robotics (pip install gymnasium-robotics; "
            "FrankaKitchen also needs mujoco<=3.x)"
        ) from exc
    gym.register_envs(gymnasium_robotics)
