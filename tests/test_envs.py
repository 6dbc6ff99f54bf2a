"""Environment ids, LaMo's sparse Reacher2d semantics, reference scores."""

import importlib
import pickle

import gymnasium as gym
import numpy as np
import pytest

import lamo_scale.envs as envs_pkg
from lamo_scale.data.controllers import ReacherIKController
from lamo_scale.envs import make_env, make_vector_env
from lamo_scale.envs.scores import normalized_score, reference_scores


def test_registration_is_idempotent():
    importlib.reload(envs_pkg)
    spec = gym.spec("LaMoReacher2d-v0")
    assert spec.entry_point == "lamo_scale.envs.reacher2d:Reacher2dEnv"
    assert spec.max_episode_steps == 100


def test_spaces_match_reacher_v5():
    env, ref = make_env("LaMoReacher2d-v0"), gym.make("Reacher-v5")
    assert env.observation_space.shape == (10,) == ref.observation_space.shape
    assert env.action_space == ref.action_space
    assert env.action_space.shape == (2,)
    np.testing.assert_array_equal(env.action_space.low, [-1, -1])
    np.testing.assert_array_equal(env.action_space.high, [1, 1])


def test_same_physics_as_reacher_v5():
    env, ref = make_env("LaMoReacher2d-v0"), gym.make("Reacher-v5")
    obs, _ = env.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    np.testing.assert_array_equal(obs, ref_obs)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(40, 2)).astype(np.float32)
    for a in actions:
        obs, *_ = env.step(a)
        ref_obs, *_ = ref.step(a)
    np.testing.assert_array_equal(obs, ref_obs)


@pytest.mark.parametrize("policy", ["controller", "random"])
def test_sparse_reward_and_truncation(policy):
    env = make_env("LaMoReacher2d-v0")
    controller = ReacherIKController()
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    rewards, steps = [], 0
    while True:
        action = controller(obs) if policy == "controller" else env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        assert reward in (0.0, 1.0)
        # the last two observation entries are (fingertip - target) in the plane
        assert info["distance"] == pytest.approx(np.linalg.norm(obs[8:10]))
        assert reward == float(info["distance"] < 0.1)
        assert not terminated
        rewards.append(reward)
        if truncated:
            break
    assert steps == 100
    assert set(rewards) == {0.0, 1.0}
    if policy == "controller":
        assert sum(rewards) > 80


def test_pickle_roundtrip():
    env = make_env("LaMoReacher2d-v0", reach_threshold=0.05).unwrapped
    clone = pickle.loads(pickle.dumps(env))
    assert clone.reach_threshold == 0.05
    assert clone.observation_space.shape == (10,)


def test_make_env_accepts_spec():
    spec = gym.spec("LaMoReacher2d-v0")
    env = make_env(spec)
    assert env.spec.id == "LaMoReacher2d-v0" and env.reset(seed=0)[0].shape == (10,)


def test_make_vector_env():
    venv = make_vector_env("LaMoReacher2d-v0", 3, seed=0)
    assert isinstance(venv, gym.vector.SyncVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 10)
    venv.close()


@pytest.mark.parametrize(
    "env_id, expected",
    [
        ("Hopper-v5", (-20.272305, 3234.3)),
        ("Hopper-v4", (-20.272305, 3234.3)),
        ("HalfCheetah-v4", (-280.178953, 12135.0)),
        ("Walker2d-v5", (1.629008, 4592.3)),
        ("LaMoReacher2d-v0", (0.0, 100.0)),
        ("FrankaKitchen-v1", (0.0, 4.0)),
        ("PointMaze_UMaze-v3", (0.0, 245.0)),
        ("PointMaze_Medium-v3", (0.0, 498.8)),
        ("PointMaze_Large-v3", None),
        ("Reacher-v5", None),
        ("CartPole-v1", None),
    ],
)
def test_reference_scores(env_id, expected):
    assert reference_scores(env_id) == expected


def test_normalized_score():
    assert normalized_score(3234.3, -20.272305, 3234.3) == pytest.approx(100.0)
    assert normalized_score(-20.272305, -20.272305, 3234.3) == pytest.approx(0.0)
    assert normalized_score(33, 0, 100) == pytest.approx(33.0)


