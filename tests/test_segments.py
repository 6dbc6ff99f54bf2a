"""Trajectory index and segment stream: RTG, padding/masks, data ratio, sharding, resume."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lamo_scale.data.segments import SegmentStream, gather_segments, window_offsets
from lamo_scale.data.trajectories import (DatasetNotFoundError, StateStats, TrajectoryIndex, load_trajectories,
                                          open_dataset, returns_to_go, select_episodes)


def toy_index(lengths=(3, 5, 2)) -> TrajectoryIndex:
    """Episodes whose state value encodes (episode, position) for easy checking."""
    states, actions, rtg, ts = [], [], [], []
    for e, n in enumerate(lengths):
        pos = np.arange(n)
        states.append(np.stack([np.full(n, e), pos], 1).astype(np.float32))
        actions.append((10 * e + pos).astype(np.float32)[:, None])
        rtg.append(returns_to_go(np.ones(n)).astype(np.float32))
        ts.append(pos)
    pos = np.concatenate(ts).astype(np.int64)
    return TrajectoryIndex(states=np.concatenate(states), actions=np.concatenate(actions), rtg=np.concatenate(rtg),
                           timesteps=pos, episode_pos=pos, episode_lengths=np.asarray(lengths),
                           episode_returns=np.asarray(lengths, float), state_stats=StateStats(np.zeros(2), np.ones(2)),
                           action_low=-np.ones(1), action_high=np.ones(1), dataset_id="toy")


def test_returns_to_go_pinned():
    np.testing.assert_allclose(returns_to_go([1.0, 2.0, 3.0, 4.0]), [10.0, 9.0, 7.0, 4.0])


def test_window_offsets_left_padding():
    offsets, valid = window_offsets(np.array([0, 1, 5]), 3)
    assert offsets.tolist() == [-2, -1, 0]
    assert valid.tolist() == [[False, False, True], [False, True, True], [True, True, True]]


def test_segments_pad_at_episode_start_and_never_cross_episodes():
    index = toy_index()
    # flat step 3 is episode 1 position 0; flat 5 is episode 1 position 2; flat 8 is episode 2 position 0
    batch = gather_segments(index, np.array([3, 5, 8]), 3)
    assert batch["attention_mask"].tolist() == [[0, 0, 1], [1, 1, 1], [0, 0, 1]]
    assert batch["actions"][:, :, 0].tolist() == [[0, 0, 10], [10, 11, 12], [0, 0, 20]]
    assert batch["timesteps"].tolist() == [[0, 0, 0], [0, 1, 2], [0, 0, 0]]
    assert batch["returns_to_go"][1, :, 0].tolist() == [5.0, 4.0, 3.0]
    assert batch["states"].shape == (3, 3, 2) and batch["returns_to_go"].shape == (3, 3, 1)


def test_data_ratio_is_seeded_and_keeps_at_least_one():
    a, b = select_episodes(100, 0.1, seed=3), select_episodes(100, 0.1, seed=3)
    assert a.tolist() == b.tolist() and len(a) == 10
    assert select_episodes(100, 0.1, seed=4).tolist() != a.tolist()
    assert len(select_episodes(50, 0.01, seed=0)) == 1
    assert select_episodes(7, 1.0, seed=0).tolist() == list(range(7))


def _ends(stream: SegmentStream, n: int) -> list[np.ndarray]:
    return [stream.ends_for(k) for k in range(n)]


def test_one_epoch_covers_every_step_once():
    index = toy_index()
    stream = SegmentStream(index, 3, micro_batch=5, seed=0)
    ends = np.concatenate(_ends(stream, 2))
    assert sorted(ends.tolist()) == list(range(10))


def test_ranks_are_disjoint_and_union_equals_single_process_batch():
    index = toy_index((7, 9, 4, 12))
    single = SegmentStream(index, 4, micro_batch=8, seed=1)
    ranks = [SegmentStream(index, 4, micro_batch=4, seed=1, rank=r, world_size=2) for r in range(2)]
    for k in range(3):
        r0, r1 = ranks[0].ends_for(k), ranks[1].ends_for(k)
        assert not set(r0.tolist()) & set(r1.tolist())
        assert sorted(np.concatenate([r0, r1]).tolist()) == sorted(single.ends_for(k).tolist())


def test_dataloader_workers_split_batches_without_changing_the_data():
    index = toy_index((30, 40, 50))
    stream = SegmentStream(index, 4, micro_batch=6, seed=2)
    plain = [b["actions"] for _, b in zip(range(6), iter(stream))]
    loader = DataLoader(SegmentStream(index, 4, micro_batch=6, seed=2), batch_size=None, num_workers=2)
    workers = [b["actions"] for _, b in zip(range(6), iter(loader))]
    for a, b in zip(plain, workers):
        assert torch.equal(a, b)


def test_resume_position_continues_the_same_sequence():
    index = toy_index((30, 40))
    full = [b["actions"] for _, b in zip(range(5), iter(SegmentStream(index, 3, 4, seed=5)))]
    resumed = [b["actions"] for _, b in zip(range(2), iter(SegmentStream(index, 3, 4, seed=5, start_micro_batch=3)))]
    assert torch.equal(full[3], resumed[0]) and torch.equal(full[4], resumed[1])


def test_real_minari_dataset_index(reacher_dataset):
    ds = open_dataset(reacher_dataset)
    index = load_trajectories(ds, rtg_scale=100.0, data_ratio=1.0, seed=0)
    assert index.num_steps == ds.total_steps
    assert index.state_dim == 12 and index.act_dim == 2
    assert np.all(index.episode_lengths == 100)
    # rtg at each episode start equals the episode return / scale
    starts = np.concatenate([[0], np.cumsum(index.episode_lengths)[:-1]])
    np.testing.assert_allclose(index.rtg[starts] * 100.0, index.episode_returns, rtol=1e-5)
    np.testing.assert_allclose(index.states.mean(0), 0.0, atol=1e-4)
    half = load_trajectories(ds, rtg_scale=100.0, data_ratio=0.5, seed=0)
    assert len(half.episode_lengths) == round(0.5 * ds.total_episodes)


def test_missing_dataset_names_id_store_and_command(minari_store):
    with pytest.raises(DatasetNotFoundError) as err:
        open_dataset("nope/reacher2d/missing-v0")
    msg = str(err.value)
    assert "nope/reacher2d/missing-v0" in msg and str(minari_store) in msg and "lamo-scale collect" in msg


def test_dict_observations_flatten_like_gymnasium():
    import gymnasium as gym

    from lamo_scale.data.trajectories import flatten_observations

    space = gym.spaces.Dict({"observation": gym.spaces.Box(-1, 1, (4,)), "desired_goal": gym.spaces.Box(-1, 1, (2,)),
                             "achieved_goal": gym.spaces.Box(-1, 1, (2,))})
    samples = [space.sample() for _ in range(3)]
    batch = {k: np.stack([s[k] for s in samples]) for k in space.spaces}
    expected = np.stack([gym.spaces.flatten(space, s) for s in samples]).astype(np.float32)
    np.testing.assert_array_equal(flatten_observations(space, batch), expected)
    assert list(space.spaces) == ["achieved_goal", "desired_goal", "observation"]  # documented: sorted keys


def test_rollout_windows_replay_a_dataset_episode_exactly_as_training_segments(reacher_dataset):
    """Train/rollout parity: states normalised alike, RTG decremented by the rewards, timesteps, masks."""
    from lamo_scale.rollout.acting import ActingSpec, EpisodeWindows

    dataset = open_dataset(reacher_dataset)
    index = load_trajectories(dataset, rtg_scale=100.0, data_ratio=1.0, seed=0)
    episode = next(iter(dataset.iterate_episodes([int(index.episode_ids[1])])))
    start = int(index.episode_lengths[0])  # flat offset of the second kept episode
    k, n = 5, len(episode.rewards)
    spec = ActingSpec(env="LaMoReacher2d-v1", state_stats=index.state_stats, rtg_scale=100.0, context_len=k)
    history = EpisodeWindows(spec, episode.observations[:1], np.array([episode.rewards.sum()]), n, 2)
    for t in range(n):
        window = history.window(t)
        segment = gather_segments(index, np.array([start + t]), k)
        for key in segment:
            got, want = window[key], segment[key]
            if key == "actions":  # a_t is not known yet when acting; causally masked from the state token
                assert not got[:, -1].any()
                got, want = got[:, :-1], want[:, :-1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"{key} at step {t}: {m}")
        history.record(t, episode.actions[t:t + 1], episode.observations[t + 1:t + 2], episode.rewards[t:t + 1])


def test_finished_and_filler_episodes_are_left_out_of_the_forward(reacher_dataset):
    from lamo_scale.rollout.acting import ActingSpec, run_episodes

    index = load_trajectories(open_dataset(reacher_dataset), rtg_scale=100.0)
    spec = ActingSpec(env="LaMoReacher2d-v1", state_stats=index.state_stats, rtg_scale=100.0, context_len=3,
                      max_episode_steps=7)
    sizes = []

    def act(states, actions, returns_to_go, timesteps, attention_mask):
        sizes.append(len(states))
        return torch.tanh(states[:, -1, :2])  # a deterministic function of the window

    # 3 episodes on 2 envs: the second wave has one episode and one filler env
    results = run_episodes(act, spec, [50.0], episodes=3, num_envs=2, seed=0, progress=False)
    assert sizes == [2] * 7 + [1] * 7
    assert results[50.0].lengths == [7, 7, 7]
    one_at_a_time = run_episodes(act, spec, [50.0], episodes=3, num_envs=1, seed=0, progress=False)
    assert one_at_a_time[50.0].returns == results[50.0].returns


def test_async_vector_env_acts_on_the_same_episodes_as_sync(reacher_dataset):
    """eval.vector_env=async (one process per env) sees exactly the observations sync does."""
    from lamo_scale.rollout.acting import ActingSpec, run_episodes

    index = load_trajectories(open_dataset(reacher_dataset), rtg_scale=100.0)
    spec = ActingSpec(env="LaMoReacher2d-v1", state_stats=index.state_stats, rtg_scale=100.0, context_len=3,
                      max_episode_steps=6)
    seen = {"sync": [], "async": []}
    results = {}
    for mode in seen:
        def act(states, actions, returns_to_go, timesteps, attention_mask, mode=mode):
            seen[mode].append(states[:, -1].clone())
            return torch.tanh(3 * states[:, -1, :2])
        results[mode] = run_episodes(act, spec, [50.0], episodes=3, num_envs=2, seed=5, progress=False,
                                     vector_env=mode)
    assert len(seen["async"]) == len(seen["sync"]) == 12
    for got, want in zip(seen["async"], seen["sync"]):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert results["async"][50.0].returns == results["sync"][50.0].returns
    with pytest.raises(ValueError, match="vector_env"):
        run_episodes(act, spec, [50.0], episodes=1, num_envs=1, seed=0, progress=False, vector_env="threads")
