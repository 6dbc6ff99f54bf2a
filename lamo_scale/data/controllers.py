"""Scripted controllers that ship with the project (no trained policy needed)."""

from __future__ import annotations

import numpy as np

# Reacher's arm (gymnasium reacher.xml): shoulder→elbow 0.1, elbow→fingertip 0.11.
REACHER_LINK_LENGTHS = (0.1, 0.11)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


class ReacherIKController:
    """Inverse kinematics + PD torque control for the 2-link Reacher (``Reacher-v5``, ``LaMoReacher2d-v0``).

    Reads the joint angles (cos/sin), joint velocities and target position from Reacher's
    10-dim observation, solves the arm's inverse kinematics for the target (keeping the
    current elbow sign, so the arm does not flip), and applies
    ``kp * angle_error - kd * joint_velocity``. Gaussian noise with std ``noise_std`` is
    added before clipping to the torque bounds ``[-1, 1]``: 0 gives expert data, larger
    values give lower-quality ("medium") data. The noise RNG is seeded.

    Called on a batch of observations ``(B, 10)`` (or one ``(10,)``), returns ``(B, 2)``
    (or ``(2,)``) float32 actions.
    """

    def __init__(
        self,
        noise_std: float = 0.0,
        seed: int | None = 0,
        kp: float = 2.0,
        kd: float = 0.1,
        link_lengths: tuple[float, float] = REACHER_LINK_LENGTHS,
    ):
        self.noise_std = float(noise_std)
        self.kp = float(kp)
        self.kd = float(kd)
        self.l1, self.l2 = map(float, link_lengths)
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"ReacherIKController(noise_std={self.noise_std}, kp={self.kp}, kd={self.kd})"

    def provenance(self) -> dict:
        """JSON-able description of this controller for dataset metadata."""
        return {"policy": "scripted:reacher-ik-pd", "kp": self.kp, "kd": self.kd, "noise_std": self.noise_std}

    def target_angles(self, obs: np.ndarray) -> np.ndarray:
        """Joint angles ``(B, 2)`` that put the fingertip on the target (nearest reachable point)."""
        q2_now = np.arctan2(obs[:, 3], obs[:, 1])
        tx, ty = obs[:, 4], obs[:, 5]
        r2 = tx**2 + ty**2
        cos_q2 = np.clip((r2 - self.l1**2 - self.l2**2) / (2.0 * self.l1 * self.l2), -1.0, 1.0)
        elbow = np.where(q2_now >= 0.0, 1.0, -1.0)
        q2 = elbow * np.arccos(cos_q2)
        q1 = np.arctan2(ty, tx) - np.arctan2(self.l2 * np.sin(q2), self.l1 + self.l2 * np.cos(q2))
        return np.stack([q1, q2], axis=1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Torques for a batch of Reacher observations."""
        obs = np.asarray(obs, dtype=np.float64)
        single = obs.ndim == 1
        obs = np.atleast_2d(obs)
        q = np.stack([np.arctan2(obs[:, 2], obs[:, 0]), np.arctan2(obs[:, 3], obs[:, 1])], axis=1)
        error = _wrap(self.target_angles(obs) - q)
        action = self.kp * error - self.kd * obs[:, 6:8]
        if self.noise_std > 0.0:
            action = action + self.rng.normal(0.0, self.noise_std, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        return action[0] if single else action
