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
    on_meta = getattr(lm, "_lamo_sharded", None) == "fsdp2"
    if cfg.dtype == "bfloat16":
        if lm.get_input_embeddings().weight.dtype != torch.bfloat16:
            if getattr(lm, "_lamo_sharded", None):
                raise ValueError("a sharded backbone must be built in its storage dtype, not cast afterwards")
            lm.to(torch.bfloat16)  # random-init backbones: initialised in fp32 (reproducible), then stored in bf16
        else:
            # Loaded in bf16 already: store the floating buffers (RoPE inv_freq, ...) in bf16 too, exactly
            # as the fp32-load-then-cast path did, so both give the same numbers.
            for module in lm.modules():
                for name, buf in list(module._buffers.items()):
                    if buf is not None and buf.is_floating_point() and buf.dtype != torch.bfloat16:
                        module._buffers[name] = buf.to(torch.bfloat16)
    if cfg.finetune == "frozen":
        return lm
    targets, fan_in_fan_out = lora_targets(lm, cfg.lora.target_modules)
    peft_cfg = PeftLoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                              target_modules=targets, fan_in_fan_out=fan_in_fan_out, bias="none")
    if on_meta:
        wrapped = _peft_on_meta(lm, peft_cfg)
    else:
        wrapped = get_peft_model(lm, peft_cfg)
    # Adapters train in float32 even when the frozen base is stored in bfloat16.
    for name, param in wrapped.named_parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return wrapped


def _peft_on_meta(lm: PreTrainedModel, peft_cfg: PeftLoraConfig) -> torch.nn.Module:
    """``get_peft_model`` for a backbone whose frozen weights are on ``meta`` (FSDP2 init).

    peft moves each new adapter to its base layer's device, which would leave the adapters on
    meta with their initial values lost. Here they stay real CPU tensors, created with the same
    RNG draws as on a materialised backbone, then rounded through the base dtype as peft's move
    would have done, so the adapters equal a one-process build bit for bit.
    """
    from unittest import mock

    from peft.tuners.lora.model import LoraModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    def replace_only(self, parent, child_name, new_module, child):
        setattr(parent, child_name, new_module)  # LoraModel._replace_module without its device dispatch

    with mock.patch.object(BaseTunerLayer, "_move_adapter_to_device_of_base_layer", lambda self, *a, **k: None), \
            mock.patch.object(LoraModel, "_replace_module", replace_only):
        wrapped = get_peft_model(lm, peft_cfg)
    lost = [n for n, p in wrapped.named_parameters() if p.requires_grad and p.is_meta]
    if lost:
        raise RuntimeError(f"peft left adapters on the meta device (values lost): {lost[:3]}")
    base_dtype = lm.get_input_embeddings().weight.dtype
    with torch.no_grad():
        for param in wrapped.parameters():
            if param.requires_grad and not param.is_meta and param.dtype != base_dtype:
                param.data = param.data.to(base_dtype)
    return wrapped
