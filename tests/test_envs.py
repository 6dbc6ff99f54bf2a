"""Environment ids, LaMo's sparse Reacher2d semantics, reference scores."""

import importlib
import pickle

import gymnasium as gym
import numpy as np
import pytest

import lamo_scale.envs as envs_pkg
from lamo_scale.data.controllers import ReacherIKController
from lamo_scale.envs import make_env, make_vector_env
from lamo_scale.envs.scores import find_reference, normalized_score, reference_scores


def test_registration_is_idempotent():
    importlib.reload(envs_pkg)
    spec = gym.spec("LaMoReacher2d-v1")
    assert spec.entry_point == "lamo_scale.envs.reacher2d:Reacher2dEnv"
    assert spec.max_episode_steps == 100


def test_spaces_and_physics_are_the_papers():
    env = make_env("LaMoReacher2d-v1")
    assert env.observation_space.shape == (12,) and env.action_space.shape == (2,)
    np.testing.assert_array_equal(env.action_space.low, [-1, -1])
    np.testing.assert_array_equal(env.action_space.high, [1, 1])
    raw = env.unwrapped
    assert raw.frame_skip == 15 and raw.dt == pytest.approx(0.15) and raw.model.opt.timestep == 0.01
    np.testing.assert_array_equal(raw.model.opt.gravity, [0, 0, 0])
    np.testing.assert_allclose(raw.model.jnt_range[1], [-2.0, 3.5])


def test_reset_ranges_and_observation_layout():
    env = make_env("LaMoReacher2d-v1")
    for seed in range(50):
        obs, _ = env.reset(seed=seed)
        q = np.arctan2(obs[0:2], obs[2:4])
        assert np.all(np.abs(q) <= 2.0 + 1e-9)  # joint angles uniform in [-2, 2]
        np.testing.assert_array_equal(obs[4:6], [0.0, 0.0])  # zero velocity (dt * qvel)
        assert 0.5 <= np.linalg.norm(obs[8:10]) <= 1.0  # target 0.5-1.0 from the shoulder
        np.testing.assert_allclose(obs[10:12], obs[6:8] - obs[8:10])
        # fingertip by forward kinematics: link 1 at q1 + 0.785, link 2 at q1 + q2, lengths 0.6 / 0.45
        a1, a2 = q[0] + 0.785, q[0] + q[1]
        tip = 0.6 * np.array([np.cos(a1), np.sin(a1)]) + 0.45 * np.array([np.cos(a2), np.sin(a2)])
        np.testing.assert_allclose(obs[6:8], tip, atol=1e-9)


@pytest.mark.parametrize("policy", ["controller", "random"])
def test_sparse_reward_and_truncation(policy):
    env = make_env("LaMoReacher2d-v1")
    controller = ReacherIKController()
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    rewards, steps = [], 0
    while True:
        action = controller(obs) if policy == "controller" else env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        assert reward in (0.0, 1.0)
        # the last two observation entries are (fingertip - target); the reach test is L1 < 0.1
        assert info["distance"] == pytest.approx(np.abs(obs[10:12]).sum())
        assert reward == float(info["distance"] < 0.1)
        assert not terminated
        rewards.append(reward)
        if truncated:
            break
    assert steps == 100
    if policy == "controller":
        assert set(rewards) == {0.0, 1.0} and sum(rewards) > 50


def test_pickle_roundtrip():
    env = make_env("LaMoReacher2d-v1", reach_threshold=0.05).unwrapped
    clone = pickle.loads(pickle.dumps(env))
    assert clone.reach_threshold == 0.05
    assert clone.observation_space.shape == (12,)


def test_make_env_accepts_spec():
    spec = gym.spec("LaMoReacher2d-v1")
    env = make_env(spec)
    assert env.spec.id == "LaMoReacher2d-v1" and env.reset(seed=0)[0].shape == (12,)


