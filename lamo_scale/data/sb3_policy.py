"""Stable-Baselines3 / sb3-contrib policy zips (e.g. rl-baselines3-zoo agents) as batched numpy policies.

The zoo zips were pickled with the old ``gym`` package: the spaces and schedules stored in
them cannot be unpickled here, so they are replaced through ``custom_objects`` by the
target env's spaces and constant schedules. Their ``vecnormalize.pkl`` (observation
statistics) is read with ``gym`` classes stubbed out.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

log = logging.getLogger(__name__)

# algo name -> (module, class)
ALGOS: dict[str, tuple[str, str]] = {
    "sac": ("stable_baselines3", "SAC"),
    "td3": ("stable_baselines3", "TD3"),
    "ddpg": ("stable_baselines3", "DDPG"),
    "ppo": ("stable_baselines3", "PPO"),
    "a2c": ("stable_baselines3", "A2C"),
    "tqc": ("sb3_contrib", "TQC"),
    "ars": ("sb3_contrib", "ARS"),
    "trpo": ("sb3_contrib", "TRPO"),
}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_policy_zip(path: str | Path) -> Path:
    """The policy zip for ``path``: the zip itself, or the single ``*.zip`` in a zoo folder (``sac/Hopper-v3_1``)."""
    path = Path(path)
    if path.is_file():
        return path
    zips = sorted(path.glob("*.zip")) if path.is_dir() else []
    if len(zips) != 1:
        raise FileNotFoundError(
            f"expected a policy .zip or a folder holding exactly one, got {path} ({len(zips)} zips)"
        )
    return zips[0]


def _read_zip_data(zip_path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(zip_path) as archive:
        return json.loads(archive.read("data"))


def detect_algo(zip_path: Path, data: dict[str, Any]) -> str:
    """Algorithm name of a saved model: from the zoo folder layout (``<algo>/<Env>_1/``), else from the zip."""
    for part in reversed(zip_path.parent.parts):
        if part.lower() in ALGOS:
            return part.lower()
    module = str(data.get("policy_class", {}).get("__module__", ""))
    for name in ALGOS:
        if f".{name}." in module:
            return name
    if "clip_range" in data:  # PPO and A2C share ActorCriticPolicy; only PPO clips
        return "ppo"
    if "normalize_advantage" in data:
        return "a2c"
    raise ValueError(f"cannot tell which algorithm saved {zip_path}; pass algo= one of {sorted(ALGOS)}")


def _stored_shape(data: dict[str, Any], key: str) -> tuple[int, ...] | None:
    shape = data.get(key, {}).get("shape") if isinstance(data.get(key), dict) else None
    if shape is None:
        return None
    return tuple(json.loads(shape)) if isinstance(shape, str) else tuple(shape)


class _GymStub:
    """Stands in for classes of the old ``gym`` package inside pickles; keeps their state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _NoGymUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "gym" or module.startswith("gym."):
            return _GymStub
        return super().find_class(module, name)


def load_vecnormalize_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """``(mean, var, clip_obs, epsilon)`` of a saved ``VecNormalize`` (None if it does not normalise observations)."""
    with open(path, "rb") as f:
        vecnorm = _NoGymUnpickler(f).load()
    if not getattr(vecnorm, "norm_obs", True):
        return None
    rms = vecnorm.obs_rms
    mean, var = np.asarray(rms.mean, np.float64), np.asarray(rms.var, np.float64)
    return mean, var, float(vecnorm.clip_obs), float(vecnorm.epsilon)


