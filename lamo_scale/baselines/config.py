"""The baseline config tree: which d3rlpy algorithm, its hyper-parameters, and the sections it
shares with a LaMo run (``data``, ``eval``, ``tracking`` are the very same dataclasses).

A baseline config is read like a training recipe (YAML files merged left to right, then dotted
``key=value`` overrides, everything validated before anything is built). It may be stacked on a
LaMo task recipe (``--config paper/hopper-medium-r0.1-lamo --config baselines/cql``, what a sweep
variant does): the task's ``data`` / ``eval`` / ``tracking`` then apply unchanged, and its
LaMo-only settings (``model.*``, ``text.*``, ``loss.*`` and the LaMo optimiser's ``train.*`` keys)
are validated against the LaMo schema, then set aside with a log line.

Baselines are not conditioned on a return: they are evaluated once per checkpoint and logged
under the target key ``0`` (``eval/0/normalized_score``), whatever ``eval.target_returns`` says.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from lamo_scale.config import (RECIPES_DIR, Config, ConfigError, DataConfig, EvalConfig, TrackingConfig,
                               TrainConfig, _build, _merge, _unknown_key, apply_override, read_recipe, recipe_name,
                               resolve_recipe)

log = logging.getLogger(__name__)

ALGOS = ("bc", "cql", "iql", "td3bc")
"""The comparators of the LaMo paper's tables, by their recipe names."""

ALGO_NAMES = {"bc": "behaviour cloning (d3rlpy BC)", "cql": "Conservative Q-Learning (d3rlpy CQL)",
              "iql": "Implicit Q-Learning (d3rlpy IQL)", "td3bc": "TD3+BC (d3rlpy TD3PlusBC)"}

BASELINE_RECIPES = RECIPES_DIR / "baselines"
UNCONDITIONED_TARGET = 0.0
"""The one target key a baseline's evaluation is logged under (it ignores returns-to-go)."""

LAMO_ONLY_SECTIONS = ("model", "text", "loss")


@dataclass
class BCParams:
    """Behaviour cloning: regress the dataset's actions (d3rlpy ``BCConfig``)."""

    learning_rate: float = 1e-3
    """Adam learning rate of the policy."""
    batch_size: int = 100
    """Transitions per gradient step."""
    policy_type: Literal["deterministic", "stochastic"] = "deterministic"
    """deterministic = MSE on actions (tanh head); stochastic = Gaussian log-likelihood."""
    hidden_units: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the policy MLP's hidden layers (ReLU)."""


@dataclass
class CQLParams:
    """Conservative Q-Learning: SAC whose Q-values are pushed down off the data (d3rlpy ``CQLConfig``)."""

    actor_learning_rate: float = 1e-4
    """Adam learning rate of the squashed-Gaussian policy."""
    critic_learning_rate: float = 3e-4
    """Adam learning rate of the Q-functions."""
    temp_learning_rate: float = 1e-4
    """Learning rate of SAC's entropy temperature."""
    alpha_learning_rate: float = 1e-4
    """Learning rate of the conservative weight's Lagrange multiplier; 0 keeps it fixed."""
    batch_size: int = 256
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target Q-functions."""
    n_critics: int = 2
    """Q-functions in the ensemble (the minimum is the target)."""
    initial_temperature: float = 1.0
    """Initial entropy temperature."""
    initial_alpha: float = 1.0
    """Initial Lagrange multiplier (used when alpha_learning_rate > 0)."""
    alpha_threshold: float = 10.0
    """Lagrangian threshold tau of the conservative penalty."""
    conservative_weight: float = 5.0
    """Weight of the conservative (logsumexp - data Q) penalty."""
    n_action_samples: int = 10
    """Sampled actions for the logsumexp estimate."""
    soft_q_backup: bool = False
    """Subtract the entropy term in the target (SAC-style backup)."""
    max_q_backup: bool = False
    """Max over sampled next actions in the target instead of the policy's action."""
    hidden_units: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the actor's and critics' hidden layers."""


@dataclass
class IQLParams:
    """Implicit Q-Learning: expectile value regression + advantage-weighted policy (d3rlpy ``IQLConfig``)."""

    actor_learning_rate: float = 3e-4
    """Adam learning rate of the policy."""
    critic_learning_rate: float = 3e-4
    """Adam learning rate of the Q- and value functions."""
    batch_size: int = 256
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target Q-functions."""
    n_critics: int = 2
    """Q-functions in the ensemble."""
    expectile: float = 0.7
    """Expectile of the value regression (0.5 = mean, towards 1 = max)."""
    weight_temp: float = 3.0
    """Inverse temperature beta of the advantage weights exp(beta * A)."""
    max_weight: float = 100.0
    """Clip of the advantage weights."""
    actor_cosine_schedule: bool = False
    """Cosine-anneal the policy's learning rate to 0 over train.steps."""
    reward_return_scale: Optional[float] = None
    """Scale rewards by this / (max - min episode return) of the data (null: rewards as they are)."""
    hidden_units: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the hidden layers of the policy, Q- and value functions."""


@dataclass
class TD3BCParams:
    """TD3+BC: TD3 with a behaviour-cloning term in the policy loss (d3rlpy ``TD3PlusBCConfig``)."""

    actor_learning_rate: float = 3e-4
    """Adam learning rate of the deterministic policy."""
    critic_learning_rate: float = 3e-4
    """Adam learning rate of the Q-functions."""
    batch_size: int = 256
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    n_critics: int = 2
    """Q-functions (clipped double-Q)."""
    target_smoothing_sigma: float = 0.2
    """Std of the noise added to target actions."""
    target_smoothing_clip: float = 0.5
    """Clip of that noise."""
    alpha: float = 2.5
    """alpha: the Q term is scaled by alpha / mean|Q| against the BC (MSE) term."""
    update_actor_interval: int = 2
    """Critic updates per policy (and target) update."""
    hidden_units: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the actor's and critics' hidden layers."""


