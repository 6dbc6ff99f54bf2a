"""Atari games as the paper evaluates them: 84x84 grey frames, 4 stacked, 4 frames per action.

``LaMoBreakout-v0``, ``LaMoPong-v0``, ``LaMoQbert-v0`` are the ALE games (``ale-py``; its
wheel ships the ROMs) behind gymnasium's ``AtariPreprocessing`` (frame skip 4 with max-pooling
of the last two frames, grey, resized to 84x84) and ``FrameStackObservation(4)``: observations
``Box(0, 255, (4, 84, 84), uint8)``, the game's minimal action set (Breakout: NOOP, FIRE, RIGHT,
LEFT). Dopamine-style, as the DQN-replay data the paper trained on (read through d4rl-atari):
sticky actions (repeat probability 0.25), no no-op starts, an episode is the whole game (not one
life), capped at 27,000 agent steps (108,000 frames). ``ale-py`` is imported only when an env is
built, so the rest of lamo_scale runs without it (``pip install -e .[atari]``).
"""
from __future__ import annotations

import gymnasium as gym

ATARI_GAMES = {"breakout": "Breakout", "pong": "Pong", "qbert": "Qbert"}
"""lamo_scale game name -> ALE ROM name (the paper's three games)."""

MAX_EPISODE_STEPS = 27_000
FRAME_STACK = 4
FRAME_SIZE = 84


def atari_env_id(game: str) -> str:
    """The registered id of a game (``breakout`` -> ``LaMoBreakout-v0``)."""
    return f"LaMo{ATARI_GAMES[game]}-v0"


def make_atari_env(game: str, repeat_action_probability: float = 0.25, render_mode=None) -> gym.Env:
    """One preprocessed game (see module doc); the time limit is added by the registration."""
    try:
        import ale_py
    except ImportError as err:
        raise gym.error.DependencyNotInstalled(
            "Atari envs need ale-py (its wheel ships the ROMs) and opencv-python-headless (AtariPreprocessing "
            "resizes with it): pip install -e '.[atari]'") from err
    gym.register_envs(ale_py)
    env = ale_py.AtariEnv(game=game, frameskip=1, repeat_action_probability=repeat_action_probability,
                          full_action_space=False, render_mode=render_mode)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=0, frame_skip=4, screen_size=FRAME_SIZE,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    return gym.wrappers.FrameStackObservation(env, FRAME_STACK)


def register_atari() -> None:
    """Register the ``LaMo<Game>-v0`` ids (idempotent; needs no ale-py until one is made)."""
    for game in ATARI_GAMES:
        env_id = atari_env_id(game)
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="lamo_scale.envs.atari:make_atari_env", kwargs={"game": game},
                         max_episode_steps=MAX_EPISODE_STEPS)
