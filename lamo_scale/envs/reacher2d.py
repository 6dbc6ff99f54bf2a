"""The LaMo paper's sparse-reward Reacher2d, as its official code defines it, on gymnasium's MuJoCo.

Everything the official ``reacher_2d.py`` / ``reacher_2d.xml`` fix is kept:

- arm: two links, 0.6 and 0.4 long, fingertip 0.45 along the second link (reach 0.15–1.05),
  joint damping 1, armature 0.05, no gravity; RK4 at 0.01 s with frame skip 15, so one
  env step is 0.15 s; torques clipped to ``[-1, 1]``;
- reset: both joint angles uniform in ``[-2, 2]``, velocities zero; the target uniform in
  the square ``[-1.5, 1.5]²`` conditioned on ``0.5 ≤ |target| ≤ 1.0`` (rejection sampling);
- observation (12,): ``sin q1, sin q2, cos q1, cos q2, dt·dq1, dt·dq2, fingertip_x,
  fingertip_y, target_x, target_y, (fingertip − target)_x, (fingertip − target)_y``;
- reward: ``1.0`` on every step whose resulting fingertip is within L1 distance 0.1 of the
  target, else ``0.0`` (no control cost, no shaping); never terminates; truncated after
  100 steps by the ``TimeLimit`` that ``gym.make("LaMoReacher2d-v1")`` adds;
- score: the return is the number of steps in reach, normalised by the paper as
  ``100 × return / 100``.

Differences from the official code, all of the plumbing kind: gymnasium's ``MujocoEnv``
(mujoco bindings) instead of gym's ``mujoco_py``; the seeded ``np_random`` of gymnasium's
reset; ``info`` carries ``distance`` (the L1 distance the reward reads). The MJCF file
(``assets/reacher2d.xml``) is written for this project with the official physical values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

REACH_THRESHOLD = 0.1
"""L1 distance (in the plane) from fingertip to target under which a step is rewarded."""
FRAME_SKIP = 15
STEP_SECONDS = 0.01 * FRAME_SKIP
"""Simulated seconds per env step (the MJCF's 0.01 s RK4 step x the frame skip); obs carry dt * qvel."""
MODEL_PATH = Path(__file__).with_name("assets") / "reacher2d.xml"
JOINT_RESET_RANGE = 2.0
TARGET_RADIUS = (0.5, 1.0)
TARGET_BOX = 1.5


class Reacher2dEnv(MujocoEnv, utils.EzPickle):
    """Two-link planar reacher with LaMo's sparse "in reach" reward (see the module doc)."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 7}

    def __init__(self, reach_threshold: float = REACH_THRESHOLD, **kwargs):
        """``reach_threshold`` is the L1 reach distance (the paper's 0.1)."""
        utils.EzPickle.__init__(self, reach_threshold, **kwargs)
        observation_space = spaces.Box(-np.inf, np.inf, shape=(12,), dtype=np.float64)
        MujocoEnv.__init__(self, str(MODEL_PATH), FRAME_SKIP, observation_space=observation_space,
                           default_camera_config={"distance": 5.0}, **kwargs)
        self.metadata["render_fps"] = int(np.round(1.0 / self.dt))
        self.reach_threshold = float(reach_threshold)
        self._tip_site = self.model.site("fingertip").id
        self._target_body = self.model.body("target").id

    def _tip_and_target(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.site_xpos[self._tip_site][:2].copy(), self.data.xpos[self._target_body][:2].copy()

    def step(self, action):
        """Apply clipped torques for 15 physics steps; reward 1 when the fingertip is within reach."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.do_simulation(action, self.frame_skip)
        tip, target = self._tip_and_target()
        distance = float(np.abs(tip - target).sum())
        reward = 1.0 if distance < self.reach_threshold else 0.0
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, {"distance": distance}

    def _get_obs(self) -> np.ndarray:
        theta = self.data.qpos.ravel()
        tip, target = self._tip_and_target()
        return np.concatenate([np.sin(theta), np.cos(theta), self.dt * self.data.qvel.ravel(),
                               tip, target, tip - target])

    def reset_model(self) -> np.ndarray:
        """Random joint angles in [-2, 2], zero velocity, a target 0.5–1.0 from the shoulder."""
        qpos = self.np_random.uniform(-JOINT_RESET_RANGE, JOINT_RESET_RANGE, size=self.model.nq)
        while True:
            goal = self.np_random.uniform(-TARGET_BOX, TARGET_BOX, size=2)
            if TARGET_RADIUS[0] <= np.linalg.norm(goal) <= TARGET_RADIUS[1]:
                break
        self.model.body_pos[self._target_body][:2] = goal
        self.set_state(qpos, np.zeros(self.model.nv))
        return self._get_obs()