@dataclass
class BaselineTrainConfig:
    """Gradient steps, seeds and bookkeeping of a baseline run (keys shared with ``train.*`` of LaMo)."""

    steps: int = 500_000
    """Gradient steps (d3rlpy's D4RL reproductions run 500k)."""
    seed: int = 0
    """Seed of network init and minibatch sampling (the data subset has its own data.ratio_seed)."""
    log_every: int = 100
    """Steps between training-metric logs."""
    checkpoint_every: int = 10_000
    """Steps between checkpoints (a final one is always written); every checkpoint is evaluated."""
    keep_checkpoints: int = 0
    """Most recent checkpoints kept on disk (0 keeps all; MLflow keeps every one as an artifact)."""
    output_dir: str = "runs/{experiment}/{run_name}"
    """Where checkpoints go; {experiment} and {run_name} are filled in."""
    resume: Optional[str] = None
    """'auto' (latest checkpoint in output_dir, if any) or a checkpoint / run dir: reload the model and
    its optimiser state and continue the same MLflow run (minibatch RNG is not restored)."""
    threads: int = 0
    """torch intra-op threads on CPU; 0 keeps torch's default."""
    device: str = "cpu"
    """torch device of training and acting (cpu, cuda, cuda:1)."""
    evaluate: bool = True
    """Roll out every checkpoint when training ends (lamo_scale.rollout.evaluate); false leaves it to
    lamo-scale evaluate, rollout workers or the sweep."""


PARAMS = {"bc": BCParams, "cql": CQLParams, "iql": IQLParams, "td3bc": TD3BCParams}


