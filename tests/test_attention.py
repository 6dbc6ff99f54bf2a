"""``blocked_sdpa`` (lamo_scale/model/attention.py): the same attention as SDPA, computed in causal
query blocks when CPU training uses attention dropout."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lamo_scale.config import load_config
from lamo_scale.model.attention import (QUERY_BLOCK, blocked_causal_attention, blocked_causal_attention_reference,
                                       blocked_sdpa_forward)
from lamo_scale.model import packing
from lamo_scale.model.backbone import BackboneError, load_backbone

T = 2 * QUERY_BLOCK + 44  # three blocks, the last one partial


def _qkv(b=2, h=3, tq=T, tk=T, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64, requires_grad=True)
            for t in (tq, tk, tk)]


def _padding_mask(b, tq, tk, pad):
    """Causal + left padding, as transformers' sdpa_mask builds it (True = attend)."""
    causal = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    keep = torch.ones(b, tk, dtype=torch.bool)
    keep[0, :pad] = False
    return causal[None, None] & keep[:, None, None, :]


@pytest.mark.parametrize("case", ["causal", "padded", "suffix-queries"])
def test_blocked_attention_without_dropout_equals_sdpa(case):
    tq = T - 100 if case == "suffix-queries" else T
    q, k, v = _qkv(tq=tq)
    mask = _padding_mask(2, tq, T, 70) if case == "padded" else None
    ref_mask = mask if mask is not None else torch.ones(tq, T, dtype=torch.bool).tril(T - tq)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask, scale=0.3)
    out = blocked_causal_attention(q, k, v, mask, dropout=0.0, scaling=0.3)
    rows = slice(None) if case != "padded" else slice(70, None)  # fully padded query rows are ignored downstream
    assert torch.allclose(out[:, :, rows][1:], ref[:, :, rows][1:], atol=1e-10)
    assert torch.allclose(out[0, :, rows], ref[0, :, rows], atol=1e-10)
    grad = torch.randn_like(out)
    grad[0, :, :70 if case == "padded" else 0] = 0
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-9)


def test_blocked_dropout_keeps_each_visible_probability_independently():
    """One-hot values make the output the dropped probability matrix itself: every visible entry is
    0 or p_ij / (1 - p), about a fraction p of them are 0, and nothing above the diagonal appears."""
    p, d = 0.1, T
    q, k, _ = _qkv(b=2, h=4, d=32)
    v = torch.eye(T, dtype=torch.float64).expand(2, 4, T, T)
    probs = blocked_causal_attention(q, k, v, None, dropout=0.0, scaling=0.2).detach()
    torch.manual_seed(3)
    dropped = blocked_causal_attention(q, k, v, None, dropout=p, scaling=0.2).detach()
    lower = torch.ones(T, d, dtype=torch.bool).tril()
    assert torch.all(dropped[..., ~lower] == 0)
    kept = dropped[..., lower] != 0
    assert torch.allclose(dropped[..., lower][kept], probs[..., lower][kept] / (1 - p), rtol=1e-12)
    n = kept.numel()
    drop_rate = 1 - kept.double().mean().item()
    assert abs(drop_rate - p) < 5 * (p * (1 - p) / n) ** 0.5  # n ~ 340k draws: ±0.0026


@pytest.mark.parametrize("case", ["causal", "padded", "suffix-queries"])
def test_hand_written_backward_with_dropout_equals_autograd(case):
    tq = T - 100 if case == "suffix-queries" else T
    q, k, v = _qkv(tq=tq)
    mask = _padding_mask(2, tq, T, 70) if case == "padded" else None
    grad = torch.randn(2, 3, tq, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    results = []
    for fn in (blocked_causal_attention, blocked_causal_attention_reference):
        torch.manual_seed(11)
        out = fn(q, k, v, mask, 0.25, 0.3)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_hand_written_backward_under_bf16_autocast_matches_autograd():
    q, k, v = (t.detach().float().requires_grad_(True) for t in _qkv())
    grad = torch.randn(2, 3, T, 16, generator=torch.Generator().manual_seed(9)).bfloat16()
    results = []
    for fn in (blocked_causal_attention, blocked_causal_attention_reference):
        torch.manual_seed(11)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, k, v, None, 0.1, 0.25)
        assert out.dtype == torch.bfloat16
        results.append((out.float(), *torch.autograd.grad(out, (q, k, v), grad)))
    for got, want in zip(*results):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16 products, summed in another order


def test_forward_dispatch_uses_blocks_only_for_cpu_training_with_dropout():
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    q, _, _ = _qkv(h=4, d=8)
    _, k, v = _qkv(h=2, d=8, seed=1)  # grouped-query: 2 key/value heads for 4 query heads
    torch.manual_seed(5)
    out, _ = blocked_sdpa_forward(module, q, k, v, None, dropout=0.2, scaling=0.35)
    torch.manual_seed(5)
    want = blocked_causal_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), None, 0.2, 0.35)
    assert torch.equal(out, want.transpose(1, 2))
    out0, _ = blocked_sdpa_forward(module, q, k, v, None, dropout=0.0, scaling=0.35)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.35, enable_gqa=True)
    assert torch.allclose(out0, ref.transpose(1, 2), atol=1e-10)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_models_built_with_blocked_sdpa_match_sdpa(arch):
    """Same weights: identical evaluation logits (the SDPA path), and a training step that runs the
    blocked path end to end on a padded batch with finite gradients."""
    if arch == "gpt2":
        config, cls = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=T,
                                 bos_token_id=0, eos_token_id=0), GPT2LMHeadModel
    else:
        config, cls = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=64, attention_dropout=0.1,
                                  bos_token_id=0, eos_token_id=0), LlamaForCausalLM
    torch.manual_seed(0)
    models = {}
    for impl in ("sdpa", "blocked_sdpa"):
        config._attn_implementation = impl
        models[impl] = cls(config)
    models["blocked_sdpa"].load_state_dict(models["sdpa"].state_dict())
    ids = torch.randint(0, 64, (2, T))
    am = torch.ones(2, T, dtype=torch.long)
    am[0, :40] = 0
    with torch.no_grad():
        a, b = (m.eval()(ids, attention_mask=am).logits for m in models.values())
    assert torch.equal(a, b)
    m = models["blocked_sdpa"].train()
    m(ids, attention_mask=am, labels=ids).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_an_unknown_attention_kernel_is_refused_before_loading():
    cfg = load_config(None, ["model.backbone=tiny-gpt2", "model.pretrained=false", "model.attn_implementation=blocked"])
    with pytest.raises(BackboneError, match=r"model.attn_implementation='blocked'.*blocked_sdpa.*sdpa"):
        load_backbone(cfg.model)
    cfg = load_config(None, ["model.backbone=tiny-gpt2", "model.pretrained=false",
                             "model.attn_implementation=blocked_sdpa"])
    # routed through the packing wrapper of blocked_sdpa (lamo_scale/model/packing.py)
    assert load_backbone(cfg.model)[0].config._attn_implementation == packing.packed_name("blocked_sdpa")