def test_controller_batched_and_single():
    controller = ReacherIKController()
    obs = np.stack([make_env("LaMoReacher2d-v0").reset(seed=s)[0] for s in range(4)])
    batch = controller(obs)
    assert batch.shape == (4, 2) and batch.dtype == np.float32
    np.testing.assert_array_equal(controller(obs[1]), batch[1])
    assert np.all(np.abs(batch) <= 1.0)


def test_uniform_random_policy():
    from lamo_scale.data.controllers import UniformRandomPolicy

    space = gym.spaces.Box(-2.0, 1.0, shape=(3,), dtype=np.float32)
    a = UniformRandomPolicy(space, seed=0)(np.zeros((5, 7)))
    assert a.shape == (5, 3) and a.dtype == np.float32 and a.min() >= -2 and a.max() <= 1
    np.testing.assert_array_equal(a, UniformRandomPolicy(space, seed=0)(np.zeros((5, 7))))
    assert UniformRandomPolicy(space)({"x": np.zeros((4, 2))}).shape == (4, 3)  # dict observations


# --- PointMaze (gymnasium-robotics) ------------------------------------------------------


@pytest.fixture
def robotics():
    return pytest.importorskip("gymnasium_robotics", reason="PointMaze needs gymnasium-robotics (dev extra)")


def test_pointmaze_grid_geometry_and_bfs(robotics):
    from lamo_scale.data.controllers import PointMazeWaypointController

    env = make_env("PointMaze_UMaze-v3")
    maze = env.unwrapped.maze
    controller = PointMazeWaypointController.for_env(env)
    for i, row in enumerate(maze.maze_map):
        for j, cell in enumerate(row):
            xy = maze.cell_rowcol_to_xy(np.array([i, j]))
            np.testing.assert_allclose(controller.cell_centre((i, j)), xy)
            assert controller.cell_of(xy) == tuple(maze.cell_xy_to_rowcol(xy))
    # UMaze: free cells (1,1..3), (2,3), (3,1..3); from (1,1) to (3,1) the path goes round the U
    start, goal = maze.cell_rowcol_to_xy(np.array([1, 1])), maze.cell_rowcol_to_xy(np.array([3, 1]))
    assert controller.path(start, goal) == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
    assert controller.waypoint(start, goal) == pytest.approx(controller.cell_centre((1, 2)))
    assert controller.waypoint(goal + 0.1, goal) == pytest.approx(goal)  # in the goal cell: the goal itself


@pytest.mark.parametrize("env_id, episodes, noise", [("PointMaze_UMaze-v3", 20, 0.5), ("PointMaze_Medium-v3", 6, 0.5)])
def test_pointmaze_controller_reaches_goal(robotics, env_id, episodes, noise):
    from lamo_scale.data.controllers import PointMazeWaypointController

    env = make_env(env_id)
    controller = PointMazeWaypointController.for_env(env, noise_std=noise, seed=0)
    returns, successes = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=100 + ep)
        total, reached = 0.0, False
        while True:
            action = controller(obs)
            assert action.shape == (2,) and np.abs(action).max() <= 1.0
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            reached |= bool(info["success"])
            if terminated or truncated:
                break
        returns.append(total)
        successes.append(reached)
    # measured: success rate 1.00 on both mazes, with or without N(0, 0.5^2) noise
    assert np.mean(successes) >= 0.95
    ref_max = reference_scores(env_id)[1]
    assert 0.75 * ref_max <= np.mean(returns) <= 1.25 * ref_max


def test_pointmaze_batched_controller(robotics):
    from lamo_scale.data.controllers import PointMazeWaypointController

    venv = make_vector_env("PointMaze_UMaze-v3", 3, seed=0)
    obs, _ = venv.reset(seed=0)
    controller = PointMazeWaypointController.for_env("PointMaze_UMaze-v3")
    batch = controller(obs)
    assert batch.shape == (3, 2) and batch.dtype == np.float32
    single = controller({k: v[1] for k, v in obs.items()})
    np.testing.assert_array_equal(single, batch[1])
    venv.close()
