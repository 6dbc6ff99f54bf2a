"""Typed configuration tree: dataclasses, YAML recipes, dotted command-line overrides.

A recipe is a YAML file whose nesting mirrors :class:`Config`; overrides are ``a.b=value``
strings parsed as YAML scalars (``train.steps=200 model.lora.rank=8``). Everything is
validated before any model is built: unknown keys name the valid ones with a close-match
suggestion, wrong types and impossible combinations are refused with a clear message.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A recipe or override that cannot be used, with a message that says how to fix it."""


@dataclass
class LoraConfig:
    """LoRA adapters on the frozen backbone (used when ``model.finetune=lora``)."""

    rank: int = 16
    """Rank r of the low-rank update."""
    alpha: float = 32.0
    """Scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = 0.1
    """Dropout on the LoRA input."""
    target_modules: Optional[list[str]] = None
    """Module names to adapt; null resolves per architecture (GPT-2 c_attn, Llama q/k/v_proj...)."""


@dataclass
class ModelConfig:
    """The LaMo policy: pre-trained causal-LM backbone plus RL embeddings and heads."""

    backbone: str = "gpt2"
    """Hub id (gpt2, gpt2-xl, meta-llama/...), local directory, or built-in name (tiny-gpt2, tiny-llama)."""
    pretrained: bool = True
    """Load pre-trained weights; false = same architecture randomly initialised (ablation)."""
    finetune: Literal["lora", "full", "frozen"] = "lora"
    """lora = frozen backbone + LoRA; full = all backbone weights train; frozen = only embeddings/heads."""
    embedding: Literal["mlp", "linear"] = "mlp"
    """Return/state/action embeddings: LaMo's MLP (Linear-GELU-Linear with skip) or DT's linear."""
    action_head: Literal["mlp", "linear"] = "mlp"
    """Action prediction head read at the state token."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings."""
    state_encoder: Literal["auto", "mlp", "cnn"] = "auto"
    """State token encoder: mlp|linear embedding of vectors, or the Nature-DQN CNN (32/64/64 channels,
    kernels 8/4/3, strides 4/2/1) for uint8 frames; auto = from the dataset's observation space."""
    actions: Literal["auto", "continuous", "discrete"] = "auto"
    """continuous: regressed with MSE; discrete: one-hot action tokens, logits, cross-entropy, arg-max
    acting (the official Atari code); auto = from the dataset's action space."""
    observation_shape: Optional[list[int]] = None
    """Frame shape the cnn encoder reads (C,H,W / H,W,C / H,W); null = from the dataset (recorded in checkpoints)."""
    max_timestep: int = 1024
    """Size of the timestep-embedding table; longer episodes are clamped to the last entry."""
    input_scale: Optional[float] = None
    """Initial RMS of the RL tokens fed to the backbone (the embedding LayerNorm's gain and the
    timestep embedding's std); null = auto: the RMS of the backbone's own token-embedding table."""
    rl_position_embeddings: bool = False
    """Add the backbone's absolute position embeddings (GPT-2 wpe) to RL tokens; false = as the
    official LaMo/DT code (time enters through the timestep embedding only; padding cannot shift it)."""
    backbone_dropout: Optional[float] = None
    """Set every dropout probability inside the backbone to this (null keeps the model's own)."""
    attention_dropout: Optional[float] = None
    """Set only the attention-probability dropout inside the backbone (GPT-2's attn_pdrop; applied
    after backbone_dropout; null keeps it). Under plain sdpa any non-zero rate sends CPU attention
    down SDPA's math path (a bernoulli mask over [B, H, T, T]); attn_implementation=blocked_sdpa
    computes the same distribution in causal query blocks instead (bench/profile_cotrain_step.py).
    The paper's GPT-2 keeps 0.1, so recipes keep the model's own."""
    attn_implementation: Optional[str] = None
    """Backbone attention kernel: eager, sdpa, or blocked_sdpa (lamo_scale/model/attention.py: SDPA,
    except CPU training with attention dropout runs causal attention in blocks of 128 queries
    against the visible keys only; same distribution, ~3.5x faster per GPT-2 layer at T = 1,024);
    null keeps the transformers default (sdpa)."""
    pack_text: bool = True
    """Co-training: run the RL windows and the text batch through the backbone in ONE call, laid end
    to end and attended per segment (lamo_scale/model/packing.py): the same function, but each
    layer's weights are read (under FSDP2: all-gathered) once per pass instead of twice, and each
    small op launched once (bench/README.md "Packing").
    Applies to GPT-2 and Llama-family backbones with eager, sdpa or blocked_sdpa attention;
    false = two calls."""
    gradient_checkpointing: bool = False
    """Recompute backbone activations in backward: less memory, more time."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of the frozen backbone weights (trainable weights stay float32)."""
    sharded_init: bool = True
    """Under ZeRO-3 / FSDP2, build the backbone already sharded (zero.Init / meta device) and read
    each rank's shard from the checkpoint files, so no rank holds the whole model; false = every
    rank builds it whole first (the old behaviour). Built-in tiny backbones are always built whole."""
    tiny_layers: int = 2
    """Built-in tiny backbones only: number of transformer layers."""
    tiny_width: int = 64
    """Built-in tiny backbones only: hidden width."""
    tiny_heads: int = 2
    """Built-in tiny backbones only: attention heads."""


