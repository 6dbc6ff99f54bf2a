"""The fused, chunked language-model loss equals Hugging Face's full-logit loss, value and gradients."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lamo_scale.model import lm_loss
from lamo_scale.model.lm_loss import language_model_loss


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)  # eval(): no dropout, so both losses see the same network
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=1000, n_positions=64)).double().eval()
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False)).double().eval()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("head_trains", [True, False])
@pytest.mark.parametrize("vocab_block", [None, 300])
def test_same_loss_and_gradients_as_the_full_logit_loss(kind, head_trains, vocab_block, monkeypatch):
    if vocab_block:  # the CPU path that writes the logits 300 vocabulary columns at a time (4 blocks, ragged)
        monkeypatch.setattr(lm_loss, "CPU_VOCAB_BLOCK", vocab_block)
    model = _model(kind)
    model.config.use_cache = False
    model.get_output_embeddings().weight.requires_grad_(head_trains)
    ids = torch.randint(0, 1000, (3, 40), generator=torch.Generator().manual_seed(1))

    reference = model(input_ids=ids, labels=ids, use_cache=False).loss
    reference.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    # chunks of 7 rows: several chunks and a ragged last one
    fused = language_model_loss(model, model.base_model, ids, chunk=7)
    fused.backward()
    got = _grads(model)

    assert fused.item() == pytest.approx(reference.item(), abs=1e-6)
    assert set(got) == set(expected)
    head_grads = {"lm_head.weight", "transformer.wte.weight"} & set(got)
    assert bool(head_grads) == head_trains
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)  # both upcast logits to fp32


def test_it_never_builds_full_vocabulary_logits(monkeypatch):
    model = _model("gpt2")
    ids = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(2))
    widest = []
    real_chunk_logits = lm_loss._chunk_logits

    def spy(h, w, b=None):
        out = real_chunk_logits(h, w, b)
        assert out.shape[-1] == 1000
        widest.append(out.numel() // 1000)
        return out

    monkeypatch.setattr(lm_loss, "_chunk_logits", spy)
    language_model_loss(model, model.base_model, ids, chunk=16).backward()
    # 2 x 32 shifted rows, at most 16 at a time
    assert widest and max(widest) <= 16 and sum(widest) == 64


def test_ignored_labels_are_left_out_as_in_hugging_face():
    model = _model("llama")
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(3))
    hidden = model.base_model(input_ids=ids).last_hidden_state
    rows = hidden[:, :-1].reshape(-1, 32)
    labels = ids[:, 1:].reshape(-1).clone()
    labels[::3] = lm_loss.IGNORE_INDEX
    head = model.get_output_embeddings()
    expected = torch.nn.functional.cross_entropy(head(rows), labels, ignore_index=lm_loss.IGNORE_INDEX)
    got = lm_loss._FusedLinearCrossEntropy.apply(rows, head.weight, head.bias, labels, 5)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)  # fp32 logits vs float64
