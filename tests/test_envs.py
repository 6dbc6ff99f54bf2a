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
