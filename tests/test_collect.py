"""Dataset collection: scripted and SB3 zoo policies -> Minari datasets, atomic and refusing overwrite."""

import subprocess
import sys
import warnings

import minari
import numpy as np
import pytest

from lamo_scale.data import collect as collect_mod
from lamo_scale.data.collect import (
    COLLECT_RECIPES,
    collect_dataset,
    collect_recipe,
    dataset_report,
    dataset_store_path,
    default_zoo_dir,
    list_local,
    rollout_episodes,
)
from lamo_scale.data.controllers import ReacherIKController
from lamo_scale.data.sb3_policy import load_sb3_policy

ZOO = default_zoo_dir()
needs_zoo = pytest.mark.skipif(not ZOO.is_dir(), reason=f"SB3 zoo policies not found at {ZOO}")
EXPERT_ID = "lamo/reacher2d/expert-v1"


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    """A private Minari store per test."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return tmp_path / "minari"


def _list_strict():
    """minari.list_local_datasets(), failing on any 'misconfigured dataset' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return minari.list_local_datasets()


def test_scripted_expert_dataset(store):
    ds = collect_recipe("reacher2d-expert", num_steps=3000, progress=False)
    assert dataset_store_path() == store
    assert list_local() == [EXPERT_ID] and list(_list_strict()) == [EXPERT_ID]

    ds = minari.load_dataset(EXPERT_ID)
    # 8 envs x 100-step episodes: the 4th round crosses 3000 steps and is finished
    assert ds.total_episodes == 32 and ds.total_steps == 3200
    returns = []
    for ep in ds.iterate_episodes():
        assert ep.observations.shape == (101, 12) and ep.actions.shape == (100, 2)
        assert not ep.terminations.any() and ep.truncations[-1] and not ep.truncations[:-1].any()
        assert set(np.unique(ep.rewards)) <= {0.0, 1.0}
        # reward t is "in reach" after action t: |fingertip - target| of observation t+1
        np.testing.assert_array_equal(ep.rewards, np.abs(ep.observations[1:, 10:12]).sum(axis=1) < 0.1)
        assert np.abs(ep.actions).max() <= 1.0
        returns.append(ep.rewards.sum())
    assert np.mean(returns) == pytest.approx(63.75)  # seeded: seed 0, 8 envs, mujoco 4.0.0

    meta = ds.storage.metadata
    assert meta["dataset_id"] == EXPERT_ID
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (0.0, 100.0)
    prov = meta["lamo_provenance"]
    assert prov["env_id"] == "LaMoReacher2d-v1" and prov["policy"] == "scripted:reacher-ik-pd"
    assert prov["action_noise"] == 0.0 and prov["seed"] == 0 and prov["num_steps_requested"] == 3000
    assert prov["recipe"] == "reacher2d-expert" and prov["lamo_scale_version"]

    [row] = dataset_report()
    assert row["id"] == EXPERT_ID and row["env"] == "LaMoReacher2d-v1"
    assert (row["episodes"], row["steps"]) == (32, 3200)
    assert row["score"] == pytest.approx(np.mean(returns))
    assert row["return_min"] <= row["return_mean"] <= row["return_max"] <= 100

    env = ds.recover_environment()
    assert env.spec.id == "LaMoReacher2d-v1" and env.spec.max_episode_steps == 100
    assert env.reset(seed=0)[0].shape == (12,)


def test_env_recoverable_in_fresh_process(store):
    collect_recipe("reacher2d-expert", num_steps=100, num_envs=1, progress=False)
    code = (
        "import minari; ds = minari.load_dataset('lamo/reacher2d/expert-v1'); env = ds.recover_environment();"
        "env.reset(seed=0); print(env.spec.id, env.spec.max_episode_steps, env.step(env.action_space.sample())[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["LaMoReacher2d-v1", "100"]


def test_ppo_medium_is_worse_and_learnable(store):
    """reacher2d-medium is the paper's kind of data: a mid-training PPO agent's own sampled actions."""
    ds = collect_recipe("reacher2d-medium", num_steps=2000, progress=False)
    [row] = dataset_report([ds.spec.dataset_id])
    assert ds.spec.dataset_id == "lamo/reacher2d/medium-v1"
    assert row["score"] == pytest.approx(19.25)  # seeded (seed 0, 8 envs); 22.5 on the quickstart's 20k steps
    prov = ds.storage.metadata["lamo_provenance"]
    assert prov["policy"] == "packaged:reacher2d-ppo-medium" and prov["action_noise"] == 0.0
    assert prov["deterministic"] is False and prov["std"] == [0.2833, 0.2833]
    # most of the action variance is predictable from the state (the old noisy controller: ~0.13)
    assert 0.5 < row["learnable"] < 0.8


def test_seeded_collection_is_reproducible():
    def run():
        return rollout_episodes("LaMoReacher2d-v1", ReacherIKController(), 400, 4, 7, action_noise=1.0, progress=False)[0]

    a, b = run(), run()
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.observations, y.observations)