@dataclass
class BaselineConfig:
    """The whole configuration of one baseline job."""

    recipe: str = "custom"
    """Name of the recipe(s) this config came from."""
    algo: Literal["bc", "cql", "iql", "td3bc"] = "bc"
    """Which baseline trains: bc, cql, iql or td3bc."""
    bc: BCParams = field(default_factory=BCParams)
    """BC hyper-parameters (used when algo=bc)."""
    cql: CQLParams = field(default_factory=CQLParams)
    """CQL hyper-parameters (used when algo=cql)."""
    iql: IQLParams = field(default_factory=IQLParams)
    """IQL hyper-parameters (used when algo=iql)."""
    td3bc: TD3BCParams = field(default_factory=TD3BCParams)
    """TD3+BC hyper-parameters (used when algo=td3bc)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Offline trajectories: the same section, loader, data-ratio subset and state normalisation as LaMo
    (context_len, rtg_scale and num_workers are unused)."""
    train: BaselineTrainConfig = field(default_factory=BaselineTrainConfig)
    """Gradient steps and bookkeeping."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation rollouts (target_returns is replaced by the single key 0)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""

    @property
    def params(self):
        """The hyper-parameters of the chosen algorithm."""
        return getattr(self, self.algo)


def is_baseline_recipe(recipe: str | Path) -> bool:
    """Whether a recipe (name or path) is a baseline recipe: under recipes/baselines/, or sets ``algo``."""
    try:
        path = resolve_recipe(recipe)
    except ConfigError:
        return False
    if path.resolve().is_relative_to(BASELINE_RECIPES.resolve()):
        return True
    return "algo" in read_recipe(path)


def baseline_recipe(algo: str) -> str:
    """The packaged recipe name of an algorithm (``baselines/cql``); refuses unknown names."""
    if algo not in ALGOS:
        raise ConfigError(f"unknown baseline algorithm '{algo}'; valid choices: {', '.join(ALGOS)}")
    return f"baselines/{algo}"


def _split_lamo_only(tree: dict) -> list[str]:
    """Remove (after validating them as LaMo settings) the keys a baseline does not use; their names."""
    dropped: dict = {k: tree.pop(k) for k in LAMO_ONLY_SECTIONS if k in tree}
    train = tree.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"train: expected a mapping, got {train!r}")
    ours = {f.name for f in dataclasses.fields(BaselineTrainConfig)}
    lamo = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in train:
        if key not in ours and key not in lamo:
            raise _unknown_key(key, sorted(ours | lamo), "train")
    lamo_train = {k: train.pop(k) for k in list(train) if k not in ours}
    if lamo_train:
        dropped["train"] = lamo_train
    _build(Config, dropped)  # typos and wrong types in the LaMo part are refused, not silently dropped
    names = [f"{k}.*" for k in LAMO_ONLY_SECTIONS if k in dropped] + [f"train.{k}" for k in lamo_train]
    return names


def load_baseline_config(recipes: list[str | Path], overrides: list[str] | tuple[str, ...] = ()) -> BaselineConfig:
    """Build a validated :class:`BaselineConfig` from recipes (merged left to right) and overrides."""
    tree: dict = {}
    names = []
    for item in recipes:
        path = resolve_recipe(item)
        names.append(recipe_name(path))
        tree = _merge(tree, read_recipe(path))
    tree.pop("recipe", None)
    tree["recipe"] = "+".join(names) if names else "custom"
    for item in overrides:
        apply_override(tree, item)
    if "algo" not in tree:
        raise ConfigError(f"no baseline algorithm chosen: pass --algo {{{','.join(ALGOS)}}} or a baselines/<algo> "
                          "recipe")
    ignored = _split_lamo_only(tree)
    cfg = _build(BaselineConfig, tree)
    if ignored:
        log.info("baseline %s: LaMo-only settings not used: %s", cfg.algo, ", ".join(ignored))
    cfg.eval.target_returns = [UNCONDITIONED_TARGET]  # not return-conditioned: one evaluation per checkpoint
    _validate(cfg)
    return cfg


def _validate(cfg: BaselineConfig) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(0.0 < cfg.data.data_ratio <= 1.0, f"data.data_ratio must be in (0, 1], got {cfg.data.data_ratio}")
    need(cfg.train.steps >= 1, "train.steps must be >= 1")
    need(cfg.train.checkpoint_every >= 1 and cfg.train.log_every >= 1,
         "train.checkpoint_every and train.log_every must be >= 1")
    need(cfg.eval.episodes >= 1 and cfg.eval.num_envs >= 1, "eval.episodes and eval.num_envs must be >= 1")
    p = cfg.params
    need(p.batch_size >= 1, f"{cfg.algo}.batch_size must be >= 1")
    need(all(u >= 1 for u in p.hidden_units) and len(p.hidden_units) >= 1,
         f"{cfg.algo}.hidden_units must list at least one positive width")
    for name in ("learning_rate", "actor_learning_rate", "critic_learning_rate"):
        if hasattr(p, name):
            need(getattr(p, name) > 0, f"{cfg.algo}.{name} must be > 0")
    if cfg.algo == "iql":
        need(0.0 < p.expectile < 1.0, f"iql.expectile must be in (0, 1), got {p.expectile}")


def help_epilog() -> str:
    """Every baseline setting with its type, default and meaning (``lamo-scale baseline --help``)."""
    from lamo_scale.config import describe_options

    parts = ["(default: d3rlpy's own default; recipe: the value lamo_scale/recipes/baselines/<algo>.yaml sets,\n"
             " d3rlpy's published D4RL setting, which --algo loads)"]
    for algo in ALGOS:
        recipe = read_recipe(BASELINE_RECIPES / f"{algo}.yaml")
        parts.append(f"{algo}.*  {ALGO_NAMES[algo]}")
        for key, tp, default, doc in describe_options(PARAMS[algo], f"{algo}."):
            value = recipe.get(algo, {}).get(key.split(".", 1)[1])
            used = f", recipe {value!r}" if value is not None else ""
            parts.append(f"  {key:<30} {tp:<26} default {default}{used}\n      {doc}")
    parts.append("train.*  (shared keys with a LaMo recipe's train section)")
    parts += [f"  {key:<30} {tp:<26} default {default}\n      {doc}"
              for key, tp, default, doc in describe_options(BaselineTrainConfig, "train.")]
    parts.append("data.*, eval.*, tracking.*: the same sections as a LaMo recipe (lamo-scale train --help)")
    return "\n".join(parts)
