"""Roll batched policies out in vectorised envs and write standard Minari datasets.

Writes are atomic: a dataset is built in a hidden temporary directory next to its final
place in the Minari store (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``) and
renamed into place only when complete, so an interrupted collection never leaves a
partial dataset under a valid id (hidden directories are skipped by Minari's listing).

Budget semantics: rollouts run until ``num_steps`` environment steps have been taken in
total; from then on no new episode is started and every episode in flight is played to its
end. Only whole episodes are stored, so a dataset holds at least ``num_steps`` transitions
(at most ``num_steps + num_envs * max_episode_steps``). Finishing in-flight episodes, rather
than dropping them, avoids biasing the data towards short episodes.

Mixtures (:func:`collect_mixture`): several behaviour policies, each with a share of the
budget, stored part after part in one dataset with per-part provenance. D4RL's
``medium-expert`` is such a union of its medium and expert data; ``medium-replay-like`` is
our stand-in for D4RL's ``medium-replay`` (see ``MEDIUM_REPLAY_LIKE_MIXTURES``).

Recipes (``COLLECT_RECIPES``; table below ``dataset_report``): hopper / halfcheetah /
walker2d x medium, expert, medium-expert, medium-replay-like; pointmaze-umaze /
pointmaze-medium (D4RL maze2d-style waypoint controller, dict observations); reacher2d.
Kitchen is not collected: its data is Minari's ``D4RL/kitchen/complete-v2``,
``partial-v2``, ``mixed-v2`` (``KITCHEN_DATASETS``; download needs network, and the
``FrankaKitchen-v1`` env needs gymnasium-robotics with mujoco <= 3.x).

    lamo-scale collect --recipe reacher2d-expert            # -> lamo/reacher2d/expert-v1
    lamo-scale collect --recipe hopper-medium-expert        # -> lamo/hopper/medium-expert-v0
    lamo-scale datasets                                     # behaviour scores of the local data
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.dataset.minari_storage import MinariStorage
from minari.namespace import create_namespace, list_local_namespaces
from minari.storage.datasets_root_dir import get_dataset_path
from tqdm.auto import tqdm

from lamo_scale.data.spaces import is_image_space
from lamo_scale.envs import ensure_robotics_registered, make_env, make_vector_env
from lamo_scale.envs.scores import ReferenceLookup, find_reference, normalized_score, reference_scores

log = logging.getLogger(__name__)

Policy = Callable[[np.ndarray], np.ndarray]


def dataset_store_path() -> Path:
    """Root of the local Minari store (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``), created if missing."""
    return Path(get_dataset_path())


def list_local(prefix: str | None = None) -> list[str]:
    """Ids of the datasets in the local Minari store, optionally under a namespace ``prefix``."""
    return sorted(minari.list_local_datasets(prefix=prefix))


def _lamo_version() -> str:
    try:
        return importlib.metadata.version("lamo_scale")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _policy_provenance(policy: Policy) -> dict[str, Any]:
    if hasattr(policy, "provenance"):
        return dict(policy.provenance())
    return {"policy": repr(policy)}


def _take(obs, i: int):
    """Observation ``i`` of a batch: an array row, or the same row of every entry of a (nested) dict."""
    if isinstance(obs, dict):
        return {key: _take(value, i) for key, value in obs.items()}
    return obs[i]


def _stack(observations: list):
    """Stack per-step observations into ``[T, ...]`` arrays, dict observations key by key."""
    if isinstance(observations[0], dict):
        return {key: _stack([o[key] for o in observations]) for key in observations[0]}
    return np.stack(observations)


def rollout_episodes(
    env_id: str,
    policy: Policy,
    num_steps: int,
    num_envs: int = 8,
    seed: int = 0,
    action_noise: float = 0.0,
    progress: bool = True,
) -> tuple[list[EpisodeBuffer], gym.spaces.Space, gym.spaces.Space]:
    """Roll ``policy`` out over ``num_envs`` envs; return whole episodes (see module doc for the budget).

    Dict observation spaces (PointMaze's ``observation`` / ``achieved_goal`` /
    ``desired_goal``) are kept as dicts: the policy gets the batched dict, episodes store a
    dict of ``[T + 1, ...]`` arrays.

    ``action_noise`` adds seeded N(0, action_noise²) noise to every action before clipping
    to the action bounds; for a discrete action space it is ε: the probability that an action
    is replaced by a uniformly random one. The executed action is what gets recorded.
    """
    envs = make_vector_env(env_id, num_envs, seed=None)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    perturb = _action_perturbation(act_space, action_noise, np.random.default_rng(seed))
    obs, _ = envs.reset(seed=seed)

    def new_episode(first_obs):
        return {"obs": [first_obs], "act": [], "rew": [], "term": [], "trunc": []}

    running = [new_episode(_take(obs, i)) for i in range(num_envs)]
    active = np.ones(num_envs, dtype=bool)  # still recording an episode
    needs_reset = np.zeros(num_envs, dtype=bool)  # next step() is gymnasium's autoreset step
    episodes: list[EpisodeBuffer] = []
    steps_taken = 0
    bar = tqdm(total=num_steps, desc=f"collect {env_id}", unit="step", disable=not progress)
    start = time.perf_counter()
    try:
        while active.any():
            action = perturb(np.asarray(policy(obs), dtype=act_space.dtype).reshape(num_envs, *act_space.shape))
            next_obs, reward, terminated, truncated, _ = envs.step(action)
            for i in range(num_envs):
                if not active[i]:
                    continue
                if needs_reset[i]:  # next_obs[i] starts a new episode; this step is not a transition
                    needs_reset[i] = False
                    running[i] = new_episode(_take(next_obs, i))
                    continue
                ep = running[i]
                ep["act"].append(action[i])
                ep["rew"].append(float(reward[i]))
                ep["term"].append(bool(terminated[i]))
                ep["trunc"].append(bool(truncated[i]))
                ep["obs"].append(_take(next_obs, i))
                steps_taken += 1
                bar.update(1)
                if terminated[i] or truncated[i]:
                    episodes.append(
                        EpisodeBuffer(
                            id=len(episodes),
                            observations=_stack(ep["obs"]),
                            actions=np.stack(ep["act"]),
                            rewards=np.asarray(ep["rew"], dtype=np.float64),
                            terminations=np.asarray(ep["term"]),
                            truncations=np.asarray(ep["trunc"]),
                        )
                    )
                    needs_reset[i] = True
                    running[i] = None
            if steps_taken >= num_steps:
                active &= ~needs_reset  # envs whose episode just ended start no new one
            obs = next_obs
    finally:
        bar.close()
        envs.close()
    elapsed = time.perf_counter() - start
    log.info(
        "%s: %d episodes, %d transitions in %.1f s (%.0f transitions/s, %d envs)",
        env_id, len(episodes), steps_taken, elapsed, steps_taken / max(elapsed, 1e-9), num_envs,
    )
    return episodes, obs_space, act_space


def _action_perturbation(space: gym.spaces.Space, noise: float, rng: np.random.Generator):
    """The executed action from the policy's: Gaussian noise then clipping (Box), ε-random (Discrete)."""
    if isinstance(space, gym.spaces.Discrete):
        def epsilon_random(action: np.ndarray) -> np.ndarray:
            if noise <= 0.0:
                return action
            draw = rng.random(action.shape) < noise
            random = space.start + rng.integers(0, space.n, size=action.shape)
            return np.where(draw, random, action).astype(action.dtype)
        return epsilon_random

    def gaussian(action: np.ndarray) -> np.ndarray:
        if noise > 0.0:
            action = action + rng.normal(0.0, noise, size=action.shape).astype(action.dtype)
        return np.clip(action, space.low, space.high)
    return gaussian