@needs_zoo
def test_sac_hopper_medium(store):
    ds = collect_recipe("hopper-medium", num_steps=2000, num_envs=2, zoo_dir=ZOO, progress=False)
    assert ds.spec.dataset_id == "lamo/hopper/medium-v0"
    assert ds.total_steps >= 2000
    for ep in ds.iterate_episodes():
        ends = ep.terminations | ep.truncations
        assert ends[-1] and not ends[:-1].any()
        assert ep.observations.shape == (len(ep.rewards) + 1, 11)
    [row] = dataset_report()
    # SAC with sampled actions: episodes of ~1000-3600 return; 20k-step measurement: 1525 (score 47.5)
    assert 800 <= row["return_mean"] <= 3700 and 25 <= row["score"] <= 110
    prov = ds.storage.metadata["lamo_provenance"]
    assert prov["policy"] == "sb3:sac" and prov["policy_deterministic"] is False
    assert len(prov["policy_sha256"]) == 64


@needs_zoo
def test_sb3_stochastic_policy_is_seeded():
    runs = []
    for _ in range(2):
        policy = load_sb3_policy(ZOO / "sac" / "Hopper-v3_1", "Hopper-v5", deterministic=False, seed=1)
        runs.append(rollout_episodes("Hopper-v5", policy, 50, 2, seed=0, progress=False)[0])
    np.testing.assert_array_equal(runs[0][0].actions, runs[1][0].actions)


@needs_zoo
def test_sb3_vecnormalize_policy_runs():
    policy = load_sb3_policy(ZOO / "ars" / "Hopper-v3_1", "Hopper-v5")
    assert policy.obs_stats is not None and policy.algo == "ars"
    [ep, *_] = rollout_episodes("Hopper-v5", policy, 1000, 1, seed=0, progress=False)[0]
    assert ep.rewards.sum() > 3000  # ARS needs its observation statistics to hop (measured 3290)


@needs_zoo
def test_mismatched_policy_raises_before_rollout(monkeypatch):
    with pytest.raises(ValueError, match=r"does not fit env Hopper-v5.*\(17,\).*\(11,\)"):
        load_sb3_policy(ZOO / "sac" / "HalfCheetah-v3_1", "Hopper-v5")
    # through a recipe: the rollout is never reached
    monkeypatch.setitem(COLLECT_RECIPES, "bad", COLLECT_RECIPES["hopper-medium"].__class__(
        "lamo/bad/x-v0", "Hopper-v5", "sb3:sac/HalfCheetah-v3_1", 100, description="bad"))
    monkeypatch.setattr(collect_mod, "rollout_episodes", lambda *a, **k: pytest.fail("rolled out"))
    with pytest.raises(ValueError, match="does not fit"):
        collect_recipe("bad", zoo_dir=ZOO, progress=False)


def test_interrupted_rollout_leaves_nothing(store):
    controller = ReacherIKController()
    calls = 0

    def flaky(obs):
        nonlocal calls
        calls += 1
        if calls > 150:
            raise RuntimeError("policy died")
        return controller(obs)

    with pytest.raises(RuntimeError, match="policy died"):
        collect_dataset(EXPERT_ID, "LaMoReacher2d-v1", flaky, 2000, progress=False)
    assert _list_strict() == {}
    with pytest.raises(FileNotFoundError):
        minari.load_dataset(EXPERT_ID)


def test_interrupted_write_leaves_nothing(store, monkeypatch):
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    def boom(self, episodes):
        raise KeyboardInterrupt

    monkeypatch.setattr(HDF5Storage, "update_episodes", boom)
    with pytest.raises(KeyboardInterrupt):
        collect_dataset(EXPERT_ID, "LaMoReacher2d-v1", ReacherIKController(), 200, progress=False)
    assert _list_strict() == {}
    assert not [p for p in store.rglob("*") if ".tmp-" in p.name]


def test_killed_collection_debris_is_invisible(store):
    # what a SIGKILL mid-write leaves: a hidden temp dir beside the final place
    collect_recipe("reacher2d-expert", num_steps=100, num_envs=1, progress=False)
    debris = store / "lamo" / "reacher2d" / ".medium-v0.tmp-deadbeef" / "data"
    debris.mkdir(parents=True)
    (debris / "metadata.json").write_text("{broken")
    assert list(_list_strict()) == [EXPERT_ID]