@dataclass
class DataConfig:
    """Offline trajectories from a Minari dataset."""

    dataset: str = "lamo/reacher2d/expert-v1"
    """Minari dataset id in the local store, or a path to a dataset directory."""
    download: bool = False
    """Download the dataset from the Minari remote if it is missing locally."""
    context_len: int = 20
    """K: timesteps per segment (each timestep is 3 tokens: return, state, action)."""
    rtg_scale: float = 1000.0
    """Returns-to-go are divided by this (1000 for MuJoCo locomotion, 100 for Reacher2d)."""
    data_ratio: float = 1.0
    """Fraction of trajectories kept (the paper's 0.01 / 0.1 / 1.0), chosen by a seeded draw."""
    ratio_seed: int = 0
    """Seed of that draw, independent of train.seed: one subset per (dataset, ratio), so seeds vary training, not data."""
    normalize_states: bool = True
    """Normalise states by the (subsampled) dataset's mean and std."""
    num_workers: int = 0
    """DataLoader worker processes for the segment stream (each reads a disjoint shard)."""


@dataclass
class TextConfig:
    """Text for the auxiliary language-modelling loss (read only when loss.language_weight > 0)."""

    source: str = "auto"
    """Local text file/dir, hub dataset (wikitext:wikitext-103-raw-v1), builtin:python-docs|python-docstrings, or auto."""
    split: str = "train"
    """Dataset split for hub datasets."""
    text_field: str = "text"
    """Column holding the text in hub/arrow datasets."""
    block_size: int = 1024
    """Tokens per packed block."""
    batch_size: int = 2
    """Text blocks per training step."""
    heldout_source: Optional[str] = None
    """Text for the start-of-run perplexity check of the backbone; null = text.source (skipped when loss.language_weight=0)."""
    heldout_blocks: int = 4
    """Blocks (of min(block_size, 512) tokens) in that check; 0 skips it."""


@dataclass
class LossConfig:
    """Training objective."""

    language_weight: float = 0.1
    """lambda: weight of the language-modelling loss; 0 reads no text and runs no LM forward."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 64
    """Segments per optimizer step (global, across ranks and accumulation)."""
    grad_accum: int = 1
    """Gradient accumulation micro-steps per optimizer step."""
    lr: float = 1e-4
    """AdamW learning rate after warm-up."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    warmup_steps: int = 2500
    """Linear warm-up steps (learning rate ramps from 0)."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """After warm-up: constant (the official code), or a cosine / linear decay to min_lr_ratio at the last step."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of train.lr (cosine / linear schedules)."""
    backbone_lr: Optional[float] = None
    """Learning rate of the backbone's trainable weights (LoRA, or all under full fine-tuning); null = train.lr."""
    grad_clip: float = 0.25
    """Global gradient-norm clip; 0 disables."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision (accelerate's mixed_precision)."""
    seed: int = 0
    """Seed for model init and segment sampling (the data-ratio subset has its own data.ratio_seed)."""
    log_every: int = 10
    """Steps between metric logs."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a final one is always written)."""
    keep_checkpoints: int = 3
    """Most recent checkpoints kept on disk (0 keeps all)."""
    output_dir: str = "runs/{experiment}/{run_name}"
    """Where checkpoints go; {experiment} and {run_name} are filled in."""
    resume: Optional[str] = None
    """Checkpoint dir, a run output dir (resume its latest checkpoint), or 'auto' (latest in output_dir if any)."""
    threads: int = 0
    """torch intra-op threads on CPU; 0 keeps torch's default."""
    compile: bool = False
    """torch.compile (inductor) the backbone's transformer: same losses, fewer kernel launches (a launch-bound
    GPU step such as SmolLM2-135M's gains most); compiling costs time at the first steps. Plain / DDP only."""