def test_make_vector_env():
    venv = make_vector_env("LaMoReacher2d-v1", 3, seed=0)
    assert isinstance(venv, gym.vector.SyncVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 12)
    venv.close()


@pytest.mark.parametrize(
    "env_id, expected",
    [
        ("Hopper-v5", (-20.272305, 3234.3)),
        ("Hopper-v4", (-20.272305, 3234.3)),
        ("HalfCheetah-v4", (-280.178953, 12135.0)),
        ("Walker2d-v5", (1.629008, 4592.3)),
        ("LaMoReacher2d-v1", (0.0, 100.0)),
        ("FrankaKitchen-v1", None),  # its default is 7 tasks; D4RL's references are for 4
        ("PointMaze_UMaze-v3", (0.0, 245.0)),
        ("PointMaze_Medium-v3", (0.0, 498.8)),
        ("PointMaze_Large-v3", None),
        ("Reacher-v5", None),
        ("CartPole-v1", None),
    ],
)
def test_reference_scores(env_id, expected):
    assert reference_scores(env_id) == expected


UMAZE_SPEC = {"maze_map": [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]],
              "reward_type": "sparse"}


@pytest.mark.parametrize(
    "env_id, kwargs, max_steps, expected, why",
    [
        ("PointMaze_UMaze-v3", UMAZE_SPEC, 300, (0.0, 245.0), None),
        ("PointMaze_UMaze-v3", {**UMAZE_SPEC, "continuing_task": True, "reset_target": False, "render_mode": None},
         300, (0.0, 245.0), None),
        ("PointMaze_UMaze-v3", {**UMAZE_SPEC, "continuing_task": False}, 300, None, "continuing_task=True"),
        ("PointMaze_UMaze-v3", {**UMAZE_SPEC, "reset_target": True}, 300, None, "reset_target=False"),
        ("PointMaze_UMaze-v3", {**UMAZE_SPEC, "reward_type": "dense"}, 300, None, "reward_type='sparse'"),
        ("PointMaze_UMaze-v3", UMAZE_SPEC, 1000, None, "300 steps"),
        ("PointMaze_UMaze-v3", {**UMAZE_SPEC, "max_episode_steps": 50}, None, None, "300 steps"),
        ("PointMaze_Medium-v3", UMAZE_SPEC, 600, None, "maze_map="),
        ("PointMaze_UMaze-v4", {}, None, None, "PointMaze_UMaze-v3"),
        ("Hopper-v5", {}, 1000, (-20.272305, 3234.3), None),
        ("Hopper-v5", {"ctrl_cost_weight": 0.1}, 1000, None, "default ctrl_cost_weight"),
        ("LaMoReacher2d-v1", {"reach_threshold": 0.1}, 100, (0.0, 100.0), None),
        ("LaMoReacher2d-v1", {"reach_threshold": 0.05}, 100, None, "reach_threshold=0.1"),
        ("FrankaKitchen-v1", {"tasks_to_complete": ["microwave", "kettle", "light switch", "slide cabinet"],
                              "object_noise_ratio": 0.0005}, 280, (0.0, 4.0), None),
        ("FrankaKitchen-v1", {"tasks_to_complete": ["microwave", "kettle"]}, 280, None, "4 tasks"),
    ],
)
def test_reference_scores_only_for_the_measured_spec(env_id, kwargs, max_steps, expected, why):
    """Fallback constants hold only for the env id, kwargs and episode length they were measured with."""
    found = find_reference(env_id, kwargs, max_steps)
    assert found.scores == expected and reference_scores(env_id, kwargs, max_steps) == expected
    assert (found.reason is None) == (expected is not None)
    if why is not None:
        assert why in found.reason


