"""Scripted controllers that ship with the project (no trained policy needed)."""

from __future__ import annotations

import numpy as np

from lamo_scale.envs.reacher2d import STEP_SECONDS

# LaMo's Reacher2d arm (lamo_scale/envs/assets/reacher2d.xml): shoulder→elbow 0.6, elbow→fingertip
# 0.45; the first link sits at q1 + pi/4 and the second at q1 + q2 (the bodies' axis-angle offsets).
REACHER_LINK_LENGTHS = (0.6, 0.45)
_SHOULDER_OFFSET = 0.785
_ELBOW_RANGE = (-2.0, 3.5)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


class ReacherIKController:
    """Inverse kinematics + PD torque control for LaMo's Reacher2d (``LaMoReacher2d-v1``).

    Reads the joint angles (sin/cos), joint velocities (``dt·dq``) and the target from the
    12-dim observation, solves the arm's inverse kinematics for the target (the elbow branch
    closest to the current elbow angle that the joint limits allow), and applies
    ``kp * angle_error - kd * joint_velocity``. Gaussian noise with std ``noise_std`` is added
    before clipping to the torque bounds ``[-1, 1]``. The noise RNG is seeded. This is the
    ``reacher2d-expert`` data's controller; ``reacher2d-medium`` comes from a partly trained
    PPO agent as in the paper (see lamo_scale.data.ppo_policy).

    Called on a batch of observations ``(B, 12)`` (or one ``(12,)``), returns ``(B, 2)``
    (or ``(2,)``) float32 actions.
    """

    def __init__(self, noise_std: float = 0.0, seed: int | None = 0, kp: float = 8.0, kd: float = 2.0,
                 link_lengths: tuple[float, float] = REACHER_LINK_LENGTHS):
        """PD gains ``kp`` (per radian) and ``kd`` (per rad/s); ``noise_std`` makes it noisy."""
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
        q2_now = np.arctan2(obs[:, 1], obs[:, 3])
        tx, ty = obs[:, 8], obs[:, 9]
        r2 = tx**2 + ty**2
        cos_b = np.clip((r2 - self.l1**2 - self.l2**2) / (2.0 * self.l1 * self.l2), -1.0, 1.0)
        b = np.arccos(cos_b)  # relative angle of link 2 to link 1, up to sign
        candidates = np.stack([b, -b], axis=1) + _SHOULDER_OFFSET  # as q2
        allowed = (candidates >= _ELBOW_RANGE[0]) & (candidates <= _ELBOW_RANGE[1])
        cost = np.where(allowed, np.abs(candidates - q2_now[:, None]), np.inf)
        q2 = np.take_along_axis(candidates, np.argmin(cost, axis=1)[:, None], axis=1)[:, 0]
        rel = q2 - _SHOULDER_OFFSET
        a1 = np.arctan2(ty, tx) - np.arctan2(self.l2 * np.sin(rel), self.l1 + self.l2 * np.cos(rel))
        return np.stack([a1 - _SHOULDER_OFFSET, q2], axis=1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Torques for a batch of Reacher2d observations."""
        obs = np.asarray(obs, dtype=np.float64)
        single = obs.ndim == 1
        obs = np.atleast_2d(obs)
        q = np.stack([np.arctan2(obs[:, 0], obs[:, 2]), np.arctan2(obs[:, 1], obs[:, 3])], axis=1)
        goal = self.target_angles(obs)
        error = np.stack([_wrap(goal[:, 0] - q[:, 0]), goal[:, 1] - q[:, 1]], axis=1)
        action = self.kp * error - self.kd * obs[:, 4:6] / STEP_SECONDS
        if self.noise_std > 0.0:
            action = action + self.rng.normal(0.0, self.noise_std, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        return action[0] if single else action


def _batch_size(obs) -> int:
    """Batch size of a batch of observations (an array, or a dict of arrays)."""
    if isinstance(obs, dict):
        return len(next(iter(obs.values())))
    return len(obs)


class UniformRandomPolicy:
    """Uniformly random actions in a box action space, seeded; batched like every collection policy.

    Used as the weakest slice of ``medium-replay-like`` mixtures (what a replay buffer holds
    before its agent has learned anything).
    """

    def __init__(self, action_space, seed: int | None = 0):
        self.low = np.asarray(action_space.low, dtype=np.float64)
        self.high = np.asarray(action_space.high, dtype=np.float64)
        self.dtype = action_space.dtype
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"UniformRandomPolicy(low={self.low.tolist()}, high={self.high.tolist()})"

    def provenance(self) -> dict:
        """JSON-able description of this policy for dataset metadata."""
        return {"policy": "random:uniform"}

    def __call__(self, obs) -> np.ndarray:
        n = _batch_size(obs)
        return self.rng.uniform(self.low, self.high, size=(n, *self.low.shape)).astype(self.dtype)


class PointMazeWaypointController:
    """D4RL maze2d-style waypoint controller for gymnasium-robotics ``PointMaze_*`` (dict observations).

    D4RL's ``maze2d`` data came from a planner over the maze grid plus a PD controller that
    steers the point mass through successive cell centres to the goal, with Gaussian action
    noise. This controller does the same, statelessly (so one instance drives a whole batch
    of envs, each with its own goal):

    - the shortest path on the grid of free cells (BFS, 4-connected) from the cell holding
      the point to the cell holding ``desired_goal``; distance maps are cached per goal cell;
    - the waypoint is the centre of the next cell on that path, or ``desired_goal`` itself
      once the point is in the goal cell. Two 4-adjacent free cells form a convex rectangle,
      so the straight line from anywhere in the current cell to the next cell's centre never
      crosses a wall;
    - ``action = kp * (waypoint - position) + kd * velocity`` (D4RL: ``kp = 10``,
      ``kd = -1``), plus N(0, ``noise_std``²) noise, clipped to ``[-1, 1]``.

    Observations are PointMaze's dicts: ``observation = (x, y, vx, vy)``,
    ``achieved_goal = (x, y)``, ``desired_goal = (x, y)``; batched ``(B, ·)`` arrays or a
    single observation. Cell geometry is gymnasium-robotics' ``Maze``: cell ``(i, j)`` has
    its centre at ``x = (j + 0.5) s - W s / 2``, ``y = L s / 2 - (i + 0.5) s``.
    """

    def __init__(
        self,
        maze_map,
        maze_size_scaling: float = 1.0,
        noise_std: float = 0.0,
        seed: int | None = 0,
        kp: float = 10.0,
        kd: float = -1.0,
    ):
        grid = np.array([[1 if c == 1 else 0 for c in row] for row in maze_map], dtype=np.int8)
        self.free = grid == 0
        self.maze_map = [[int(c) if c in (0, 1) else str(c) for c in row] for row in maze_map]
        self.scaling = float(maze_size_scaling)
        self.length, self.width = grid.shape
        self.noise_std = float(noise_std)
        self.kp, self.kd = float(kp), float(kd)
        self.rng = np.random.default_rng(seed)
        self._dist_cache: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def for_env(cls, env, **kwargs) -> "PointMazeWaypointController":
        """A controller for the maze of ``env`` (a PointMaze env, wrapped or not, or an env id)."""
        if isinstance(env, str):
            from lamo_scale.envs import make_env

            probe = make_env(env)
            try:
                return cls.for_env(probe, **kwargs)
            finally:
                probe.close()
        maze = env.unwrapped.maze
        return cls(maze.maze_map, maze.maze_size_scaling, **kwargs)

    def __repr__(self) -> str:
        return f"PointMazeWaypointController({self.length}x{self.width}, noise_std={self.noise_std})"

    def provenance(self) -> dict:
        """JSON-able description of this controller for dataset metadata."""
        return {"policy": "scripted:pointmaze-waypoint-pd", "kp": self.kp, "kd": self.kd,
                "noise_std": self.noise_std, "maze_map": self.maze_map}

    def cell_of(self, xy: np.ndarray) -> tuple[int, int]:
        """Grid cell ``(row, col)`` holding the point ``xy``, clamped into the grid."""
        i = int(np.floor((self.length * self.scaling / 2 - xy[1]) / self.scaling))
        j = int(np.floor((xy[0] + self.width * self.scaling / 2) / self.scaling))
        return min(max(i, 0), self.length - 1), min(max(j, 0), self.width - 1)

    def cell_centre(self, cell: tuple[int, int]) -> np.ndarray:
        """Continuous ``(x, y)`` of a cell's centre."""
        i, j = cell
        return np.array([(j + 0.5) * self.scaling - self.width * self.scaling / 2,
                         self.length * self.scaling / 2 - (i + 0.5) * self.scaling])

    def distances_to(self, goal_cell: tuple[int, int]) -> np.ndarray:
        """BFS step distances of every free cell to ``goal_cell`` (-1: wall or unreachable)."""
        if goal_cell not in self._dist_cache:
            dist = np.full(self.free.shape, -1, dtype=np.int64)
            dist[goal_cell] = 0
            frontier = [goal_cell]
            while frontier:
                nxt = []
                for i, j in frontier:
                    for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                        a, b = i + di, j + dj
                        if 0 <= a < self.length and 0 <= b < self.width and self.free[a, b] and dist[a, b] < 0:
                            dist[a, b] = dist[i, j] + 1
                            nxt.append((a, b))
                frontier = nxt
            self._dist_cache[goal_cell] = dist
        return self._dist_cache[goal_cell]

    def path(self, start_xy: np.ndarray, goal_xy: np.ndarray) -> list[tuple[int, int]]:
        """Cells of a shortest path from the cell of ``start_xy`` to the cell of ``goal_xy`` (both included)."""
        goal_cell = self.cell_of(goal_xy)
        dist = self.distances_to(goal_cell)
        cell = self.cell_of(start_xy)
        cells = [cell]
        while dist[cell] > 0:
            cell = self._next_cell(cell, dist)
            cells.append(cell)
        return cells

    def _next_cell(self, cell: tuple[int, int], dist: np.ndarray) -> tuple[int, int]:
        i, j = cell
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            a, b = i + di, j + dj
            if 0 <= a < self.length and 0 <= b < self.width and dist[a, b] == dist[i, j] - 1:
                return a, b
        return cell

    def waypoint(self, xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """Where to steer now: the next cell centre on the shortest path, or the goal in its own cell."""
        goal_cell = self.cell_of(goal_xy)
        dist = self.distances_to(goal_cell)
        cell = self.cell_of(xy)
        if dist[cell] <= 0:  # in the goal cell (0), or in a wall/unreachable cell (-1): head for the goal
            return np.asarray(goal_xy, dtype=np.float64)
        return self.cell_centre(self._next_cell(cell, dist))

    def __call__(self, obs) -> np.ndarray:
        """Forces ``(B, 2)`` (or ``(2,)`` for a single observation) for PointMaze dict observations."""
        state = np.asarray(obs["observation"], dtype=np.float64)
        goal = np.asarray(obs["desired_goal"], dtype=np.float64)
        single = state.ndim == 1
        state, goal = np.atleast_2d(state), np.atleast_2d(goal)
        targets = np.stack([self.waypoint(s[:2], g) for s, g in zip(state, goal)])
        action = self.kp * (targets - state[:, :2]) + self.kd * state[:, 2:4]
        if self.noise_std > 0.0:
            action = action + self.rng.normal(0.0, self.noise_std, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        return action[0] if single else action
