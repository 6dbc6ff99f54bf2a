"""A Gaussian MLP policy exported from a Stable-Baselines3 PPO agent, acted in numpy.

The paper's Reacher2d data comes from a PPO agent (Gaussian policy) trained on the env,
"medium" from a mid-training checkpoint acting with its own sampled actions. The project
ships such a checkpoint (``lamo_scale/data/policies/*.npz``, made by
``scripts/train_reacher2d_ppo.py``) as plain arrays, so collecting needs neither
stable-baselines3 nor torch: ``a = clip(mu(norm(s)) + sigma * eps, low, high)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PACKAGED_DIR = Path(__file__).with_name("policies")


class GaussianMLPPolicy:
    """``tanh`` MLP mean + state-independent log-std, observation normalisation, seeded sampling.

    Arrays (``.npz``): ``obs_mean``, ``obs_var``, ``obs_clip`` (VecNormalize statistics),
    ``w0, b0, w1, b1, ...`` (hidden layers, tanh), ``w_out, b_out`` (mean), ``log_std``,
    ``action_low``, ``action_high``, and ``meta`` (a JSON string: how it was trained).
    """

    def __init__(self, path: str | Path, deterministic: bool = False, seed: int | None = 0):
        """Load the arrays at ``path``; ``deterministic`` acts with the mean."""
        self.path = Path(path)
        with np.load(self.path) as arrays:
            self.arrays = {k: arrays[k] for k in arrays.files}
        self.meta = json.loads(str(self.arrays.pop("meta")))
        layers = sum(1 for key in self.arrays if key[0] == "w" and key[1:].isdigit())
        self.hidden = [(self.arrays[f"w{i}"], self.arrays[f"b{i}"]) for i in range(layers)]
        self.deterministic = bool(deterministic)
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"GaussianMLPPolicy({self.path.name}, deterministic={self.deterministic})"

    def provenance(self) -> dict:
        """JSON-able description for dataset metadata (file, SHA-256, how it was trained)."""
        import hashlib

        return {"policy": f"packaged:{self.path.stem}", "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
                "deterministic": self.deterministic, "std": np.exp(self.arrays["log_std"]).round(4).tolist(),
                "trained": self.meta}

    def mean_action(self, obs: np.ndarray) -> np.ndarray:
        """The Gaussian's mean ``(B, act_dim)`` (unclipped) for observations ``(B, obs_dim)``."""
        a = self.arrays
        x = np.clip((np.atleast_2d(obs) - a["obs_mean"]) / np.sqrt(a["obs_var"] + 1e-8), -a["obs_clip"], a["obs_clip"])
        for w, b in self.hidden:
            x = np.tanh(x @ w + b)
        return x @ a["w_out"] + a["b_out"]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Sampled (or mean) actions, clipped to the action bounds, as the env executes them."""
        obs = np.asarray(obs, dtype=np.float64)
        single = obs.ndim == 1
        action = self.mean_action(obs)
        if not self.deterministic:
            action = action + np.exp(self.arrays["log_std"]) * self.rng.standard_normal(action.shape)
        action = np.clip(action, self.arrays["action_low"], self.arrays["action_high"]).astype(np.float32)
        return action[0] if single else action


def packaged_policy(name: str, deterministic: bool = False, seed: int | None = 0) -> GaussianMLPPolicy:
    """A policy shipped in ``lamo_scale/data/policies/<name>.npz``."""
    path = PACKAGED_DIR / f"{name}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in PACKAGED_DIR.glob("*.npz"))
        raise FileNotFoundError(f"no packaged policy {name!r} in {PACKAGED_DIR}; known: {known}")
    return GaussianMLPPolicy(path, deterministic=deterministic, seed=seed)