def test_refuses_overwrite_unless_asked(store):
    collect_recipe("reacher2d-expert", num_steps=100, num_envs=1, progress=False)
    with pytest.raises(FileExistsError):
        collect_recipe("reacher2d-expert", num_steps=200, num_envs=1, progress=False)
    assert minari.load_dataset(EXPERT_ID).total_steps == 100
    collect_recipe("reacher2d-expert", num_steps=200, num_envs=1, overwrite=True, progress=False)
    assert minari.load_dataset(EXPERT_ID).total_steps == 200
    assert list(_list_strict()) == [EXPERT_ID]
    assert not [p for p in store.rglob("*") if p.name.startswith(".expert-v0")]


def test_malformed_id_fails_fast():
    with pytest.raises(ValueError, match="Malformed"):
        collect_dataset("not a valid id!", "LaMoReacher2d-v1", ReacherIKController(), 100, progress=False)


def test_zoo_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMO_SB3_ZOO", str(tmp_path))
    assert default_zoo_dir() == tmp_path


# --- mixtures: medium-expert (union) and medium-replay-like ------------------------------


def test_recipe_table_shape():
    for name, recipe in COLLECT_RECIPES.items():
        assert recipe.dataset_id and recipe.env_id and recipe.policy and recipe.num_steps > 0  # cli listing
        if recipe.components:
            assert recipe.policy == "mix:" + "+".join(c.label for c in recipe.components)
            assert sum(c.fraction for c in recipe.components) == pytest.approx(1.0)
            assert len({c.label for c in recipe.components}) == len(recipe.components)
    for env in ("hopper", "halfcheetah", "walker2d"):
        me = COLLECT_RECIPES[f"{env}-medium-expert"]
        assert me.dataset_id == f"lamo/{env}/medium-expert-v0"
        medium, expert = me.components
        assert (medium.label, expert.label) == ("medium", "expert")
        assert medium.fraction == expert.fraction == 0.5
        assert medium.policy == COLLECT_RECIPES[f"{env}-medium"].policy
        assert expert.policy == COLLECT_RECIPES[f"{env}-expert"].policy
        mr = COLLECT_RECIPES[f"{env}-medium-replay-like"]
        assert mr.dataset_id == f"lamo/{env}/medium-replay-like-v0" and "medium-replay-like" in mr.description
        labels = [c.label for c in mr.components]
        assert "random" in labels and "medium" in labels and len(labels) >= 5
    for name in ("pointmaze-umaze", "pointmaze-medium"):
        assert COLLECT_RECIPES[name].dataset_id.startswith("lamo/pointmaze/")


def test_kitchen_is_downloaded_not_collected():
    assert collect_mod.KITCHEN_DATASETS["kitchen-complete"] == "D4RL/kitchen/complete-v2"
    with pytest.raises(KeyError, match="D4RL/kitchen/mixed-v2"):
        collect_recipe("kitchen-mixed", progress=False)


def test_mixture_part_envs():
    assert collect_mod._part_envs(8, 800, 1000) == 1  # small share: one env, one episode
    assert collect_mod._part_envs(8, 5000, 1000) == 5
    assert collect_mod._part_envs(8, 80_000, 1000) == 8
    assert collect_mod._part_envs(8, 10, None) == 8


def test_mixture_fractions_validated(store):
    part = collect_mod.MixturePart(ReacherIKController(), 0.6, label="a")
    with pytest.raises(ValueError, match="sum to 1"):
        collect_mod.collect_mixture("lamo/x/y-v0", "LaMoReacher2d-v1", [part, part], 400, progress=False)
    assert _list_strict() == {}


@needs_zoo
def test_medium_expert_is_the_union(store):
    # 1000 steps per half < 2 horizons: each half runs on 1 env (see _part_envs)
    ds = collect_recipe("hopper-medium-expert", num_steps=2000, num_envs=2, seed=3, zoo_dir=ZOO, progress=False)
    assert ds.spec.dataset_id == "lamo/hopper/medium-expert-v0"
    prov = ds.storage.metadata["lamo_provenance"]
    assert prov["policy"] == "mix:medium+expert" and prov["recipe"] == "hopper-medium-expert"
    medium, expert = prov["mixture"]
    assert (medium["policy"], expert["policy"]) == ("sb3:sac", "sb3:tqc")
    assert medium["policy_path"].endswith("sac/Hopper-v3_1/Hopper-v3.zip") and len(medium["policy_sha256"]) == 64
    assert expert["policy_path"].endswith("tqc/Hopper-v3_1/Hopper-v3.zip") and len(expert["policy_sha256"]) == 64
    assert medium["num_steps_requested"] == expert["num_steps_requested"] == 1000
    assert medium["num_envs"] == expert["num_envs"] == 1
    assert medium["policy_deterministic"] is False and expert["policy_deterministic"] is True

    # the same halves collected on their own (part k uses seed + 1000 k)
    alone_m = collect_recipe("hopper-medium", num_steps=1000, num_envs=1, seed=3, zoo_dir=ZOO, progress=False)
    alone_e = collect_recipe("hopper-expert", num_steps=1000, num_envs=1, seed=1003, zoo_dir=ZOO, progress=False)
    assert ds.total_episodes == alone_m.total_episodes + alone_e.total_episodes
    assert ds.total_steps == alone_m.total_steps + alone_e.total_steps
    assert medium["episode_ids"] == [0, alone_m.total_episodes - 1]
    assert expert["episode_ids"] == [alone_m.total_episodes, ds.total_episodes - 1]
    union = list(ds.iterate_episodes())
    for ep, ref in zip(union, list(alone_m.iterate_episodes()) + list(alone_e.iterate_episodes())):
        np.testing.assert_array_equal(ep.actions, ref.actions)

    rows = {r["id"]: r for r in dataset_report()}
    me, m, e = rows["lamo/hopper/medium-expert-v0"], rows["lamo/hopper/medium-v0"], rows["lamo/hopper/expert-v0"]
    assert me["behaviour"] == "mix:medium+expert"
    assert min(m["score"], e["score"]) <= me["score"] <= max(m["score"], e["score"])