def _env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    ensure_robotics_registered(env_id)
    return gym.spec(env_id)


def _write_dataset(
    dataset_id: str,
    env_id: str,
    episodes: list[EpisodeBuffer],
    obs_space: gym.spaces.Space,
    act_space: gym.spaces.Space,
    metadata: dict[str, Any],
    overwrite: bool,
) -> minari.MinariDataset:
    """Build the dataset in a hidden temp dir beside its final place, then rename it in."""
    final = get_dataset_path(dataset_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        storage = MinariStorage.new(
            tmp / "data", observation_space=obs_space, action_space=act_space, env_spec=_env_spec(env_id)
        )
        storage.update_metadata(metadata)
        with _compressed_frames(obs_space):
            storage.update_episodes(episodes)
        namespace = parse_dataset_id(dataset_id)[0]
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace)
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"dataset {dataset_id} appeared at {final} while collecting")
            trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return minari.load_dataset(dataset_id)


@contextlib.contextmanager
def _compressed_frames(obs_space: gym.spaces.Space):
    """Within the block, Minari's HDF5 writer stores uint8 frame arrays gzip-compressed.

    Minari (0.5) JPEG-encodes (lossy) frames it recognises as images (H, W >= 32, at most 3 channels
    last) and writes every other array uncompressed: 4 stacked 84x84 frames are the latter, so a
    100k-step dataset would take 2.8 GB. Chunks of 16 whole steps let gzip's 32 KB window see the
    previous step's copy of 3 of the 4 frames; h5py decompresses transparently on read, so the
    files stay standard Minari datasets.
    """
    if not is_image_space(obs_space):
        yield
        return
    import h5py

    original = h5py.Group.create_dataset

    def create_dataset(self, name, shape=None, dtype=None, data=None, **kwargs):
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim >= 3:  # [T + 1, *frame]
            kwargs.update(chunks=(min(16, len(data)), *data.shape[1:]), compression="gzip", compression_opts=4)
        return original(self, name, shape=shape, dtype=dtype, data=data, **kwargs)

    h5py.Group.create_dataset = create_dataset
    try:
        yield
    finally:
        h5py.Group.create_dataset = original


def _returns(episodes: list[EpisodeBuffer]) -> np.ndarray:
    return np.array([float(np.sum(ep.rewards)) for ep in episodes])


def _check_target(dataset_id: str, overwrite: bool) -> None:
    parse_dataset_id(dataset_id)  # malformed ids fail before any rollout
    if get_dataset_path(dataset_id).exists() and not overwrite:
        raise FileExistsError(
            f"dataset {dataset_id} already exists at {get_dataset_path(dataset_id)}; pass overwrite=True"
        )