def test_reference_scores_of_an_env_spec_use_its_kwargs(caplog):
    """A Minari dataset's ``spec.env_spec`` carries the kwargs the data was collected with."""
    spec = gym.envs.registration.EnvSpec("PointMaze_UMaze-v3", entry_point="gymnasium_robotics:PointMazeEnv",
                                         kwargs={**UMAZE_SPEC, "continuing_task": False}, max_episode_steps=300)
    with caplog.at_level("WARNING", logger="lamo_scale.envs.scores"):
        assert reference_scores(spec) is None
    assert "continuing_task=False" in caplog.text and "raw returns" in caplog.text
    assert reference_scores(gym.spec("LaMoReacher2d-v1")) == (0.0, 100.0)
    assert find_reference("CartPole-v1").reason == "no reference scores are known for CartPole-v1"


def test_training_meta_has_no_fallback_scores_for_another_pointmaze(caplog):
    """A dataset without reference scores whose env is a non-continuing PointMaze: the checkpoint
    records no reference (evaluation shows raw returns) and says why."""
    from types import SimpleNamespace

    from lamo_scale.config import Config
    from lamo_scale.data.trajectories import StateStats
    from lamo_scale.train import dataset_meta

    def meta_for(kwargs):
        spec = gym.envs.registration.EnvSpec("PointMaze_UMaze-v3", entry_point="gymnasium_robotics:PointMazeEnv",
                                             kwargs=kwargs, max_episode_steps=300)
        dataset = SimpleNamespace(env_spec=spec, storage=SimpleNamespace(metadata={}))
        index = SimpleNamespace(dataset_id="test/maze-v0", state_dim=4, act_dim=2, action_low=np.array([-1.0, -1.0]),
                                action_high=np.array([1.0, 1.0]), state_stats=StateStats(np.zeros(4), np.ones(4)))
        return dataset_meta(dataset, index, Config())

    assert (meta_for(UMAZE_SPEC)["ref_min_score"], meta_for(UMAZE_SPEC)["ref_max_score"]) == (0.0, 245.0)
    with caplog.at_level("WARNING", logger="lamo_scale.train"):
        meta = meta_for({**UMAZE_SPEC, "continuing_task": False})
    assert meta["ref_min_score"] is None and meta["ref_max_score"] is None
    assert "continuing_task=False" in meta["reference_note"] and "raw returns" in caplog.text


def test_missing_robotics_extra_names_the_extra(monkeypatch):
    """Without gymnasium-robotics, PointMaze ids and specs (what evaluation acts in) fail with the extra to install."""
    import sys

    from lamo_scale.envs.pointmaze import ensure_robotics_registered

    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # `import gymnasium_robotics` raises ImportError
    for env_id in ("PointMaze_UMaze-v3", "FrankaKitchen-v1"):  # registered if another test imported it
        if env_id in gym.registry:
            monkeypatch.delitem(gym.registry, env_id)
    spec = gym.envs.registration.EnvSpec("PointMaze_UMaze-v3",
                                         entry_point="gymnasium_robotics.envs.maze.point_maze:PointMazeEnv",
                                         kwargs=UMAZE_SPEC, max_episode_steps=300)
    for env in ("PointMaze_UMaze-v3", spec):
        with pytest.raises(ImportError, match=r"pip install 'lamo_scale\[maze\]'") as info:
            make_env(env)
        assert "gymnasium-robotics" in str(info.value)
        assert isinstance(info.value.__cause__, ImportError)  # the original error stays chained
    with pytest.raises(ImportError, match=r"lamo_scale\[kitchen\]"):
        ensure_robotics_registered("FrankaKitchen-v1")


def test_normalized_score():
    assert normalized_score(3234.3, -20.272305, 3234.3) == pytest.approx(100.0)
    assert normalized_score(-20.272305, -20.272305, 3234.3) == pytest.approx(0.0)
    assert normalized_score(33, 0, 100) == pytest.approx(33.0)


def test_controller_batched_and_single():
    controller = ReacherIKController()
    obs = np.stack([make_env("LaMoReacher2d-v1").reset(seed=s)[0] for s in range(4)])
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
