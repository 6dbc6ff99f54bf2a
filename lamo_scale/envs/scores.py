"""Reference scores for normalisation: ``score = 100 * (return - min) / (max - min)``.

D4RL's random/expert reference returns for the MuJoCo locomotion tasks, Kitchen's 4 tasks
(0 / 4 tasks completed), LaMo's Reacher2d (0 / 100 steps in reach) and sparse PointMaze.
These are fallbacks for data whose metadata carries no ``ref_min_score`` / ``ref_max_score``.

Each family's constants hold only for the env configuration they were measured with
(:data:`MEASURED_SPECS`: env id, the kwargs the returns depend on, the episode length).
:func:`reference_scores` returns them only where the env's spec matches, so e.g. a PointMaze
with ``continuing_task=False`` (returns of at most a few steps) gets None, and callers show
raw returns, instead of being normalised against the continuing task's 245. The MuJoCo
families match by name across versions (``Hopper-v4`` and ``Hopper-v5`` share Hopper's
constants), with the default kwargs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Optional

log = logging.getLogger(__name__)

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
    # Atari: human-normalised, 100 * (return - random) / (human - random), as the paper reports
    # (LaMo's experiment-atari/get_hns.py). Random and human scores from Mnih et al. (2015), "Human-
    # level control through deep reinforcement learning", Nature 518, Extended Data Table 2.
    "breakout": (1.7, 31.8),
    "pong": (-20.7, 9.3),
    "qbert": (163.9, 13455.0),
}

# gymnasium_robotics.envs.maze.maps.U_MAZE / MEDIUM_MAZE (the v3 registrations' maze_map)
_U_MAZE = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
_MEDIUM_MAZE = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0, 0, 1],
                [1, 1, 0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 0, 1],
                [1, 0, 0, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1]]
_POINTMAZE = {"reward_type": "sparse", "continuing_task": True, "reset_target": False}

RENDER_KWARGS = frozenset({"render_mode", "width", "height", "camera_id", "camera_name", "default_camera_config",
                           "max_geom", "visual_options"})
"""Kwargs that change how an env is drawn, never its returns (ignored when matching specs)."""


@dataclass(frozen=True)
class MeasuredSpec:
    """The env configuration a family's reference scores were measured with.

    ``id_pattern`` must match the whole env id. ``kwargs`` are the values the returns depend
    on (a callable value is a predicate, with a description in ``notes``); a kwarg left out of
    the env's kwargs takes the id's default, which is the measured value. Any other kwarg
    (other than render settings and ``ignored``) is a different env. ``max_episode_steps``:
    the measured episode length (None: not checked). ``required``: kwargs whose id default is
    not the measured value, so they must be given.
    """

    id_pattern: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_episode_steps: Optional[int] = None
    ignored: frozenset = frozenset()
    required: frozenset = frozenset()
    notes: Mapping[str, str] = field(default_factory=dict)


def _four_tasks(tasks) -> bool:
    return isinstance(tasks, (list, tuple)) and len(tasks) == 4


MEASURED_SPECS: dict[str, MeasuredSpec] = {
    # D4RL MuJoCo locomotion: default kwargs, 1000 steps.
    "hopper": MeasuredSpec(r"Hopper-v\d+", {}, 1000),
    "halfcheetah": MeasuredSpec(r"HalfCheetah-v\d+", {}, 1000),
    "walker2d": MeasuredSpec(r"Walker2d-v\d+", {}, 1000),
    # D4RL Kitchen: 4 tasks (FrankaKitchen-v1's default is 7), each removed once completed.
    "kitchen": MeasuredSpec(r"FrankaKitchen-v1", {"tasks_to_complete": _four_tasks, "remove_task_when_completed": True,
                                                  "terminate_on_tasks_completed": True},
                            ignored=frozenset({"object_noise_ratio", "robot_noise_ratio"}),
                            required=frozenset({"tasks_to_complete"}),
                            notes={"tasks_to_complete": "4 tasks to complete (FrankaKitchen-v1's default is 7)"}),
    "reacher2d": MeasuredSpec(r"LaMoReacher2d-v1", {"reach_threshold": 0.1}, 100),
    # gymnasium-robotics defaults: continuing task, target not reset, sparse reward.
    "pointmaze_umaze": MeasuredSpec(r"PointMaze_UMaze-v3", {"maze_map": _U_MAZE, **_POINTMAZE}, 300),
    "pointmaze_medium": MeasuredSpec(r"PointMaze_Medium-v3", {"maze_map": _MEDIUM_MAZE, **_POINTMAZE}, 600),
}
# Atari: our preprocessed LaMo<Game>-v0 ids and ALE's own ALE/<Game>-v5 (what Minari's atari/* data
# names). The human references are per game, not per emulator setting, so ALE settings (sticky
# actions, frame skip) and the episode cap are not checked; the paper normalises the same way.
_ALE_KWARGS = frozenset({"repeat_action_probability", "full_action_space", "frameskip", "max_num_frames_per_episode",
                         "obs_type", "mode", "difficulty", "noop_max"})
for _game, _rom in (("breakout", "Breakout"), ("pong", "Pong"), ("qbert", "Qbert")):
    MEASURED_SPECS[_game] = MeasuredSpec(rf"(LaMo{_rom}-v0|{_rom}-v5)", {"game": _game}, None, ignored=_ALE_KWARGS)


class ReferenceLookup(NamedTuple):
    """``scores``: ``(ref_min, ref_max)`` or None; ``reason``: why None (None when found)."""

    scores: Optional[tuple[float, float]]
    reason: Optional[str]


def env_family(env_id: str) -> str | None:
    """Map an env id (``"Hopper-v5"``, ``"LaMoReacher2d-v1"``, ``"FrankaKitchen-v1"``,
    ``"PointMaze_UMaze-v3"`` -> ``"pointmaze_umaze"``) to its family."""
    name = re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()
    if name.startswith("lamo"):
        name = name[len("lamo"):]
    if "kitchen" in name:
        return "kitchen"
    return name if name in REFERENCE_SCORES else None


def spec_mismatch(env_id: str, kwargs: Optional[Mapping[str, Any]] = None,
                  max_episode_steps: Optional[int] = None) -> Optional[str]:
    """Why ``env_id`` built with ``kwargs`` / ``max_episode_steps`` is not the env its family's
    reference scores were measured in (None: it is; also None for an env with no family)."""
    family = env_family(env_id)
    if family is None:
        return None
    measured = MEASURED_SPECS[family]
    if not re.fullmatch(measured.id_pattern, env_id.split("/")[-1]):
        return f"the {family} reference scores were measured on {measured.id_pattern}, not {env_id}"
    kwargs = dict(kwargs or {})
    in_kwargs = kwargs.pop("max_episode_steps", None)
    steps = in_kwargs if max_episode_steps is None else max_episode_steps
    if measured.max_episode_steps is not None and steps is not None and steps != measured.max_episode_steps:
        return (f"{env_id} with max_episode_steps={steps}: its reference scores were measured over "
                f"{measured.max_episode_steps} steps")
    missing = sorted(measured.required - kwargs.keys())
    if missing:
        return f"{env_id} without {missing[0]}: its reference scores were measured with {measured.notes[missing[0]]}"
    for key, value in sorted(kwargs.items()):
        if key in RENDER_KWARGS or key in measured.ignored:
            continue
        if key not in measured.kwargs:
            return f"{env_id} with {key}={value!r}: its reference scores were measured with the default {key}"
        want = measured.kwargs[key]
        if not (want(value) if callable(want) else value == want):
            expected = measured.notes.get(key, f"{key}={want!r}")
            return f"{env_id} with {key}={value!r}: its reference scores were measured with {expected}"
    return None


def find_reference(env, kwargs: Optional[Mapping[str, Any]] = None,
                   max_episode_steps: Optional[int] = None) -> ReferenceLookup:
    """The fallback reference scores of an env, or None with the reason.

    ``env`` is an env id or a gymnasium ``EnvSpec`` (whose ``kwargs`` and
    ``max_episode_steps`` are used unless given). ``kwargs=None`` means the id's defaults.
    """
    if not isinstance(env, str):  # an EnvSpec, e.g. a Minari dataset's spec.env_spec
        kwargs = env.kwargs if kwargs is None else kwargs
        max_episode_steps = env.max_episode_steps if max_episode_steps is None else max_episode_steps
        env = env.id
    family = env_family(env)
    if family is None:
        return ReferenceLookup(None, f"no reference scores are known for {env}")
    reason = spec_mismatch(env, kwargs, max_episode_steps)
    return ReferenceLookup(None, reason) if reason else ReferenceLookup(REFERENCE_SCORES[family], None)


def reference_scores(env, kwargs: Optional[Mapping[str, Any]] = None,
                     max_episode_steps: Optional[int] = None) -> tuple[float, float] | None:
    """``(ref_min_score, ref_max_score)`` for an env (id or ``EnvSpec``, see :func:`find_reference`),
    or None if its family is unknown or its spec is not the measured one (the reason is logged)."""
    found = find_reference(env, kwargs, max_episode_steps)
    if found.scores is None and env_family(env if isinstance(env, str) else env.id) is not None:
        log.warning("no fallback reference scores: %s; scores stay raw returns", found.reason)
    return found.scores


def normalized_score(ret: float, ref_min: float, ref_max: float) -> float:
    """D4RL-normalised score of an episode return: 0 = reference minimum, 100 = reference maximum."""
    return float(100.0 * (ret - ref_min) / (ref_max - ref_min))