class SB3Policy:
    """A loaded SB3 model as ``policy(obs_batch) -> action_batch`` (numpy, float32).

    Observations are normalised with the model's ``vecnormalize.pkl`` statistics when one
    was found. Stochastic policies (``deterministic=False``) draw from their own seeded torch
    RNG stream, so a seed reproduces the actions without touching the global torch RNG.
    Inference runs on ``num_threads`` torch threads (default 1: these MLPs are tiny).
    """

    def __init__(
        self, model, algo: str, path: Path, deterministic: bool, obs_stats, seed: int | None, num_threads: int = 1
    ):
        self.model = model
        self.num_threads = num_threads
        self.algo = algo
        self.path = path
        self.deterministic = deterministic
        self.obs_stats = obs_stats
        model.policy.set_training_mode(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            self._torch_rng_state = torch.get_rng_state()
        # Fast path for squashed-Gaussian actors (SAC, TQC without gSDE): mean / log-std from
        # the actor, own torch.Generator for the noise, no distribution objects, no global
        # RNG save/restore. Same action distribution as SB3's predict().
        actor = getattr(model.policy, "actor", None)
        self._fast_actor = (
            actor if actor is not None and hasattr(actor, "get_action_dist_params")
            and not getattr(actor, "use_sde", False) and model.policy.squash_output else None
        )
        self._generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """Apply the VecNormalize observation transform (identity when there is none)."""
        if self.obs_stats is None:
            return obs
        mean, var, clip, eps = self.obs_stats
        return np.clip((obs - mean) / np.sqrt(var + eps), -clip, clip)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Actions for a batch of observations ``(B, *obs_shape)``."""
        policy = self.model.policy
        obs = self.normalize(np.asarray(obs, dtype=np.float64)).astype(np.float32)
        # This is policy.predict() minus its per-call train(False) walk over all modules
        # (done once in __init__).
        threads = torch.get_num_threads()
        # Small MLP, small batch: a multi-threaded OpenMP region costs ~1000x more than the
        # math when another process keeps the cores busy (measured 7.7 ms vs 7 us per layer).
        torch.set_num_threads(self.num_threads)
        try:
            if self._fast_actor is not None:
                action = self._fast_squashed_gaussian(obs)
            else:
                obs_tensor, _ = policy.obs_to_tensor(obs)
                with torch.random.fork_rng(devices=[]), torch.inference_mode():
                    torch.set_rng_state(self._torch_rng_state)
                    action = policy._predict(obs_tensor, deterministic=self.deterministic).cpu().numpy()
                    self._torch_rng_state = torch.get_rng_state()
        finally:
            torch.set_num_threads(threads)
        action = action.reshape((-1, *policy.action_space.shape))
        if policy.squash_output:
            action = policy.unscale_action(action)
        else:
            action = np.clip(action, policy.action_space.low, policy.action_space.high)
        return action.astype(np.float32).reshape(np.shape(obs)[:-1] + policy.action_space.shape)

    def _fast_squashed_gaussian(self, obs: np.ndarray) -> np.ndarray:
        """``tanh(mean + std * eps)`` (or ``tanh(mean)``) in [-1, 1], eps from this policy's generator."""
        with torch.inference_mode():
            obs_tensor = torch.as_tensor(obs.reshape(-1, *self.model.policy.observation_space.shape))
            mean, log_std, _ = self._fast_actor.get_action_dist_params(obs_tensor)
            if not self.deterministic:
                eps = torch.randn(mean.shape, generator=self._generator, dtype=mean.dtype)
                mean = mean + log_std.exp() * eps
            return torch.tanh(mean).numpy()

    def provenance(self) -> dict[str, Any]:
        """JSON-able description of this policy for dataset metadata."""
        return {
            "policy": f"sb3:{self.algo}",
            "policy_path": str(self.path),
            "policy_sha256": file_sha256(self.path),
            "policy_deterministic": self.deterministic,
            "policy_vecnormalize": self.obs_stats is not None,
        }

    def __repr__(self) -> str:
        return f"SB3Policy({self.algo}, {self.path}, deterministic={self.deterministic})"


def load_sb3_policy(
    path: str | Path,
    env: gym.Env | str,
    algo: str | None = None,
    deterministic: bool = True,
    seed: int | None = 0,
    device: str = "cpu",
    num_threads: int = 1,
) -> SB3Policy:
    """Load an SB3 / sb3-contrib policy zip (or zoo folder) for ``env`` (an env or env id).

    ``algo`` (sac, td3, ddpg, ppo, a2c, tqc, ars, trpo) is detected when omitted. A
    ``vecnormalize.pkl`` next to the zip (zoo layout: ``<Env>/vecnormalize.pkl`` beside
    ``<Env>.zip``) is honoured. Raises ValueError, before anything is rolled out, when the
    policy's stored observation/action shapes differ from the env's. ``seed`` makes sampled
    (``deterministic=False``) actions reproducible on CPU.
    """
    if isinstance(env, str):
        from lamo_scale.envs import make_env

        probe = make_env(env)
        obs_space, act_space = probe.observation_space, probe.action_space
        env_name = env
        probe.close()
    else:
        obs_space = getattr(env, "single_observation_space", env.observation_space)
        act_space = getattr(env, "single_action_space", env.action_space)
        env_name = env.spec.id if env.spec is not None else type(env).__name__

    zip_path = resolve_policy_zip(path)
    data = _read_zip_data(zip_path)
    algo = (algo or detect_algo(zip_path, data)).lower()
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {sorted(ALGOS)}")

    for key, space in (("observation_space", obs_space), ("action_space", act_space)):
        stored = _stored_shape(data, key)
        if stored is not None and stored != tuple(space.shape):
            raise ValueError(
                f"policy {zip_path} does not fit env {env_name}: its {key} has shape {stored}, "
                f"the env's has shape {tuple(space.shape)}"
            )

    obs_stats = None
    for candidate in (zip_path.with_suffix("") / "vecnormalize.pkl", zip_path.parent / "vecnormalize.pkl"):
        if candidate.is_file():
            obs_stats = load_vecnormalize_stats(candidate)
            if obs_stats is not None and obs_stats[0].shape != tuple(obs_space.shape):
                raise ValueError(
                    f"{candidate} normalises observations of shape {obs_stats[0].shape}, "
                    f"env {env_name} has {tuple(obs_space.shape)}"
                )
            log.info("using observation normalisation from %s", candidate)
            break

    module, cls_name = ALGOS[algo]
    cls = getattr(importlib.import_module(module), cls_name)
    custom_objects = {
        "observation_space": obs_space,
        "action_space": act_space,
        "learning_rate": 0.0,
        "lr_schedule": lambda _: 0.0,
        "clip_range": lambda _: 0.0,
        "clip_range_vf": None,
        "delta_std_schedule": lambda _: 0.0,
    }
    model = cls.load(zip_path, device=device, custom_objects=custom_objects)
    return SB3Policy(model, algo, zip_path, deterministic, obs_stats, seed, num_threads)