def _dataset_metadata(
    dataset_id: str,
    env_id: str,
    provenance: dict[str, Any],
    ref_min_score: float | None,
    ref_max_score: float | None,
    description: str | None,
    algorithm_name: str | None,
) -> dict[str, Any]:
    if ref_min_score is None or ref_max_score is None:
        refs = reference_scores(_env_spec(env_id))  # the registered spec: what rollout_episodes built
        if refs is not None:
            ref_min_score = refs[0] if ref_min_score is None else ref_min_score
            ref_max_score = refs[1] if ref_max_score is None else ref_max_score
    meta: dict[str, Any] = {
        "dataset_id": dataset_id,
        "algorithm_name": algorithm_name or str(provenance["policy"]),
        "author": {"lamo_scale"},
        "minari_version": importlib.metadata.version("minari"),
        "lamo_provenance": provenance,
    }
    if description is not None:
        meta["description"] = description
    if ref_min_score is not None and ref_max_score is not None:
        meta["ref_min_score"] = float(ref_min_score)
        meta["ref_max_score"] = float(ref_max_score)
    return meta


def _finish(dataset_id, env_id, episodes, obs_space, act_space, provenance, seed, num_steps, num_envs, elapsed,
            metadata, ref_min_score, ref_max_score, description, algorithm_name, overwrite) -> minari.MinariDataset:
    """Add the provenance every collection records, then write the dataset atomically."""
    provenance = {**provenance, "seed": int(seed), "num_steps_requested": int(num_steps), "num_envs": int(num_envs),
                  "collection_seconds": round(elapsed, 3), "lamo_scale_version": _lamo_version(), **(metadata or {})}
    meta = _dataset_metadata(dataset_id, env_id, provenance, ref_min_score, ref_max_score, description, algorithm_name)
    return _write_dataset(dataset_id, env_id, episodes, obs_space, act_space, meta, overwrite)


