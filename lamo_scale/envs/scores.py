"""Reference scores for normalisation: ``score = 100 * (return - min) / (max - min)``.

D4RL's random/expert reference returns for the MuJoCo locomotion tasks, Kitchen's 4 tasks
and LaMo's Reacher2d (0 / 100 steps in reach). Matched by environment family, so
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
}


def env_family(env_id: str) -> str | None:
    """Map an env id (``"Hopper-v5"``, ``"LaMoReacher2d-v0"``, ``"FrankaKitchen-v1"``) to its family."""
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
