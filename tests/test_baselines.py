"""Baselines (BC, CQL, IQL, TD3+BC through d3rlpy): same data, same evaluation, same MLflow names, in
sweeps and in the paper report; bad input refused before anything trains."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient

pytest.importorskip("d3rlpy")

from lamo_scale import checkpoint as ckpt  # noqa: E402
from lamo_scale.baselines.algos import to_d3rlpy_dataset  # noqa: E402
from lamo_scale.baselines.config import ALGOS, load_baseline_config  # noqa: E402
from lamo_scale.baselines.policy import MODEL_FILE, ObservationPolicy, load_algo  # noqa: E402
from lamo_scale.baselines.train import main as baseline_main, train_baseline  # noqa: E402
from lamo_scale.config import ConfigError, load_config  # noqa: E402
from lamo_scale.data.trajectories import StateStats, TrajectoryIndex, load_trajectories, open_dataset  # noqa: E402
from lamo_scale.rollout.evaluate import acting_spec, evaluate_checkpoint  # noqa: E402
from lamo_scale.tracking import metric_history  # noqa: E402

from conftest import TINY  # noqa: E402

EXPERIMENT = "baselines-test"
FAST = ["train.steps=4", "train.checkpoint_every=2", "train.log_every=2", "train.threads=1",
        "eval.episodes=2", "eval.num_envs=2"]


def small(algo: str) -> list[str]:
    """Tiny networks and batches: seconds per algorithm on CPU."""
    return [f"{algo}.batch_size=16", f"{algo}.hidden_units=[32, 32]"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("baselines")
    return path, f"sqlite:///{path}/mlflow.db"


def test_dataset_keeps_episode_ends_terminals_and_rewards():
    # episode 0 terminates (a fall), episode 1 is cut by the time limit
    n0, n1 = 3, 4
    states = np.arange((n0 + n1) * 2, dtype=np.float32).reshape(-1, 2)
    index = TrajectoryIndex(
        states=states, actions=np.zeros((n0 + n1, 1), np.float32), rtg=np.zeros(n0 + n1, np.float32),
        timesteps=np.r_[np.arange(n0), np.arange(n1)], episode_pos=np.r_[np.arange(n0), np.arange(n1)],
        episode_lengths=np.array([n0, n1]), episode_returns=np.array([3.0, 4.0]),
        state_stats=StateStats(np.zeros(2, np.float32), np.ones(2, np.float32)),
        action_low=-np.ones(1, np.float32), action_high=np.ones(1, np.float32), dataset_id="synthetic",
        rewards=np.ones(n0 + n1, np.float32), episode_terminated=np.array([True, False]))
    episodes = to_d3rlpy_dataset(index).episodes
    assert [e.size() for e in episodes] == [n0, n1]
    assert [bool(e.terminated) for e in episodes] == [True, False]
    # a terminal last step is a transition (target = its reward); a truncated one is not (no next state kept)
    assert [e.transition_count for e in episodes] == [n0, n1 - 1]
    np.testing.assert_array_equal(episodes[1].observations, states[n0:])
    assert [float(e.rewards.sum()) for e in episodes] == [3.0, 4.0]


def test_index_rewards_and_terminals_come_from_the_minari_episodes(reacher_dataset):
    dataset = open_dataset(reacher_dataset)
    index = load_trajectories(dataset, 100.0, data_ratio=0.5, seed=3)
    first = next(dataset.iterate_episodes([int(index.episode_ids[0])]))
    np.testing.assert_allclose(index.rewards[:len(first.rewards)], first.rewards)
    sums = np.add.reduceat(index.rewards.astype(np.float64), np.r_[0, np.cumsum(index.episode_lengths)[:-1]])
    np.testing.assert_allclose(sums, index.episode_returns, rtol=1e-6)
    assert not index.episode_terminated.any()  # Reacher2d never terminates: every episode is truncated


_TRAINED: dict = {}


def trained(algo: str, store, dataset: str):
    """One small run of ``algo`` per test session (the acting test reuses the training test's)."""
    if algo not in _TRAINED:
        path, uri = store
        cfg = load_baseline_config([f"baselines/{algo}"], [
            f"data.dataset={dataset}", "data.data_ratio=0.5", *FAST, *small(algo), f"tracking.uri={uri}",
            f"tracking.experiment={EXPERIMENT}", f"tracking.run_name={algo}",
            f"train.output_dir={path}/runs/{{run_name}}"])
        _TRAINED[algo] = train_baseline(cfg)
    return _TRAINED[algo]


@pytest.mark.parametrize("algo", ALGOS)
def test_each_algo_trains_and_its_evaluation_lands_in_mlflow_at_the_checkpoint_steps(algo, store, reacher_dataset):
    path, uri = store
    result = trained(algo, store, reacher_dataset)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert (tags["variant"], tags["algo"], tags["dataset"], tags["recipe"]) == (algo, algo, reacher_dataset,
                                                                                f"baselines/{algo}")
    assert params["data.data_ratio"] == "0.5" and params["train.seed"] == "0" and params["eval.target_returns"] == "[0.0]"

    # the evaluation: one point per checkpoint, at the checkpoint's step, the numbers the evaluation returned
    assert sorted(result.reports) == [2, 4]
    for key in ("eval/0/normalized_score", "eval/0/return_mean", "eval/best_normalized_score"):
        assert [m.step for m in metric_history(client, result.run_id, key)] == [2, 4], key
    for m in metric_history(client, result.run_id, "eval/0/normalized_score"):
        assert m.value == pytest.approx(result.reports[m.step].summaries[0.0]["normalized_score"])
        assert result.reports[m.step].summaries[0.0]["episodes"] == 2
    assert [m.step for m in metric_history(client, result.run_id, "train/steps_per_s")] == [2, 4]

    # checkpoints: project format (hashed meta + the d3rlpy model), uploaded as artifacts
    for step in (2, 4):
        names = {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(result.run_id, f"checkpoints/step-{step:08d}")}
        assert {MODEL_FILE, ckpt.META} <= names
    checkpoint = ckpt.verify(result.checkpoint)
    assert checkpoint.meta["kind"] == "baseline" and MODEL_FILE in checkpoint.meta["files"]
    # the same checkpoint evaluated again (lamo-scale evaluate's path) gives the logged numbers
    again = evaluate_checkpoint(checkpoint, log_to_mlflow=False, progress=False)
    assert again.summaries[0.0]["return_mean"] == pytest.approx(result.reports[4].summaries[0.0]["return_mean"])

    # the same data-ratio subset a LaMo run with this data section trains on
    from lamo_scale.train import subset_record

    lamo_cfg = load_config("quickstart-tiny", [f"data.dataset={reacher_dataset}", "data.data_ratio=0.5"])
    lamo_index = load_trajectories(open_dataset(reacher_dataset), 100.0, 0.5, lamo_cfg.data.ratio_seed)
    lamo_subset = subset_record(lamo_index, lamo_cfg)
    assert params["data.subset_sha256"] == lamo_subset["sha256"]
    (path / algo).mkdir(exist_ok=True)
    logged = json.loads(open(client.download_artifacts(result.run_id, "data_subset.json", str(path / algo))).read())
    assert logged["episode_ids"] == lamo_subset["episode_ids"]


def test_baseline_acts_on_the_normalised_current_state(store, reacher_dataset):
    checkpoint = ckpt.verify(trained("td3bc", store, reacher_dataset).checkpoint)
    algo = load_algo(checkpoint)
    seen = []
    policy = ObservationPolicy(lambda obs: (seen.append(obs.copy()), algo.predict(obs))[1])
    from lamo_scale.rollout.acting import make_eval_env, run_episodes

    spec = acting_spec(checkpoint.meta)
    assert spec.context_len == 1
    run_episodes(policy, spec, [0.0], episodes=1, num_envs=1, seed=7, progress=False)
    first, _ = make_eval_env(spec.env).reset(seed=7)
    np.testing.assert_allclose(seen[0][0], spec.state_stats.normalize(first[None])[0], rtol=1e-5)
    assert not np.allclose(seen[0][0], first)  # normalised, not raw


@pytest.mark.slow
def test_sweep_runs_baseline_variants_and_the_paper_report_shows_them(store, reacher_dataset, tmp_path):
    from lamo_scale.paper_report import write_report
    from lamo_scale.sweep import evaluate_run, load_grid, run_one
    from lamo_scale.train import train

    overrides = TINY + [f"data.dataset={reacher_dataset}", "train.steps=3", "train.batch_size=4",
                        "train.checkpoint_every=3", "loss.language_weight=0", "train.threads=1",
                        "eval.episodes=2", "eval.num_envs=2", "eval.target_returns=[50]"]
    # baseline-only settings go in an overlay of the variant (common overrides reach the LaMo run too)
    (tmp_path / "small-nets.yaml").write_text("cql: {batch_size: 16, hidden_units: [32, 32]}\n"
                                              "bc: {batch_size: 16, hidden_units: [32]}\n")
    small_nets = tmp_path / "small-nets.yaml"
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text("\n".join([
        "experiment: paper-test", f"tracking_uri: sqlite:///{tmp_path}/mlflow.db", "recipes: [quickstart-tiny]",
        f"variants: {{lamo: [], cql: [baselines/cql, '{small_nets}'], bc: [baselines/bc, '{small_nets}']}}",
        f"output_dir: {tmp_path}/runs/{{run_name}}",
        "overrides: [" + ", ".join(f"'{o}'" for o in overrides) + "]"]) + "\n")
    grid = load_grid(grid_path)
    specs = {r.tags["variant"]: r for r in grid.runs}
    assert "lamo_scale.baselines" in specs["cql"].command() and "lamo_scale.train" in specs["lamo"].command()
    cfg = load_baseline_config(specs["cql"].recipes, specs["cql"].overrides)
    # the task's data / eval, the common overrides, the baseline's own hyper-parameters
    assert (cfg.algo, cfg.data.dataset, cfg.eval.episodes, cfg.train.steps) == ("cql", reacher_dataset, 2, 3)
    assert cfg.cql.hidden_units == [32, 32] and cfg.cql.conservative_weight == 5.0
    for spec in grid.runs:
        if spec.baseline:  # the sweep's own path: a `python -m lamo_scale.baselines` subprocess, then evaluate_run
            assert run_one(grid, spec) == 0, spec.key
        else:  # the LaMo run in-process (what run_one's subprocess does; test_sweep covers that path)
            train(load_config(spec.recipes, spec.overrides))
            evaluate_run(grid, spec.key)

    md, _, scores = write_report(grid.tracking_uri, "paper-test", tmp_path / "report", log_to_mlflow=False)
    text = md.read_text()
    assert "| task | data ratio | lamo | cql | bc |" in text
    client = MlflowClient(tracking_uri=grid.tracking_uri)
    exp = client.get_experiment_by_name("paper-test")
    by_variant = {}
    for run in client.search_runs([exp.experiment_id]):
        variant = run.data.tags["variant"]
        key = "eval/50/normalized_score" if variant == "lamo" else "eval/0/normalized_score"
        history = metric_history(client, run.info.run_id, key)
        assert [m.step for m in history] == [3], variant  # evaluated by the sweep, at the final checkpoint
        by_variant[variant] = history[-1].value
    assert set(by_variant) == {"lamo", "cql", "bc"}
    row = next(line for line in text.splitlines() if line.startswith("| quickstart-tiny |"))
    assert row == "| quickstart-tiny | 1.0 | " + " | ".join(
        f"{by_variant[v]:.1f} ± 0.0 (n=1)" for v in ("lamo", "cql", "bc")) + " |"
    for variant, claim in (("cql", "LaMo beats CQL"), ("bc", "LaMo beats behaviour cloning")):
        diff = by_variant["lamo"] - by_variant[variant]
        side = "ahead" if diff > 0 else "behind" if diff < 0 else "level"
        assert (f"| quickstart-tiny | 1.0 | {claim} ({variant}) | {diff:+.1f} | — | LaMo {side} (one seed: no error "
                "bar) |") in text
    assert "- `cql`: Conservative Q-Learning (d3rlpy CQL" in text and "logged under target 0" in text
    assert {(s.variant, s.best_target) for s in scores} == {("lamo", "50"), ("cql", "0"), ("bc", "0")}


def test_unknown_algorithm_is_refused_with_the_choices(capsys, store):
    with pytest.raises(SystemExit) as exit_info:
        baseline_main(["--algo", "sac", "--dataset", "whatever"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sac' (choose from 'bc', 'cql', 'iql', 'td3bc')" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'sac' is not one of 'bc', 'cql', 'iql', 'td3bc'"):
        load_baseline_config(["baselines/cql"], ["algo=sac"])
    with pytest.raises(ConfigError, match="Did you mean 'conservative_weight'"):
        load_baseline_config(["baselines/cql"], ["cql.conservative_wieght=1"])
    with pytest.raises(ConfigError, match="--algo"):
        load_baseline_config(["quickstart-tiny"])


def test_discrete_action_dataset_is_refused_before_anything_trains(capsys, tmp_path, reacher_dataset):
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from lamo_scale.data.collect import _write_dataset

    env = gym.make("CartPole-v1")  # discrete actions (collect's recipes are all continuous)
    obs, _ = env.reset(seed=0)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    for _ in range(500):
        a = int(env.action_space.sample())
        obs, r, term, trunc, _ = env.step(a)
        observations.append(obs), actions.append(a), rewards.append(r), terms.append(term), truncs.append(trunc)
        if term or trunc:
            break
    episode = EpisodeBuffer(id=0, seed=0, observations=np.asarray(observations), actions=np.asarray(actions),
                            rewards=rewards, terminations=terms, truncations=truncs, infos={})
    _write_dataset("test/cartpole/random-v0", "CartPole-v1", [episode], env.observation_space, env.action_space,
                   {"dataset_id": "test/cartpole/random-v0", "minari_version": minari.__version__}, overwrite=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for algo in ("td3bc", "cql"):
        code = baseline_main(["--algo", algo, "--dataset", "test/cartpole/random-v0", f"tracking.uri={uri}",
                              f"train.output_dir={tmp_path}/runs/{{run_name}}"])
        err = capsys.readouterr().err
        assert code == 2
        assert "Discrete(2)" in err and "needs continuous (Box) actions" in err
        assert "bc, cql, iql, td3bc" in err and reacher_dataset in err  # the valid choices
    assert not (tmp_path / "runs").exists()
    assert MlflowClient(tracking_uri=uri).search_experiments(filter_string="name != 'Default'") == []