@needs_zoo
def test_medium_replay_like_mixture(store):
    ds = collect_recipe("hopper-medium-replay-like", num_steps=8000, num_envs=4, zoo_dir=ZOO, progress=False)
    assert ds.spec.dataset_id == "lamo/hopper/medium-replay-like-v0"
    meta = ds.storage.metadata
    assert "medium-replay-like" in meta["description"]
    parts = meta["lamo_provenance"]["mixture"]
    recipe = COLLECT_RECIPES["hopper-medium-replay-like"]
    assert [p["label"] for p in parts] == [c.label for c in recipe.components]
    assert [p["fraction"] for p in parts] == [c.fraction for c in recipe.components]
    assert [p["action_noise"] for p in parts] == [c.action_noise for c in recipe.components]
    assert parts[0]["policy"] == "random:uniform"
    assert all(len(p["policy_sha256"]) == 64 for p in parts[1:])
    # episode ranges tile the dataset in order
    assert parts[0]["episode_ids"][0] == 0 and parts[-1]["episode_ids"][1] == ds.total_episodes - 1
    for a, b in zip(parts, parts[1:]):
        assert b["episode_ids"][0] == a["episode_ids"][1] + 1
    assert sum(p["transitions"] for p in parts) == ds.total_steps

    [row] = dataset_report()
    assert row["behaviour"] == recipe.policy
    # below medium (~47-52) with a wide spread; 40k-step sample measured ~15, spread ~0.7..>50
    assert 5 <= row["score"] <= 30
    assert row["score_min"] < 3 and row["score_max"] > 35


@needs_zoo
def test_sb3_fast_path_matches_predict():
    obs = np.random.default_rng(0).normal(size=(16, 11))
    for algo in ("sac", "tqc"):
        policy = load_sb3_policy(ZOO / algo / "Hopper-v3_1", "Hopper-v5", deterministic=True)
        assert policy._fast_actor is not None
        expected, _ = policy.model.predict(obs.astype(np.float32), deterministic=True)
        np.testing.assert_allclose(policy(obs), expected, atol=1e-6)
    stochastic = load_sb3_policy(ZOO / "sac" / "Hopper-v3_1", "Hopper-v5", deterministic=False, seed=0)
    a, b = stochastic(obs), stochastic(obs)
    assert not np.array_equal(a, b) and np.abs(a).max() <= 1.0


# --- PointMaze (gymnasium-robotics) ------------------------------------------------------


def test_pointmaze_dataset_keeps_dict_observations(store):
    pytest.importorskip("gymnasium_robotics", reason="PointMaze needs gymnasium-robotics (dev extra)")
    ds = collect_recipe("pointmaze-umaze", num_steps=1200, num_envs=2, progress=False)
    assert ds.spec.dataset_id == "lamo/pointmaze/umaze-v0"
    assert set(ds.observation_space.spaces) == {"observation", "achieved_goal", "desired_goal"}
    for ep in ds.iterate_episodes():
        assert ep.observations["observation"].shape == (301, 4)
        assert ep.observations["desired_goal"].shape == (301, 2)
        assert ep.actions.shape == (300, 2) and ep.truncations[-1] and not ep.terminations.any()
        np.testing.assert_array_equal(ep.observations["achieved_goal"], ep.observations["observation"][:, :2])
    meta = ds.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (0.0, 245.0)
    assert meta["lamo_provenance"]["policy"] == "scripted:pointmaze-waypoint-pd"
    assert meta["lamo_provenance"]["action_noise"] == 0.5
    [row] = dataset_report()
    assert row["score"] > 70  # noisy controller still reaches the goal: measured ~100 on 30k steps
    env = ds.recover_environment()
    assert env.spec.id == "PointMaze_UMaze-v3" and env.spec.max_episode_steps == 300
