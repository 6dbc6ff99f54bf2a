"""How the backbone trains: LoRA on a frozen backbone, full fine-tuning, or frozen."""
from __future__ import annotations

import logging

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import PreTrainedModel

from lamo_scale.config import ModelConfig

log = logging.getLogger(__name__)

LORA_TARGETS: dict[str, tuple[list[str], bool]] = {
    # model_type: (attention projections, fan_in_fan_out)
    "gpt2": (["c_attn"], True),  # Conv1D stores (in, out): peft must transpose
    "llama": (["q_proj", "k_proj", "v_proj"], False),
    "mistral": (["q_proj", "k_proj", "v_proj"], False),
    "qwen2": (["q_proj", "k_proj", "v_proj"], False),
    "qwen3": (["q_proj", "k_proj", "v_proj"], False),
    "gemma": (["q_proj", "k_proj", "v_proj"], False),
    "phi3": (["qkv_proj"], False),
    "gpt_neox": (["query_key_value"], False),
    "gptj": (["q_proj", "k_proj", "v_proj"], False),
    "opt": (["q_proj", "k_proj", "v_proj"], False),
    "falcon": (["query_key_value"], False),
}
"""LoRA target modules per architecture family (``config.model_type``)."""


def lora_targets(lm: PreTrainedModel, override: list[str] | None) -> tuple[list[str], bool]:
    """Target module names and fan_in_fan_out for ``lm``'s architecture (or the override)."""
    model_type = lm.config.model_type
    targets, fan_in_fan_out = LORA_TARGETS.get(model_type, (None, False))
    if override:
        return list(override), fan_in_fan_out
    if targets is None:
        raise ValueError(f"no default LoRA targets for architecture '{model_type}'; set "
                         f"model.lora.target_modules (known families: {', '.join(LORA_TARGETS)})")
    return targets, fan_in_fan_out


def apply_finetune_mode(lm: PreTrainedModel, cfg: ModelConfig, language_loss: bool = True) -> torch.nn.Module:
    """Freeze / LoRA-wrap / unfreeze the backbone as ``cfg.finetune`` says; returns the LM to use.

    Under full fine-tuning without the language loss the token embeddings and LM head get no
    gradient (the RL path feeds ``inputs_embeds``), nor does GPT-2's position table when RL
    tokens skip it (``model.rl_position_embeddings=false``), so they stay frozen: a parameter
    that never receives a gradient makes DDP fail ("Expected to have finished reduction") and
    would only cost optimizer memory.
    """
    if cfg.finetune == "full":
        lm.requires_grad_(True)
        if not language_loss:
            unused = [lm.get_input_embeddings(), lm.get_output_embeddings()]
            if not cfg.rl_position_embeddings:
                unused.append(getattr(lm.base_model, "wpe", None))
            for module in unused:
                if module is not None:
                    module.requires_grad_(False)
        return lm
    lm.requires_grad_(False)
    if cfg.dtype == "bfloat16":
        lm.to(torch.bfloat16)
    if cfg.finetune == "frozen":
        return lm
    targets, fan_in_fan_out = lora_targets(lm, cfg.lora.target_modules)
    peft_cfg = PeftLoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                              target_modules=targets, fan_in_fan_out=fan_in_fan_out, bias="none")
    wrapped = get_peft_model(lm, peft_cfg)
    # Adapters train in float32 even when the frozen base is stored in bfloat16.
    for name, param in wrapped.named_parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return wrapped