@dataclass
class EvalConfig:
    """Rollouts of checkpoints in the dataset's environment."""

    env_id: Optional[str] = None
    """Gymnasium id; null recovers the env from the Minari dataset."""
    target_returns: list[float] = field(default_factory=lambda: [100.0])
    """Return-to-go the policy is conditioned on at the first step (unscaled)."""
    episodes: int = 10
    """Episodes per target return."""
    num_envs: int = 32
    """Episodes acted on in parallel (one forward pass per step for all of them)."""
    max_episode_steps: Optional[int] = None
    """Cap on episode length; null uses the env's own limit."""
    seed: int = 12345
    """Seed of the evaluation episodes."""
    vector_env: Literal["sync", "async"] = "sync"
    """sync: every env steps in the acting process (best on a few cores); async: one process per env
    (gymnasium AsyncVectorEnv), for many envs on a many-core GPU node where stepping them serially bounds
    acting. Same episodes and returns either way (tested)."""


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    uri: str = "sqlite:///mlruns.db"
    """Tracking URI: sqlite:///file.db (default, local), http://host:5000, ..."""
    experiment: str = "{recipe}"
    """Experiment name; {recipe} is the recipe file's stem."""
    run_name: Optional[str] = None
    """Run name; null makes one from the recipe and the time."""
    enabled: bool = True
    """Log to MLflow at all."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra MLflow run tags (sweeps tag every grid axis), e.g. tracking.tags={variant: dt}."""


@dataclass
class Config:
    """The whole configuration of one training job."""

    recipe: str = "custom"
    """Name of the recipe this config came from (filled in from the YAML file name)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The LaMo policy."""
    data: DataConfig = field(default_factory=DataConfig)
    """Offline trajectories."""
    text: TextConfig = field(default_factory=TextConfig)
    """Language-loss text."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Objective."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation rollouts."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""


# ----------------------------------------------------------------------------- building

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        return "dict[str, str]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and value not in choices:
            # YAML 1.1 reads no/off/yes/on as booleans: `train.mixed_precision=no` arrives as False
            spelled = [c for c in choices if isinstance(c, str) and _parse_scalar(c) is value]
            if len(spelled) == 1:
                return spelled[0]
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, f"{path}.key"): _coerce(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, path)
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, valid: list[str], path: str) -> ConfigError:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{where}'.{hint} Valid keys here: {', '.join(valid)}")


def _build(cls: type, data: dict, path: str = "") -> Any:
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(key, valid, path)
        kwargs[key] = _coerce(value, hints[key], f"{path}.{key}" if path else key)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(tree: dict, dotted: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict (the value parsed as YAML)."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}' must look like section.key=value, e.g. train.steps=200")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = _parse_scalar(raw)


def _validate(cfg: Config) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(0.0 < cfg.data.data_ratio <= 1.0, f"data.data_ratio must be in (0, 1], got {cfg.data.data_ratio}")
    need(cfg.data.context_len >= 1, "data.context_len must be >= 1")
    need(cfg.data.rtg_scale > 0, "data.rtg_scale must be > 0")
    need(cfg.train.steps >= 1, "train.steps must be >= 1")
    need(cfg.train.batch_size >= 1, "train.batch_size must be >= 1")
    need(cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1")
    need(cfg.train.batch_size % cfg.train.grad_accum == 0,
         f"train.batch_size ({cfg.train.batch_size}) must be divisible by train.grad_accum ({cfg.train.grad_accum})")
    need(cfg.train.lr > 0, "train.lr must be > 0")
    need(cfg.train.warmup_steps >= 0, "train.warmup_steps must be >= 0")
    need(0.0 <= cfg.train.min_lr_ratio <= 1.0, f"train.min_lr_ratio must be in [0, 1], got {cfg.train.min_lr_ratio}")
    need(cfg.train.backbone_lr is None or cfg.train.backbone_lr > 0, "train.backbone_lr must be > 0 (or null)")
    need(cfg.model.input_scale is None or cfg.model.input_scale > 0, "model.input_scale must be > 0 (or null = auto)")
    need(cfg.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1")
    need(cfg.train.log_every >= 1, "train.log_every must be >= 1")
    need(cfg.loss.language_weight >= 0, "loss.language_weight must be >= 0")
    need(cfg.text.block_size >= 2 and cfg.text.batch_size >= 1, "text.block_size must be >= 2 and text.batch_size >= 1")
    need(cfg.loss.language_weight == 0 or cfg.text.batch_size % cfg.train.grad_accum == 0,
         f"text.batch_size ({cfg.text.batch_size}) must be divisible by train.grad_accum ({cfg.train.grad_accum}) "
         "(and by processes x grad_accum at launch): every micro-batch gets the same number of text blocks")
    need(cfg.model.lora.rank >= 1, "model.lora.rank must be >= 1")
    need(0.0 <= cfg.model.lora.dropout < 1.0, "model.lora.dropout must be in [0, 1)")
    for key in ("backbone_dropout", "attention_dropout"):
        value = getattr(cfg.model, key)
        need(value is None or 0.0 <= value < 1.0, f"model.{key} must be in [0, 1) or null, got {value}")
    need(cfg.model.max_timestep >= 1, "model.max_timestep must be >= 1")
    need(cfg.eval.episodes >= 1 and cfg.eval.num_envs >= 1, "eval.episodes and eval.num_envs must be >= 1")
    need(len(cfg.eval.target_returns) >= 1, "eval.target_returns needs at least one value")
    need(cfg.model.state_encoder != "cnn" or cfg.model.observation_shape is None
         or len(cfg.model.observation_shape) in (2, 3),
         f"model.observation_shape must be a frame shape (H,W / C,H,W / H,W,C), got {cfg.model.observation_shape}")
    if cfg.model.finetune == "frozen" and not cfg.model.pretrained:
        raise ConfigError(
            "model.finetune=frozen with model.pretrained=false would train on a frozen random "
            "backbone; use finetune=full (the DT baseline) or lora, or pretrained=true")
    if cfg.model.finetune != "lora" and cfg.model.lora.target_modules:
        raise ConfigError(f"model.lora.target_modules is set but model.finetune={cfg.model.finetune}; "
                          "LoRA settings apply only to finetune=lora")
    if cfg.loss.language_weight > 0 and cfg.model.finetune == "frozen":
        raise ConfigError("loss.language_weight > 0 with model.finetune=frozen: the language loss "
                          "would have no trainable backbone weights to act on; set loss.language_weight=0")


def load_config(recipe: Optional[str | Path | list] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Build a validated :class:`Config` from optional YAML recipe(s) plus dotted overrides.

    Several recipes merge left to right (``--config task --config ablations/no-language``);
    the config's ``recipe`` name joins their names with ``+``.
    """
    tree: dict = {}
    recipes = [] if recipe is None else [recipe] if isinstance(recipe, (str, Path)) else list(recipe)
    names = []
    for item in recipes:
        path = resolve_recipe(item)
        names.append(recipe_name(path))
        tree = _merge(tree, read_recipe(path))
    tree.pop("recipe", None)
    tree["recipe"] = "+".join(names) if names else "custom"
    for item in overrides:
        apply_override(tree, item)
    cfg = _build(Config, tree)
    _validate(cfg)
    return cfg


