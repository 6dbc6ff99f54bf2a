"""LoRA's update added inside its last GEMM: ``addmm(base(x), A(dropout(x)), B.T, alpha=scaling)``.

peft's vanilla LoRA forward computes ``result + lora_B(lora_A(dropout(x))) * scaling``: the update
``[tokens, out]`` is written, scaled in a second pass and added in a third, and the backward
multiplies the full-width gradient by ``scaling`` once more. ``torch.addmm`` with ``alpha`` does
the scale and the add inside the B GEMM, and its backward applies ``alpha`` to the rank-r side
only. Same value to float rounding (bit-equal where ``scaling`` is a power of two, as the paper's
alpha 32 / r 16 is); same parameters, so checkpoints and peft's adapter API are unchanged.
Measured on GPT-2's c_attn at the paper's batch (bench/README.md, "The LoRA update").

Where the shortcut does not apply it calls peft's own forward: adapters disabled or merged, more
than one active adapter, a LoRA variant (DoRA, ...), a LoRA bias, a weight that is not whole and
local (ZeRO-3 partition, FSDP2 shard), or mixed dtypes outside autocast.
"""
from __future__ import annotations

import types

import torch

from lamo_scale.model.params import is_whole_local


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft ``lora.Linear.forward`` with the update folded into one ``addmm``."""
    peft_forward = type(self).forward
    adapters = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1:
        return peft_forward(self, x, *args, **kwargs)
    name = adapters[0]
    if name not in self.lora_A or name in self.lora_variant:
        return peft_forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    weight = lora_b.weight
    base_weight = self.get_base_layer().weight
    same_dtype = torch.is_autocast_enabled(x.device.type) or (
        x.dtype == base_weight.dtype == weight.dtype == lora_a.weight.dtype)
    if lora_b.bias is not None or not same_dtype or not (is_whole_local(weight) and is_whole_local(base_weight)):
        return peft_forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    update_in = lora_a(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.weight.dtype)))
    out = torch.addmm(result.reshape(-1, result.shape[-1]), update_in.reshape(-1, update_in.shape[-1]),
                      weight.t(), alpha=self.scaling[name])
    return out.view(result.shape)


def fuse_lora_updates(model: torch.nn.Module) -> int:
    """Give every peft LoRA linear layer in ``model`` the one-``addmm`` forward; returns how many."""
    from peft.tuners.lora import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused
