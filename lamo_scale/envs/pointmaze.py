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
from typing import Optional

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


def _needs_robotics(env) -> Optional[str]:
    """The gymnasium-robotics env id ``env`` (an id or an ``EnvSpec``) names, or None."""
    if isinstance(env, str):
        return env if ROBOTICS_ID.match(env) else None
    entry_point = env.entry_point if isinstance(env.entry_point, str) else ""
    return env.id if entry_point.startswith("gymnasium_robotics") or ROBOTICS_ID.match(env.id) else None


def missing_extra_error(env_id: str, exc: ImportError) -> ImportError:
    """An ImportError that says which extra of lamo_scale to install for ``env_id``."""
    if env_id.startswith("FrankaKitchen"):
        how = ("install the 'kitchen' extra in its own environment: pip install 'lamo_scale[kitchen]' "
               "(gymnasium-robotics with mujoco<=3.x; not with constraints.txt)")
    else:
        how = "install the 'maze' extra: pip install 'lamo_scale[maze]' (or pip install gymnasium-robotics)"
    return ImportError(f"{env_id} is a gymnasium-robotics environment and gymnasium-robotics is not installed "
                       f"({exc}); {how}", name=exc.name)


def ensure_robotics_registered(env_id) -> None:
    """Import gymnasium-robotics when ``env_id`` is one of its ids and is not registered yet.

    ``env_id`` may also be an ``EnvSpec`` (``gym.make`` accepts both; a spec carries its
    entry point, so nothing needs registering, but its entry point still needs the package).
    Without gymnasium-robotics, raises ImportError naming the extra to install
    (``pip install 'lamo_scale[maze]'``), chained to the original error.
    """
    robotics_id = _needs_robotics(env_id)
    if robotics_id is None or (isinstance(env_id, str) and env_id in gym.registry):
        return
    try:
        gymnasium_robotics = importlib.import_module("gymnasium_robotics")
    except ImportError as exc:
        raise missing_extra_error(robotics_id, exc) from exc
    gym.register_envs(gymnasium_robotics)
