"""Reference scores for normalisation: ``score = 100 * (return - min) / (max - min)``.

D4RL's random/expert reference returns for the MuJoCo locomotion tasks, Kitchen's 4 tasks
(0 / 4 tasks completed), LaMo's Reacher2d (0 / 100 steps in reach) and sparse PointMaze. Matched by environment family, so
``Hopper-v4`` and ``Hopper-v5`` share Hopper's constants.
"""

from __future__ import annotations

import re

# family -> (ref_min_score, ref_max_score)
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "kitchen": (0.0, 4.0),
    "reacher2d": (0.0, 100.0),
    # Sparse PointMaze (gymnasium-robotics v3: reward 1 per step within 0.45 of the goal,
    # continuing task, 300 / 600 steps). D4RL's maze2d took its references from a random and
    # an expert policy; here min = 0 (never reaching the goal) and max = the mean return of
    # lamo_scale.data.controllers.PointMazeWaypointController without noise, measured over
    # 100 episodes (env.reset(seed=0..99), gymnasium-robotics 1.4.2, mujoco 4.0.0):
    # UMaze 245.0 (std 31.8, success 100%), Medium 498.8 (std 50.9, success 100%).
    "pointmaze_umaze": (0.0, 245.0),
    "pointmaze_medium": (0.0, 498.8),
}


def env_family(env_id: str) -> str | None:
    """Map an env id (``"Hopper-v5"``, ``"LaMoReacher2d-v1"``, ``"FrankaKitchen-v1"``,
    ``"PointMaze_UMaze-v3"`` -> ``"pointmaze_umaze"``) to its family."""
    name = re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()
    if name.startswith("lamo"):
        name = name[len("lamo"):]
    if "kitchen" in name:
        return "kitchen"
    return name if name in REFERENCE_SCORES else None


def reference_scores(env_id: str) -> tuple[float, float] | None:
    """Return ``(ref_min_score, ref_max_score)`` for ``env_id``'s family, or None if unknown."""
    family = env_family(env_id)
    return REFERENCE_SCORES[family] if family is not None else None


def normalized_score(ret: float, ref_min: float, ref_max: float) -> float:
    """D4RL-normalised score of an episode return: 0 = reference minimum, 100 = reference maximum."""
    return float(100.0 * (ret - ref_min) / (ref_max - ref_min))
