"""How much of a dataset's action variance a policy can learn at all (its noise floor).

A behaviour policy that adds noise to its actions leaves a part of the action variance that
no model of the state can predict: ``E[Var(a | s)]``. The best achievable action MSE is that
floor, so a loss curve near it says nothing about learning, and data whose floor is most of
the variance teaches little. Estimated without knowing the behaviour policy: for each of up
to ``max_steps`` sampled steps, the actions of its ``k`` nearest neighbours in standardised
state space estimate the conditional mean; the floor is their mean squared deviation
(times ``k / (k - 1)``). Neighbourhoods have a finite size, so this over-estimates the floor
(under-estimates what is learnable) where the policy varies quickly with the state.
"""
from __future__ import annotations

import numpy as np


def action_noise_floor(states: np.ndarray, actions: np.ndarray, k: int = 10, max_steps: int = 20_000,
                       seed: int = 0) -> dict[str, float]:
    """``{"action_var", "noise_floor", "learnable_fraction"}`` for per-step ``states`` ``[N, S]`` and ``actions`` ``[N, A]``.

    ``action_var`` and ``noise_floor`` are means over action dimensions;
    ``learnable_fraction = 1 - noise_floor / action_var`` (clipped to [0, 1]).
    """
    from scipy.spatial import cKDTree

    states = np.asarray(states, dtype=np.float64).reshape(len(states), -1)
    actions = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    if len(states) != len(actions) or len(states) <= k:
        raise ValueError(f"need more than k={k} (state, action) pairs of equal count, got "
                         f"{len(states)} states and {len(actions)} actions")
    rng = np.random.default_rng(seed)
    if len(states) > max_steps:
        keep = rng.choice(len(states), max_steps, replace=False)
        states, actions = states[keep], actions[keep]
    std = states.std(axis=0)
    z = (states - states.mean(axis=0)) / np.where(std > 1e-8, std, 1.0)
    _, idx = cKDTree(z).query(z, k=k)
    neighbour_actions = actions[idx]  # [N, k, A], the point itself included
    floor = float(neighbour_actions.var(axis=1).mean() * k / (k - 1))
    total = float(actions.var(axis=0).mean())
    learnable = 0.0 if total <= 0 else float(np.clip(1.0 - floor / total, 0.0, 1.0))
    return {"action_var": total, "noise_floor": floor, "learnable_fraction": learnable}
