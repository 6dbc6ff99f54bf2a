"""The one-addmm LoRA forward equals peft's, value and gradients, and steps aside where it must."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lamo_scale.model.lora_update import fuse_lora_updates


def _peft_pair(kind: str, alpha: int, dropout: float = 0.0):
    """(peft's model, the same model with fused LoRA updates), LoRA B made non-zero."""
    torch.manual_seed(0)
    if kind == "gpt2":
        lm = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32))
        cfg = LoraConfig(r=4, lora_alpha=alpha, lora_dropout=dropout, target_modules=["c_attn"], fan_in_fan_out=True)
    else:
        lm = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=2, vocab_size=100))
        cfg = LoraConfig(r=4, lora_alpha=alpha, lora_dropout=dropout, target_modules=["q_proj", "k_proj", "v_proj"])
    peft_lm = get_peft_model(lm.double(), cfg)
    with torch.no_grad():
        for name, p in peft_lm.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would make the update (and this test) vacuous
                p.normal_(0, 0.5)
    peft_lm.eval()  # GPT-2's own dropout off: both models must see the same network
    fused_lm = copy.deepcopy(peft_lm)
    assert fuse_lora_updates(fused_lm) == (2 if kind == "gpt2" else 6)
    return peft_lm, fused_lm


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("alpha", [8, 6])  # scaling 2 (power of two: bit-equal) and 1.5
def test_same_loss_and_gradients_as_peft(kind, alpha):
    peft_lm, fused_lm = _peft_pair(kind, alpha)
    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = _loss_and_grads(peft_lm, ids)
    loss, grads = _loss_and_grads(fused_lm, ids)
    assert set(grads) == set(ref_grads) and any("lora_A" in n for n in grads)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_same_dropout_draws_while_training():
    peft_lm, fused_lm = _peft_pair("gpt2", 8, dropout=0.3)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(2))
    outs = []
    for model in (peft_lm, fused_lm):
        model.train()
        torch.manual_seed(5)
        outs.append(model(input_ids=ids).logits)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)


def test_fused_path_runs_and_peft_path_is_kept_where_it_must_be(monkeypatch):
    peft_lm, fused_lm = _peft_pair("llama", 8)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    calls = []
    peft_forward = LoraLinear.forward

    def counting(self, x, *args, **kwargs):
        calls.append(1)
        return peft_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(LoraLinear, "forward", counting)
    expected = peft_lm(input_ids=ids).logits
    assert len(calls) == 6  # peft's model: every LoRA layer went through peft's forward
    calls.clear()
    torch.testing.assert_close(fused_lm(input_ids=ids).logits, expected, rtol=1e-12, atol=1e-12)
    assert calls == []  # all six took the addmm path
    with fused_lm.disable_adapter():  # adapters off: peft's forward (the base alone)
        base_out = fused_lm(input_ids=ids).logits
    assert len(calls) == 6
    assert not torch.allclose(base_out, expected)
    calls.clear()
    fused_lm.merge_adapter()  # merged: peft's forward on the merged weights, same output
    torch.testing.assert_close(fused_lm(input_ids=ids).logits, expected, rtol=1e-10, atol=1e-10)
    assert len(calls) == 6


def test_close_to_peft_under_bf16_autocast():
    peft_lm, fused_lm = _peft_pair("gpt2", 6)
    peft_lm.float(), fused_lm.float()
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = peft_lm(input_ids=ids).logits.float()
        got = fused_lm(input_ids=ids).logits.float()
    # peft rounds the update to bf16 twice (after the GEMM and after the scale); addmm once
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0.05)
