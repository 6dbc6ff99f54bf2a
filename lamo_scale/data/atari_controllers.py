"""Scripted Atari behaviour policies that read only the pixels the learner sees.

:class:`BreakoutBallTracker` finds the ball and the paddle in the newest of the 4 stacked
84x84 grey frames (``lamo_scale.envs.atari``), moves the paddle under the ball (led by the
ball's horizontal motion since the previous frame) and presses FIRE when no ball is in play (a
new game or a lost life). It is a heuristic, not a trained agent: with ε-random actions mixed in
(``lamo-scale collect --recipe breakout-tracker-mixed``) it gives a DQN-replay-like spread of
quality, which is all the data claims to be.
"""
from __future__ import annotations

import numpy as np

# Breakout's minimal action set (ALE): 0 NOOP, 1 FIRE, 2 RIGHT, 3 LEFT.
NOOP, FIRE, RIGHT, LEFT = 0, 1, 2, 3
# Regions of the 84x84 frame (measured on ALE Breakout frames after AtariPreprocessing): the
# playfield between the side walls is columns 5..78; below the bricks (rows 23..36) the ball
# flies through rows 37..74; the paddle is drawn in rows 75..77.
_COLS = slice(5, 79)
_BALL_ROWS = slice(37, 75)
_PADDLE_ROW = 76
_BALL_MIN, _PADDLE_MIN = 40, 100  # grey levels: the ball is drawn dimmer than the paddle


def _centre(mask: np.ndarray) -> np.ndarray:
    """Mean column of the True pixels of each ``[B, H, W]`` mask (NaN where none)."""
    cols = np.arange(mask.shape[-1], dtype=np.float64)
    counts = mask.sum(axis=(1, 2))
    sums = (mask.sum(axis=1) * cols).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class BreakoutBallTracker:
    """Batched scripted Breakout policy: ``obs [B, 4, 84, 84] uint8 -> actions [B]`` (see module doc)."""

    def __init__(self, lead: float = 1.5, dead_zone: float = 2.0):
        """``lead``: how many frames of ball motion to aim ahead; ``dead_zone``: columns of slack."""
        self.lead, self.dead_zone = lead, dead_zone

    def provenance(self) -> dict:
        """What the dataset records about this behaviour policy."""
        return {"policy": "breakout-ball-tracker", "lead": self.lead, "dead_zone": self.dead_zone,
                "inputs": "pixels of the newest two stacked frames"}

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """One action per observation in the batch."""
        obs = np.asarray(obs)
        new, old = obs[:, -1, :, _COLS], obs[:, -2, :, _COLS]
        ball = _centre(new[:, _BALL_ROWS] > _BALL_MIN)
        ball_before = _centre(old[:, _BALL_ROWS] > _BALL_MIN)
        paddle = _centre(new[:, _PADDLE_ROW:_PADDLE_ROW + 1] > _PADDLE_MIN)
        velocity = np.nan_to_num(ball - ball_before)
        target = ball + self.lead * velocity
        gap = target - paddle
        action = np.where(gap > self.dead_zone, RIGHT, np.where(gap < -self.dead_zone, LEFT, NOOP))
        return np.where(np.isnan(ball) | np.isnan(paddle), FIRE, action).astype(np.int64)
