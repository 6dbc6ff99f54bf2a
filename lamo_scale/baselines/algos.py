"""d3rlpy on the project's data: a :class:`TrajectoryIndex` as a d3rlpy dataset, and the algorithms.

The dataset is built from the very arrays a LaMo run trains on (same loader, same data-ratio
subset, same normalised states): observations ``index.states``, actions, the unscaled per-step
rewards, a terminal flag on the last step of episodes that terminated and a timeout flag on the
last step of those a time limit cut (d3rlpy then never bootstraps across an episode end, and
never samples the last step of a truncated episode, whose next state the index does not keep).
"""
from __future__ import annotations

import numpy as np

from lamo_scale.data.trajectories import TrajectoryIndex


def import_d3rlpy():
    """``import d3rlpy``, or a message that says how to install it."""
    import contextlib
    import io
    import logging
    import warnings

    try:
        # d3rlpy imports the old `gym` package, which prints an "unmaintained" notice to stderr
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import d3rlpy
    except ImportError as err:
        raise ImportError("the baselines need d3rlpy: scripts/install.sh .venv baselines (or the dev profile); "
                          "it installs d3rlpy with --no-deps because d3rlpy pins gymnasium==1.0.0") from err
    import structlog

    # d3rlpy logs through structlog at info level ("Signatures have been automatically determined", ...)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return d3rlpy


def to_d3rlpy_dataset(index: TrajectoryIndex):
    """The index as a d3rlpy ``MDPDataset`` (episode ends from ``episode_lengths`` / ``episode_terminated``)."""
    d3rlpy = import_d3rlpy()
    if index.rewards is None or index.episode_terminated is None:
        raise ValueError("this TrajectoryIndex carries no rewards / terminal flags: load it with load_trajectories")
    ends = np.cumsum(index.episode_lengths) - 1
    terminals = np.zeros(index.num_steps, np.float32)
    timeouts = np.zeros(index.num_steps, np.float32)
    terminals[ends[index.episode_terminated]] = 1.0
    timeouts[ends[~index.episode_terminated]] = 1.0
    return d3rlpy.dataset.MDPDataset(observations=index.states, actions=index.actions, rewards=index.rewards,
                                     terminals=terminals, timeouts=timeouts,
                                     action_space=d3rlpy.ActionSpace.CONTINUOUS, action_size=index.act_dim)


def _action_scaler(d3rlpy, low: np.ndarray, high: np.ndarray):
    """Map [-1, 1] policy outputs to the action box when it is not already [-1, 1] (D4RL's is)."""
    if np.allclose(low, -1.0) and np.allclose(high, 1.0):
        return None
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        return None
    return d3rlpy.preprocessing.MinMaxActionScaler(minimum=np.asarray(low, np.float32),
                                                   maximum=np.asarray(high, np.float32))


def build_algo(cfg, action_low: np.ndarray, action_high: np.ndarray):
    """The d3rlpy algorithm of ``cfg.algo`` with ``cfg.<algo>``'s hyper-parameters (not yet built)."""
    d3rlpy = import_d3rlpy()
    p = cfg.params
    encoder = d3rlpy.models.encoders.VectorEncoderFactory(list(p.hidden_units))
    scaler = _action_scaler(d3rlpy, action_low, action_high)
    common = dict(batch_size=p.batch_size, action_scaler=scaler)
    if cfg.algo == "bc":
        conf = d3rlpy.algos.BCConfig(learning_rate=p.learning_rate, policy_type=p.policy_type,
                                     encoder_factory=encoder, **common)
    elif cfg.algo == "cql":
        conf = d3rlpy.algos.CQLConfig(
            actor_learning_rate=p.actor_learning_rate, critic_learning_rate=p.critic_learning_rate,
            temp_learning_rate=p.temp_learning_rate, alpha_learning_rate=p.alpha_learning_rate,
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, gamma=p.gamma, tau=p.tau,
            n_critics=p.n_critics, initial_temperature=p.initial_temperature, initial_alpha=p.initial_alpha,
            alpha_threshold=p.alpha_threshold, conservative_weight=p.conservative_weight,
            n_action_samples=p.n_action_samples, soft_q_backup=p.soft_q_backup, max_q_backup=p.max_q_backup,
            **common)
    elif cfg.algo == "iql":
        optim = (d3rlpy.optimizers.AdamFactory(
            lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=cfg.train.steps))
            if p.actor_cosine_schedule else d3rlpy.optimizers.AdamFactory())
        reward_scaler = (d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=p.reward_return_scale)
                         if p.reward_return_scale else None)
        conf = d3rlpy.algos.IQLConfig(
            actor_learning_rate=p.actor_learning_rate, critic_learning_rate=p.critic_learning_rate,
            actor_optim_factory=optim, actor_encoder_factory=encoder, critic_encoder_factory=encoder,
            value_encoder_factory=encoder, gamma=p.gamma, tau=p.tau, n_critics=p.n_critics,
            expectile=p.expectile, weight_temp=p.weight_temp, max_weight=p.max_weight,
            reward_scaler=reward_scaler, **common)
    elif cfg.algo == "td3bc":
        conf = d3rlpy.algos.TD3PlusBCConfig(
            actor_learning_rate=p.actor_learning_rate, critic_learning_rate=p.critic_learning_rate,
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, gamma=p.gamma, tau=p.tau,
            n_critics=p.n_critics, target_smoothing_sigma=p.target_smoothing_sigma,
            target_smoothing_clip=p.target_smoothing_clip, alpha=p.alpha,
            update_actor_interval=p.update_actor_interval, **common)
    else:  # load_baseline_config refuses other names; this guards direct callers
        raise ValueError(f"unknown baseline algorithm {cfg.algo!r}")
    return conf.create(device=cfg.train.device)


def prepare(algo, dataset) -> None:
    """Fit the algorithm's scalers on the dataset (IQL's return-based reward scale) and build its networks."""
    from d3rlpy.algos.utility import build_scalers_with_transition_picker

    build_scalers_with_transition_picker(algo, dataset)
    obs_shape = dataset.sample_transition().observation_signature.shape[0]
    algo.create_impl(obs_shape, dataset.dataset_info.action_size)