RECIPES_DIR = Path(__file__).parent / "recipes"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe(path: Path, _seen: tuple = ()) -> dict:
    """A recipe's YAML as a dict, with ``base: name`` (or a list of names) merged underneath it."""
    if path.resolve() in _seen:
        raise ConfigError(f"recipe {path} inherits from itself through 'base'")
    with open(path) as f:
        tree = yaml.safe_load(f) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping, got {type(tree).__name__}")
    bases = tree.pop("base", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        sibling = path.parent / f"{base}.yaml"
        base_path = sibling if sibling.is_file() else resolve_recipe(base)
        merged = _merge(merged, read_recipe(base_path, _seen + (path.resolve(),)))
    return _merge(merged, tree)


def packaged_recipes(baselines: bool = False) -> list[str]:
    """Names of the packaged training recipes (``paper/hopper-medium-r0.1-lamo``), without ``_`` bases;
    ``baselines=True``: the ``lamo-scale baseline`` recipes (``baselines/cql``) instead."""
    return sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml")
                  if not p.name.startswith("_") and (p.relative_to(RECIPES_DIR).parts[0] == "baselines") == baselines)


def recipe_name(path: Path) -> str:
    """A recipe's name: its path under the packaged recipes dir, else its file stem."""
    try:
        return str(path.resolve().relative_to(RECIPES_DIR.resolve()).with_suffix(""))
    except ValueError:
        return path.stem


def resolve_recipe(recipe: str | Path) -> Path:
    """Find a recipe by path, or by name among the packaged recipes (``lamo_scale/recipes``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = str(recipe)[:-5] if str(recipe).endswith(".yaml") else str(recipe)
    for candidate in (RECIPES_DIR / f"{name}.yaml", RECIPES_DIR / f"{Path(name).name}.yaml"):
        if candidate.is_file():
            return candidate
    close = difflib.get_close_matches(name, packaged_recipes(), n=3)
    hint = f" Close: {', '.join(close)}." if close else ""
    raise ConfigError(f"recipe '{recipe}' not found; give a YAML path or a packaged recipe name "
                      f"(lamo-scale recipes lists them).{hint}")


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (for YAML dumps and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Rebuild a validated config from :func:`to_dict` output (e.g. a checkpoint's)."""
    cfg = _build(Config, data)
    _validate(cfg)
    return cfg


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted ``key -> value`` pairs of a config (MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in (to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def describe_options(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every option as (dotted key, type, default, meaning), read from the field docstrings."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value).strip()
    rows = []
    hints = _hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_options(tp, key + "."))
        else:
            rows.append((key, _type_name(tp), repr(getattr(defaults, f.name)), docs.get(f.name, "")))
    return rows


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
