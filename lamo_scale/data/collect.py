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

    lamo-scale collect reacher2d-expert     # -> lamo/reacher2d/expert-v0
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.dataset.minari_storage import MinariStorage
from minari.namespace import create_namespace, list_local_namespaces
from minari.storage.datasets_root_dir import get_dataset_path
from tqdm.auto import tqdm

from lamo_scale.envs import make_env, make_vector_env
from lamo_scale.envs.scores import normalized_score, reference_scores

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

    ``action_noise`` adds seeded N(0, action_noise²) noise to every action before clipping
    to the action bounds; the executed (noisy, clipped) action is what gets recorded.
    """
    envs = make_vector_env(env_id, num_envs, seed=None)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    low, high = act_space.low, act_space.high
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)

    def new_episode(first_obs):
        return {"obs": [first_obs], "act": [], "rew": [], "term": [], "trunc": []}

    running = [new_episode(obs[i]) for i in range(num_envs)]
    active = np.ones(num_envs, dtype=bool)  # still recording an episode
    needs_reset = np.zeros(num_envs, dtype=bool)  # next step() is gymnasium's autoreset step
    episodes: list[EpisodeBuffer] = []
    steps_taken = 0
    bar = tqdm(total=num_steps, desc=f"collect {env_id}", unit="step", disable=not progress)
    start = time.perf_counter()
    try:
        while active.any():
            action = np.asarray(policy(obs), dtype=act_space.dtype).reshape(num_envs, *act_space.shape)
            if action_noise > 0.0:
                action = action + rng.normal(0.0, action_noise, size=action.shape).astype(action.dtype)
            action = np.clip(action, low, high)
            next_obs, reward, terminated, truncated, _ = envs.step(action)
            for i in range(num_envs):
                if not active[i]:
                    continue
                if needs_reset[i]:  # next_obs[i] starts a new episode; this step is not a transition
                    needs_reset[i] = False
                    running[i] = new_episode(next_obs[i])
                    continue
                ep = running[i]
                ep["act"].append(action[i])
                ep["rew"].append(float(reward[i]))
                ep["term"].append(bool(terminated[i]))
                ep["trunc"].append(bool(truncated[i]))
                ep["obs"].append(next_obs[i])
                steps_taken += 1
                bar.update(1)
                if terminated[i] or truncated[i]:
                    episodes.append(
                        EpisodeBuffer(
                            id=len(episodes),
                            observations=np.stack(ep["obs"]),
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
            tmp / "data", observation_space=obs_space, action_space=act_space, env_spec=gym.spec(env_id)
        )
        storage.update_metadata(metadata)
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
    parse_dataset_id(dataset_id)  # malformed ids fail before any rollout
    if get_dataset_path(dataset_id).exists() and not overwrite:
        raise FileExistsError(
            f"dataset {dataset_id} already exists at {get_dataset_path(dataset_id)}; pass overwrite=True"
        )
    if ref_min_score is None or ref_max_score is None:
        refs = reference_scores(env_id)
        if refs is not None:
            ref_min_score = refs[0] if ref_min_score is None else ref_min_score
            ref_max_score = refs[1] if ref_max_score is None else ref_max_score

    start = time.perf_counter()
    episodes, obs_space, act_space = rollout_episodes(
        env_id, policy, num_steps, num_envs=num_envs, seed=seed, action_noise=action_noise, progress=progress
    )
    if not episodes:
        raise RuntimeError(f"no episode finished within the budget of {num_steps} steps in {env_id}")
    elapsed = time.perf_counter() - start

    provenance = {
        "env_id": env_id,
        **_policy_provenance(policy),
        "action_noise": float(action_noise),
        "seed": int(seed),
        "num_steps_requested": int(num_steps),
        "num_envs": int(num_envs),
        "collection_seconds": round(elapsed, 3),
        "lamo_scale_version": _lamo_version(),
        **(metadata or {}),
    }
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
    return _write_dataset(dataset_id, env_id, episodes, obs_space, act_space, meta, overwrite)


def dataset_report(dataset_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per local dataset: id, env, episodes, steps, return mean/min/max, normalised score of the data."""
    rows = []
    for dataset_id in dataset_ids if dataset_ids is not None else list_local():
        dataset = minari.load_dataset(dataset_id)
        meta = dataset.storage.metadata
        env_id = dataset.spec.env_spec.id if dataset.spec.env_spec is not None else None
        returns = np.array([float(np.sum(ep.rewards)) for ep in dataset.iterate_episodes()])
        ref_min, ref_max = meta.get("ref_min_score"), meta.get("ref_max_score")
        if (ref_min is None or ref_max is None) and env_id is not None:
            ref_min, ref_max = reference_scores(env_id) or (None, None)
        mean = float(returns.mean()) if returns.size else float("nan")
        rows.append(
            {
                "id": dataset_id,
                "env": env_id,
                "episodes": int(dataset.total_episodes),
                "steps": int(dataset.total_steps),
                "return_mean": mean,
                "return_min": float(returns.min()) if returns.size else float("nan"),
                "return_max": float(returns.max()) if returns.size else float("nan"),
                "score": normalized_score(mean, ref_min, ref_max) if ref_min is not None else None,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------
# Built-in collection recipes (`lamo-scale collect <name>`)


@dataclass(frozen=True)
class CollectRecipe:
    """A named way to make a dataset: which env, which behaviour policy, how much noise."""

    dataset_id: str
    """Minari id the dataset is written under."""
    env_id: str
    """Gymnasium env id rolled out."""
    policy: str
    """``"reacher-ik"`` (scripted controller) or ``"sb3:<algo>/<folder>"`` inside the SB3 zoo dir."""
    num_steps: int
    """Default transition budget."""
    deterministic: bool = True
    """SB3 policies: mean action (True) or sampled actions (False)."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to every action."""
    description: str = ""
    """Human description stored in the dataset."""


_LOCO_NOTE = "D4RL-like (same env family and normalisation, not the canonical D4RL file)."

def _R(dataset_id, env_id, policy, num_steps, description, **kw) -> CollectRecipe:
    return CollectRecipe(dataset_id, env_id, policy, num_steps, description=description, **kw)


COLLECT_RECIPES: dict[str, CollectRecipe] = {
    "reacher2d-expert": _R("lamo/reacher2d/expert-v0", "LaMoReacher2d-v0", "reacher-ik", 100_000,
                           "Reacher2d (sparse reward), scripted IK+PD controller, no noise."),
    "reacher2d-medium": _R("lamo/reacher2d/medium-v0", "LaMoReacher2d-v0", "reacher-ik", 100_000,
                           "Reacher2d (sparse reward), scripted IK+PD controller + N(0, 2^2) action noise.",
                           action_noise=2.0),
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


def default_zoo_dir() -> Path:
    """SB3 zoo policies: ``$LAMO_SB3_ZOO``, else ``shared/policies/sb3-zoo`` in or beside the repo."""
    if os.environ.get("LAMO_SB3_ZOO"):
        return Path(os.environ["LAMO_SB3_ZOO"])
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "shared" / "policies" / "sb3-zoo", repo.parent / "shared" / "policies" / "sb3-zoo"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "policies" / "sb3-zoo"


def recipe_policy(recipe: CollectRecipe, seed: int = 0, zoo_dir: str | Path | None = None) -> Policy:
    """Build the behaviour policy a recipe names."""
    if recipe.policy == "reacher-ik":
        from lamo_scale.data.controllers import ReacherIKController

        return ReacherIKController(seed=seed)
    if recipe.policy.startswith("sb3:"):
        from lamo_scale.data.sb3_policy import load_sb3_policy

        folder = Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()
        rel = recipe.policy[len("sb3:"):]
        return load_sb3_policy(folder / rel, recipe.env_id, algo=rel.split("/")[0],
                               deterministic=recipe.deterministic, seed=seed)
    raise ValueError(f"unknown recipe policy {recipe.policy!r}")


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
    """Collect the built-in recipe ``name`` (see ``COLLECT_RECIPES``); budget and id can be overridden."""
    if name not in COLLECT_RECIPES:
        raise KeyError(f"unknown collection recipe {name!r}; known: {sorted(COLLECT_RECIPES)}")
    recipe = COLLECT_RECIPES[name]
    policy = recipe_policy(recipe, seed=seed, zoo_dir=zoo_dir)
    return collect_dataset(
        dataset_id or recipe.dataset_id,
        recipe.env_id,
        policy,
        num_steps if num_steps is not None else recipe.num_steps,
        num_envs=num_envs,
        seed=seed,
        action_noise=recipe.action_noise,
        metadata={"recipe": name},
        description=recipe.description,
        overwrite=overwrite,
        progress=progress,
    )