def collect_dataset(
    dataset_id: str,
    env_id: str,
    policy: Policy,
    num_steps: int,
    num_envs: int = 8,
    seed: int = 0,
    action_noise: float = 0.0,
    metadata: dict[str, Any] | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    algorithm_name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> minari.MinariDataset:
    """Collect ``num_steps`` (or a little more: whole episodes) of ``policy`` in ``env_id`` as Minari ``dataset_id``.

    ``policy`` maps a batch of observations ``(num_envs, *obs_shape)`` to actions. Refuses an
    existing id unless ``overwrite``. Provenance (env id, policy and its file sha256 when the
    policy has a ``provenance()`` method, noise, seed, budget, lamo_scale version, plus
    ``metadata``) is stored under the dataset metadata key ``lamo_provenance``. Reference
    scores default to :func:`lamo_scale.envs.scores.reference_scores`.
    """
    _check_target(dataset_id, overwrite)
    start = time.perf_counter()
    episodes, obs_space, act_space = rollout_episodes(
        env_id, policy, num_steps, num_envs=num_envs, seed=seed, action_noise=action_noise, progress=progress
    )
    if not episodes:
        raise RuntimeError(f"no episode finished within the budget of {num_steps} steps in {env_id}")
    elapsed = time.perf_counter() - start

    provenance = {"env_id": env_id, **_policy_provenance(policy), "action_noise": float(action_noise)}
    return _finish(dataset_id, env_id, episodes, obs_space, act_space, provenance, seed, num_steps, num_envs,
                   elapsed, metadata, ref_min_score, ref_max_score, description, algorithm_name, overwrite)


@dataclass
class MixturePart:
    """One behaviour policy of a mixture dataset and its share of the transition budget."""

    policy: Policy
    fraction: float
    action_noise: float = 0.0
    label: str = ""


MIXTURE_SEED_STRIDE = 1000
"""Part ``k`` of a mixture collected with seed ``s`` is rolled out with seed ``s + 1000 k``."""


def _part_envs(num_envs: int, budget: int, max_episode_steps: int | None) -> int:
    """Envs for one mixture part: at most one per ``max_episode_steps`` of its budget.

    Every env plays at least one whole episode, so a small part on many envs would overshoot
    its share (8 envs x 1000-step HalfCheetah episodes = 8000 steps for an 800-step share).
    """
    if not max_episode_steps:
        return num_envs
    return max(1, min(num_envs, budget // max_episode_steps))


def collect_mixture(
    dataset_id: str,
    env_id: str,
    parts: list[MixturePart],
    num_steps: int,
    num_envs: int = 8,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    algorithm_name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> minari.MinariDataset:
    """Collect several behaviour policies into one dataset (D4RL's medium-expert, our medium-replay-like).

    Part ``k`` gets ``round(fraction_k * num_steps)`` transitions of budget (whole episodes,
    as in :func:`collect_dataset`), seed ``seed + 1000 k`` and ``num_envs`` envs, fewer when
    its budget is under ``num_envs`` episode horizons (see :func:`_part_envs`, so a part
    overshoots its share by at most one horizon per env); the episodes are stored part
    after part (ids renumbered from 0). Fractions must sum to 1. The provenance's
    ``mixture`` list records, per part: label, fraction, noise, seed, budget, the episode
    id range ``[first, last]`` it produced, its transitions and mean return, and its
    policy's own provenance (file and sha256 for SB3 policies).
    """
    if not parts:
        raise ValueError("a mixture needs at least one part")
    total = sum(p.fraction for p in parts)
    if not np.isclose(total, 1.0, atol=1e-6) or any(p.fraction <= 0 for p in parts):
        raise ValueError(f"mixture fractions must be positive and sum to 1, got {[p.fraction for p in parts]}")
    _check_target(dataset_id, overwrite)
    start = time.perf_counter()
    episodes: list[EpisodeBuffer] = []
    components = []
    obs_space = act_space = None
    max_episode_steps = _env_spec(env_id).max_episode_steps
    for k, part in enumerate(parts):
        budget = max(1, int(round(part.fraction * num_steps)))
        part_seed = int(seed) + MIXTURE_SEED_STRIDE * k
        part_envs = _part_envs(num_envs, budget, max_episode_steps)
        eps, obs_space, act_space = rollout_episodes(
            env_id, part.policy, budget, num_envs=part_envs, seed=part_seed,
            action_noise=part.action_noise, progress=progress,
        )
        if not eps:
            raise RuntimeError(f"mixture part {part.label or k} produced no whole episode in {env_id}")
        first = len(episodes)
        episodes.extend(dataclasses.replace(ep, id=first + j) for j, ep in enumerate(eps))
        components.append({
            "label": part.label or f"part{k}",
            **_policy_provenance(part.policy),
            "fraction": float(part.fraction),
            "action_noise": float(part.action_noise),
            "seed": part_seed,
            "num_steps_requested": budget,
            "num_envs": part_envs,
            "episode_ids": [first, len(episodes) - 1],
            "episodes": len(eps),
            "transitions": int(sum(len(ep.rewards) for ep in eps)),
            "return_mean": float(_returns(eps).mean()),
        })
    elapsed = time.perf_counter() - start
    provenance = {"env_id": env_id, "policy": "mix:" + "+".join(c["label"] for c in components),
                  "mixture": components}
    return _finish(dataset_id, env_id, episodes, obs_space, act_space, provenance, seed, num_steps, num_envs,
                   elapsed, metadata, ref_min_score, ref_max_score, description, algorithm_name, overwrite)


def behaviour_score(dataset_id: str) -> Optional[float]:
    """Mean normalised score of a local dataset's own episodes (None if it is not here or has no reference)."""
    if dataset_id not in list_local():  # e.g. a report built on another machine than the data
        return None
    score = dataset_report([dataset_id])[0].get("score")
    return score if isinstance(score, (int, float)) and math.isfinite(score) else None


def dataset_report(dataset_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per local dataset: id, env, episodes, steps, return mean/min/max, the data's normalised score
    and ``learnable``: the fraction of its action variance a model of the state can predict
    (:mod:`lamo_scale.data.diagnostics`; near 0 = the actions are mostly noise).

    ``score`` is the D4RL-normalised mean episode return of the data (``score_min`` /
    ``score_max``: of its worst / best episode), with the dataset's ``ref_min_score`` /
    ``ref_max_score`` (else :func:`find_reference` of its env spec); ``behaviour`` is the
    behaviour policy recorded in its provenance (``mix:a+b`` for mixtures), ``parts`` the score of
    each mixture part by label (raw mean return where there are no reference scores). Without reference
    scores the scores are None and ``note`` says why (the returns are raw); else ``note`` is "".
    """
    rows = []
    for dataset_id in dataset_ids if dataset_ids is not None else list_local():
        dataset = minari.load_dataset(dataset_id)
        meta = dataset.storage.metadata
        env_spec = dataset.spec.env_spec
        env_id = env_spec.id if env_spec is not None else None
        episodes = list(dataset.iterate_episodes())  # read once: returns and the noise floor
        returns = _returns(episodes)
        ref_min, ref_max = meta.get("ref_min_score"), meta.get("ref_max_score")
        note = ""
        if ref_min is None or ref_max is None:
            found = (find_reference(env_spec) if env_spec is not None
                     else ReferenceLookup(None, "the dataset names no environment"))
            ref_min, ref_max = found.scores or (None, None)
            note = "" if found.scores else f"raw returns only: {found.reason}"
        nan = float("nan")
        mean = float(returns.mean()) if returns.size else nan
        lo = float(returns.min()) if returns.size else nan
        hi = float(returns.max()) if returns.size else nan
        has_ref = ref_min is not None and ref_max is not None
        prov = meta.get("lamo_provenance") or {}
        floor = _noise_floor(episodes)
        parts = {c["label"]: (normalized_score(c["return_mean"], ref_min, ref_max) if has_ref else c["return_mean"])
                 for c in (prov.get("mixture") or [])} if isinstance(prov, dict) else {}
        rows.append(
            {
                "id": dataset_id,
                "env": env_id,
                "episodes": int(dataset.total_episodes),
                "steps": int(dataset.total_steps),
                "return_mean": mean,
                "return_min": lo,
                "return_max": hi,
                "score": normalized_score(mean, ref_min, ref_max) if has_ref else None,
                "score_min": normalized_score(lo, ref_min, ref_max) if has_ref else None,
                "score_max": normalized_score(hi, ref_min, ref_max) if has_ref else None,
                "learnable": floor["learnable_fraction"] if floor else None,
                "behaviour": prov.get("policy") if isinstance(prov, dict) else None,
                "parts": parts,
                "note": note,
            }
        )
    return rows


def _noise_floor(episodes: list) -> Optional[dict[str, float]]:
    """The action noise floor of a dataset's episodes with array observations (None for dict observations)."""
    from lamo_scale.data.diagnostics import action_noise_floor

    states, actions = [], []
    for episode in episodes:
        if isinstance(episode.observations, dict) or len(episode.actions) == 0:
            return None
        if np.asarray(episode.observations).ndim > 2 or np.asarray(episode.actions).ndim < 2:
            return None  # image observations or discrete actions: a linear-Gaussian floor means nothing
        states.append(np.asarray(episode.observations)[: len(episode.actions)])
        actions.append(np.asarray(episode.actions))
    if not states or sum(len(a) for a in actions) <= 10:
        return None
    return action_noise_floor(np.concatenate(states), np.concatenate(actions))


# ---------------------------------------------------------------------------------------
# Built-in collection recipes (`lamo-scale collect --recipe <name>`)
#
# | recipe                          | dataset id                            | behaviour (D4RL-like)                      |
# |---------------------------------|---------------------------------------|--------------------------------------------|
# | <env>-medium                    | lamo/<env>/medium-v0                  | one zoo policy at ~D4RL "medium" level      |
# | <env>-expert                    | lamo/<env>/expert-v0                  | zoo TQC, deterministic                      |
# | <env>-medium-expert             | lamo/<env>/medium-expert-v0           | medium ∪ expert, half the budget each       |
# | <env>-medium-replay-like        | lamo/<env>/medium-replay-like-v0      | mixture of weaker zoo policies + random     |
# | pointmaze-umaze / -medium       | lamo/pointmaze/{umaze,medium}-v0      | BFS waypoint + PD controller, N(0, 0.5²)    |
# | reacher2d-expert                | lamo/reacher2d/expert-v1              | IK + PD controller                          |
# | reacher2d-medium                | lamo/reacher2d/medium-v1              | mid-training PPO, sampled actions (paper)   |
# | breakout-tracker-mixed          | lamo/breakout/tracker-mixed-v0        | pixel ball tracker, ε 0.05/0.25/0.5/1 mixed |
#
# <env> is hopper, halfcheetah, walker2d (gymnasium v5 MuJoCo). Kitchen is not collected
# here, see KITCHEN_DATASETS.


KITCHEN_DATASETS: dict[str, str] = {
    "kitchen-complete": "D4RL/kitchen/complete-v2",
    "kitchen-partial": "D4RL/kitchen/partial-v2",
    "kitchen-mixed": "D4RL/kitchen/mixed-v2",
}
"""Kitchen data is not collected: it is D4RL's human teleoperation data, which Minari hosts.

Download with network access (``minari download D4RL/kitchen/complete-v2``, or
``minari.download_dataset(...)``); scores are normalised with ``kitchen`` = (0, 4) tasks
completed (:mod:`lamo_scale.envs.scores`). Evaluating on ``FrankaKitchen-v1`` needs
gymnasium-robotics with mujoco <= 3.x (an optional extra): under mujoco 4 the env fails to
construct (see :mod:`lamo_scale.envs.pointmaze`).
"""


@dataclass(frozen=True)
class MixComponent:
    """One part of a mixture recipe: a behaviour policy, its noise and its share of the budget."""

    policy: str
    """Policy spec, as :attr:`CollectRecipe.policy` (``"sb3:<algo>/<folder>"``, ``"random"``, ...)."""
    fraction: float
    """Share of the recipe's transition budget."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to every action."""
    deterministic: bool = True
    """SB3 policies: mean action (True) or sampled actions (False)."""
    label: str = ""
    """Short name recorded in provenance (``"medium"``, ``"a2c"``, ...)."""


@dataclass(frozen=True)
class CollectRecipe:
    """A named way to make a dataset: which env, which behaviour policy (or mixture), how much noise."""

    dataset_id: str
    """Minari id the dataset is written under."""
    env_id: str
    """Gymnasium env id rolled out."""
    policy: str
    """``"reacher-ik"``, ``"pointmaze-waypoint"`` (scripted controllers), ``"packaged:<name>"`` (a
    Gaussian MLP policy shipped in lamo_scale/data/policies), ``"random"`` (uniform
    actions), ``"sb3:<algo>/<folder>"`` inside the SB3 zoo dir, or ``"mix:<labels>"`` for a
    mixture (then :attr:`components` says what is mixed)."""
    num_steps: int
    """Default transition budget (for mixtures: the total over all parts)."""
    deterministic: bool = True
    """SB3 policies: mean action (True) or sampled actions (False)."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to every action."""
    description: str = ""
    """Human description stored in the dataset."""
    components: tuple[MixComponent, ...] = ()
    """Mixture recipes: the parts, their fractions summing to 1."""


_LOCO_NOTE = "D4RL-like (same env family and normalisation, not the canonical D4RL file)."


def _R(dataset_id, env_id, policy, num_steps, description, **kw) -> CollectRecipe:
    return CollectRecipe(dataset_id, env_id, policy, num_steps, description=description, **kw)


def _mix(dataset_id, env_id, num_steps, description, components) -> CollectRecipe:
    components = tuple(components)
    policy = "mix:" + "+".join(c.label for c in components)
    return CollectRecipe(dataset_id, env_id, policy, num_steps, description=description, components=components)


def _as_component(recipe: CollectRecipe, fraction: float, label: str) -> MixComponent:
    return MixComponent(recipe.policy, fraction, recipe.action_noise, recipe.deterministic, label)


COLLECT_RECIPES: dict[str, CollectRecipe] = {
    "reacher2d-expert": _R("lamo/reacher2d/expert-v1", "LaMoReacher2d-v1", "reacher-ik", 100_000,
                           "Reacher2d (sparse reward), scripted IK+PD controller, no noise."),
    "reacher2d-medium": _R("lamo/reacher2d/medium-v1", "LaMoReacher2d-v1", "packaged:reacher2d-ppo-medium",
                           100_000,
                           "Reacher2d (sparse reward), as the paper's data: a mid-training checkpoint of a PPO agent "
                           "(Gaussian policy, std decaying 0.6 -> 0.1; this one at std 0.28, about half the final "
                           "agent's return) acting with its own sampled actions (scripts/train_reacher2d_ppo.py).",
                           deterministic=False),
    "hopper-medium": _R("lamo/hopper/medium-v0", "Hopper-v5", "sb3:sac/Hopper-v3_1", 1_000_000,
                        f"Hopper-v5, rl-zoo SAC with sampled actions. {_LOCO_NOTE}", deterministic=False),
    "hopper-expert": _R("lamo/hopper/expert-v0", "Hopper-v5", "sb3:tqc/Hopper-v3_1", 1_000_000,
                        f"Hopper-v5, rl-zoo TQC, deterministic. {_LOCO_NOTE}"),
    "halfcheetah-medium": _R("lamo/halfcheetah/medium-v0", "HalfCheetah-v5", "sb3:ars/HalfCheetah-v3_1", 1_000_000,
                             f"HalfCheetah-v5, rl-zoo ARS + N(0, 0.1^2) action noise. {_LOCO_NOTE}", action_noise=0.1),
    "halfcheetah-expert": _R("lamo/halfcheetah/expert-v0", "HalfCheetah-v5", "sb3:tqc/HalfCheetah-v3_1", 1_000_000,
                             f"HalfCheetah-v5, rl-zoo TQC, deterministic. {_LOCO_NOTE}"),
    "walker2d-medium": _R("lamo/walker2d/medium-v0", "Walker2d-v5", "sb3:sac/Walker2d-v3_1", 1_000_000,
                          f"Walker2d-v5, rl-zoo SAC + N(0, 0.4^2) action noise. {_LOCO_NOTE}", action_noise=0.4),
    "walker2d-expert": _R("lamo/walker2d/expert-v0", "Walker2d-v5", "sb3:tqc/Walker2d-v3_1", 1_000_000,
                          f"Walker2d-v5, rl-zoo TQC, deterministic. {_LOCO_NOTE}"),
}

# medium-expert: D4RL concatenates its medium and expert datasets (1M + 1M transitions).
for _env, _Env in (("hopper", "Hopper"), ("halfcheetah", "HalfCheetah"), ("walker2d", "Walker2d")):
    _medium, _expert = COLLECT_RECIPES[f"{_env}-medium"], COLLECT_RECIPES[f"{_env}-expert"]
    COLLECT_RECIPES[f"{_env}-medium-expert"] = _mix(
        f"lamo/{_env}/medium-expert-v0", f"{_Env}-v5", 2_000_000,
        f"{_Env}-v5 medium-expert: the {_env}-medium and {_env}-expert recipes, half the budget each, "
        f"concatenated as D4RL builds medium-expert. {_LOCO_NOTE}",
        [_as_component(_medium, 0.5, "medium"), _as_component(_expert, 0.5, "expert")],
    )

# medium-replay-like: D4RL's medium-replay is the replay buffer of a SAC run trained up to
# medium level (training it here is too slow on a few CPU cores). Stand-in: a mixture of
# weaker real zoo policies plus uniform-random actions, tuned so the data scores below
# medium with a wide spread. Fractions are shares of the transition budget.
# Budgets follow D4RL's dataset sizes (hopper 402k, halfcheetah 202k, walker2d 302k).
# Per-part behaviour scores (D4RL-normalised, episode mean [min, max]) measured on 4k-step
# samples, 8 envs, seed 0, are in the comments; the medium part is the env's medium recipe.
# The dataset score is an episode mean, so short-episode parts (random, heavy noise) weigh
# more than their transition share.
MEDIUM_REPLAY_LIKE_MIXTURES: dict[str, tuple[str, int, list[MixComponent]]] = {
    "hopper": ("Hopper", 402_000, [
        MixComponent("random", 0.02, label="random"),                         # 1.2 [0.7, 5.5], ~24 steps/episode
        MixComponent("sb3:tqc/Hopper-v3_1", 0.08, 1.2, label="tqc-n1.2"),     # 7.2 [0.8, 17.5]
        MixComponent("sb3:sac/Hopper-v3_1", 0.20, 0.8, label="sac-n0.8"),     # 12.5 [0.8, 22.9]
        MixComponent("sb3:trpo/Hopper-v3_1", 0.20, 0.5, label="trpo-n0.5"),   # 19.4 [12.1, 30.2]
        MixComponent("sb3:a2c/Hopper-v3_1", 0.20, 0.3, label="a2c-n0.3"),     # 25.8 [16.3, 35.8]
        MixComponent("sb3:ars/Hopper-v3_1", 0.20, 0.5, label="ars-n0.5"),     # 23.3 [9.8, 52.9]
        _as_component(COLLECT_RECIPES["hopper-medium"], 0.10, "medium"),      # 52.2 [33.5, 108.8]
    ]),
    "halfcheetah": ("HalfCheetah", 202_000, [
        MixComponent("random", 0.02, label="random"),                               # -0.3 [-0.8, 0.4]
        MixComponent("sb3:trpo/HalfCheetah-v3_1", 0.05, 0.5, label="trpo-n0.5"),    # 5.6 [4.8, 6.3]
        MixComponent("sb3:tqc/HalfCheetah-v3_1", 0.08, 1.2, label="tqc-n1.2"),      # 8.5 [1.7, 13.3]
        MixComponent("sb3:ars/HalfCheetah-v3_1", 0.10, 0.5, label="ars-n0.5"),      # 10.6 [1.1, 16.2]
        MixComponent("sb3:sac/HalfCheetah-v3_1", 0.20, 0.8, label="sac-n0.8"),      # 20.9 [19.7, 22.2]
        MixComponent("sb3:a2c/HalfCheetah-v3_1", 0.25, label="a2c"),                # 26.8 [24.8, 28.7]
        _as_component(COLLECT_RECIPES["halfcheetah-medium"], 0.30, "medium"),       # ~36
    ]),
    "walker2d": ("Walker2d", 302_000, [
        MixComponent("random", 0.01, label="random"),                               # -0.0 [-0.3, 1.1], ~22 steps/episode
        MixComponent("sb3:tqc/Walker2d-v3_1", 0.04, 1.2, label="tqc-n1.2"),         # 3.3 [-0.2, 13.6]
        MixComponent("sb3:trpo/Walker2d-v3_1", 0.10, 0.5, label="trpo-n0.5"),       # 7.1 [3.0, 16.7]
        MixComponent("sb3:sac/Walker2d-v3_1", 0.15, 0.8, label="sac-n0.8"),         # 9.9 [-0.1, 24.6]
        MixComponent("sb3:a2c/Walker2d-v3_1", 0.20, label="a2c"),                   # 14.7 [13.2, 15.3]
        MixComponent("sb3:sac/Walker2d-v3_1", 0.20, 0.6, label="sac-n0.6"),         # 20.7 [6.6, 33.3]
        MixComponent("sb3:trpo/Walker2d-v3_1", 0.15, 0.3, label="trpo-n0.3"),       # 16.5 [3.2, 77.8]
        _as_component(COLLECT_RECIPES["walker2d-medium"], 0.15, "medium"),          # ~51
    ]),
}
# Not used: PPO (Hopper 76, HalfCheetah 50: above medium; Walker2d's needs the TimeFeature
# wrapper's 18-dim observations).

for _env, (_Env, _steps, _parts) in MEDIUM_REPLAY_LIKE_MIXTURES.items():
    COLLECT_RECIPES[f"{_env}-medium-replay-like"] = _mix(
        f"lamo/{_env}/medium-replay-like-v0", f"{_Env}-v5", _steps,
        f"{_Env}-v5 medium-replay-like: NOT D4RL's medium-replay (the replay buffer of a SAC run "
        f"trained to medium level) but a stand-in mixture of weaker rl-zoo policies with action noise "
        f"and uniform-random actions, scoring below medium with a wide spread. {_LOCO_NOTE}",
        _parts,
    )

# PointMaze (sparse): D4RL maze2d's waypoint controller with N(0, 0.5^2) action noise, random
# start and goal cell every episode; evaluation env = the registered one (continuing task,
# fixed goal, truncated at 300 / 600 steps).
COLLECT_RECIPES["pointmaze-umaze"] = _R(
    "lamo/pointmaze/umaze-v0", "PointMaze_UMaze-v3", "pointmaze-waypoint", 1_000_000,
    "PointMaze_UMaze-v3 (sparse), D4RL maze2d-style BFS waypoint + PD controller with N(0, 0.5^2) "
    "action noise; dict observations. D4RL-like, not the canonical maze2d file.", action_noise=0.5)
COLLECT_RECIPES["pointmaze-medium"] = _R(
    "lamo/pointmaze/medium-v0", "PointMaze_Medium-v3", "pointmaze-waypoint", 1_000_000,
    "PointMaze_Medium-v3 (sparse), D4RL maze2d-style BFS waypoint + PD controller with N(0, 0.5^2) "
    "action noise; dict observations. D4RL-like, not the canonical maze2d file.", action_noise=0.5)


# Breakout: no pre-trained Atari agent is available offline, so the data is a scripted pixel
# ball tracker (lamo_scale/data/atari_controllers.py) with ε-random actions at four noise levels,
# a DQN-replay-like spread from near-random to near-human play. NOT the DQN-replay data the paper
# used. Scores per level are in the dataset's provenance (``mixture``) and `lamo-scale datasets`.
COLLECT_RECIPES["breakout-tracker-mixed"] = _mix(
    "lamo/breakout/tracker-mixed-v0", "LaMoBreakout-v0", 100_000,
    "LaMoBreakout-v0 (84x84 grey, 4 stacked, sticky actions): a scripted pixel ball tracker mixed with "
    "epsilon-random actions, epsilon 0.05 / 0.25 / 0.5 / 1.0 (30/30/30/10 % of the steps). "
    "Scripted behaviour, not DQN-replay.",
    [MixComponent("breakout-tracker", 0.3, 0.05, label="tracker-eps0.05"),
     MixComponent("breakout-tracker", 0.3, 0.25, label="tracker-eps0.25"),
     MixComponent("breakout-tracker", 0.3, 0.5, label="tracker-eps0.5"),
     MixComponent("breakout-tracker", 0.1, 1.0, label="random")],
)


def default_zoo_dir() -> Path:
    """SB3 zoo policies: ``$LAMO_SB3_ZOO``, else ``shared/policies/sb3-zoo`` in or beside the repo."""
    if os.environ.get("LAMO_SB3_ZOO"):
        return Path(os.environ["LAMO_SB3_ZOO"])
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "shared" / "policies" / "sb3-zoo", repo.parent / "shared" / "policies" / "sb3-zoo"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "policies" / "sb3-zoo"


def build_policy(
    spec: str, env_id: str, deterministic: bool = True, seed: int = 0, zoo_dir: str | Path | None = None
) -> Policy:
    """The behaviour policy a spec names (see :attr:`CollectRecipe.policy`; not ``mix:``)."""
    if spec == "reacher-ik":
        from lamo_scale.data.controllers import ReacherIKController

        return ReacherIKController(seed=seed)
    if spec.startswith("packaged:"):
        from lamo_scale.data.gaussian_policy import packaged_policy

        return packaged_policy(spec[len("packaged:"):], deterministic=deterministic, seed=seed)
    if spec == "breakout-tracker":
        from lamo_scale.data.atari_controllers import BreakoutBallTracker

        return BreakoutBallTracker()
    if spec == "pointmaze-waypoint":
        from lamo_scale.data.controllers import PointMazeWaypointController

        return PointMazeWaypointController.for_env(env_id, seed=seed)
    if spec == "random":
        from lamo_scale.data.controllers import UniformRandomPolicy

        probe = make_env(env_id)
        try:
            return UniformRandomPolicy(probe.action_space, seed=seed)
        finally:
            probe.close()
    if spec.startswith("sb3:"):
        from lamo_scale.data.sb3_policy import load_sb3_policy

        folder = Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()
        rel = spec[len("sb3:"):]
        return load_sb3_policy(folder / rel, env_id, algo=rel.split("/")[0], deterministic=deterministic, seed=seed)
    raise ValueError(f"unknown recipe policy {spec!r}")


def recipe_policy(recipe: CollectRecipe, seed: int = 0, zoo_dir: str | Path | None = None) -> Policy:
    """Build the behaviour policy a (single-policy) recipe names."""
    if recipe.components:
        raise ValueError(f"{recipe.dataset_id} is a mixture ({recipe.policy}); use recipe_parts()")
    return build_policy(recipe.policy, recipe.env_id, recipe.deterministic, seed, zoo_dir)


def recipe_parts(recipe: CollectRecipe, seed: int = 0, zoo_dir: str | Path | None = None) -> list[MixturePart]:
    """The loaded parts of a mixture recipe (policy ``k`` seeded with ``seed + 1000 k``)."""
    return [
        MixturePart(build_policy(c.policy, recipe.env_id, c.deterministic, seed + MIXTURE_SEED_STRIDE * k, zoo_dir),
                    c.fraction, c.action_noise, c.label)
        for k, c in enumerate(recipe.components)
    ]


def collect_recipe(
    name: str,
    num_steps: int | None = None,
    num_envs: int = 8,
    seed: int = 0,
    dataset_id: str | None = None,
    zoo_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> minari.MinariDataset:
    """Collect the built-in recipe ``name`` (see ``COLLECT_RECIPES``); budget and id can be overridden.

    For mixtures ``num_steps`` is the total budget, split by the parts' fractions.
    """
    if name not in COLLECT_RECIPES:
        if name in KITCHEN_DATASETS:
            raise KeyError(
                f"{name} is not collected here: download Minari's {KITCHEN_DATASETS[name]} "
                f"(`minari download {KITCHEN_DATASETS[name]}`, needs network)"
            )
        raise KeyError(f"unknown collection recipe {name!r}; known: {sorted(COLLECT_RECIPES)}")
    recipe = COLLECT_RECIPES[name]
    budget = num_steps if num_steps is not None else recipe.num_steps
    target = dataset_id or recipe.dataset_id
    _check_target(target, overwrite)  # before loading any policy
    if recipe.components:
        return collect_mixture(
            target, recipe.env_id, recipe_parts(recipe, seed=seed, zoo_dir=zoo_dir), budget,
            num_envs=num_envs, seed=seed, metadata={"recipe": name}, description=recipe.description,
            overwrite=overwrite, progress=progress,
        )
    policy = recipe_policy(recipe, seed=seed, zoo_dir=zoo_dir)
    return collect_dataset(
        target,
        recipe.env_id,
        policy,
        budget,
        num_envs=num_envs,
        seed=seed,
        action_noise=recipe.action_noise,
        metadata={"recipe": name},
        description=recipe.description,
        overwrite=overwrite,
        progress=progress,
    )
