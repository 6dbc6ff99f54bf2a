"""The LaMo paper's sparse-reward Reacher2d on gymnasium's MuJoCo ``Reacher-v5`` physics."""

from __future__ import annotations

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

REACH_THRESHOLD = 0.1


class Reacher2dEnv(ReacherEnv):
    """Two-link planar reacher with a sparse "in reach" reward (LaMo's Reacher2d).

    Physics, reset distribution, observation and action space are exactly gymnasium's
    ``Reacher-v5``:

    - observation (10,): ``cos q1, cos q2, sin q1, sin q2, target_x, target_y, dq1, dq2,
      (fingertip - target)_x, (fingertip - target)_y``;
    - action (2,): joint torques in ``[-1, 1]``.

    Only the reward and the horizon change:

    - reward is ``1.0`` on every step whose resulting fingertip position is within
      ``reach_threshold`` (0.1, Euclidean, in the plane) of the target, else ``0.0``;
      there is no control cost;
    - episodes never terminate; they are truncated after 100 steps by the ``TimeLimit``
      that ``gym.make("LaMoReacher2d-v0")`` adds (2 s of simulated time at dt = 0.02).

    The return therefore counts steps spent in reach, in ``[0, 100]``, and the normalised
    score is ``100 * return / 100``. ``info`` carries ``distance`` (fingertip to target).
    """

    def __init__(self, reach_threshold: float = REACH_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        # ReacherEnv registered its own constructor args for pickling; record ours instead.
        utils.EzPickle.__init__(self, reach_threshold, **kwargs)
        self.reach_threshold = float(reach_threshold)

    def _get_rew(self, action):
        vec = self.get_body_com("fingertip")[:2] - self.get_body_com("target")[:2]
        distance = float(np.linalg.norm(vec))
        reward = 1.0 if distance < self.reach_threshold else 0.0
        return reward, {"distance": distance}
