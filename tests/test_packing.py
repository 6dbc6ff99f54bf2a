"""One backbone call for RL windows and text (lamo_scale/model/packing.py) is the two calls' function."""
import numpy as np
import pytest
import torch

from lamo_scale.config import load_config
from lamo_scale.model import build_policy
from lamo_scale.model import packing
from lamo_scale.model.backbone import _tiny_backbone

from conftest import TINY

STATE_DIM, ACT_DIM = 5, 2


def rl_batch(b=4, k=5):
    """Segments with left padding (episode starts), as the segment stream makes them."""
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, k, dtype=torch.long)
    mask[0, :3] = 0
    mask[1, :1] = 0
    return {"states": torch.randn(b, k, STATE_DIM, generator=g) * mask[..., None],
            "actions": (torch.rand(b, k, ACT_DIM, generator=g) * 2 - 1) * mask[..., None],
            "returns_to_go": torch.randn(b, k, 1, generator=g) * mask[..., None],
            "timesteps": (torch.arange(k) + 7) * mask, "attention_mask": mask}


def step(backbone, attn, pack, text_len=24, *extra):
    """Losses and flattened gradients of one co-training step (dropout off: the same draws are not
    comparable across layouts)."""
    cfg = load_config(None, TINY + [f"model.backbone={backbone}", f"model.attn_implementation={attn}",
                                    f"model.pack_text={pack}", "model.backbone_dropout=0",
                                    "model.lora.dropout=0", *extra])
    policy, _ = build_policy(cfg.model, STATE_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM), seed=0)
    assert policy.packs_text == pack
    text = torch.randint(0, 256, (2, text_len), generator=torch.Generator().manual_seed(1))
    out = policy(**rl_batch(), text_ids=text, language_weight=0.1)
    out["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    return float(out["action_loss"]), float(out["language_loss"]), grads


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("attn", ["eager", "sdpa", "blocked_sdpa"])
def test_packed_step_gives_the_two_calls_losses_and_gradients(backbone, attn):
    packed, apart = step(backbone, attn, True), step(backbone, attn, False)
    assert packed[0] == pytest.approx(apart[0], rel=1e-6)
    assert packed[1] == pytest.approx(apart[1], rel=1e-6)
    assert torch.allclose(packed[2], apart[2], rtol=1e-5, atol=1e-7)


def test_packed_step_matches_on_the_chunked_lm_loss_and_with_rl_position_embeddings():
    # 2 x 300 text rows take the fused, chunked cross-entropy (> 512 rows); rl_position_embeddings
    # lets GPT-2's wpe add the per-segment positions to both parts.
    for extra in ((), ("model.rl_position_embeddings=true",)):
        packed, apart = step("tiny-gpt2", "sdpa", True, 300, *extra), step("tiny-gpt2", "sdpa", False, 300, *extra)
        assert packed[1] == pytest.approx(apart[1], rel=1e-6)
        assert torch.allclose(packed[2], apart[2], rtol=1e-5, atol=1e-7)


def test_packing_is_left_off_where_it_is_not_known_to_be_exact():
    cfg = load_config(None, TINY)
    lm = _tiny_backbone(cfg.model)
    lm.config._attn_implementation = "flash_attention_2"
    assert not packing.enable_packing(lm) and lm.config._attn_implementation == "flash_attention_2"
    lm.config._attn_implementation = "sdpa"
    assert packing.enable_packing(lm) and packing.is_packed(lm)
    off, _ = build_policy(load_config(None, TINY + ["model.pack_text=false"]).model, STATE_DIM, ACT_DIM)
    assert not off.packs_text and off.causal_lm.config._attn_implementation == "sdpa"
