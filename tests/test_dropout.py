"""The CPU dropout mask of lamo_scale/model/dropout.py has F.dropout's law, and the policy uses it."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lamo_scale.config import load_config
from lamo_scale.model import build_policy
from lamo_scale.model.dropout import CheapDropout, dropout

from conftest import TINY


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_elements_are_kept_with_probability_one_minus_p_and_rescaled(p, dtype):
    torch.manual_seed(0)
    n = 400_000
    x = torch.ones(n, dtype=dtype, requires_grad=True)
    y = dropout(x, p)
    kept = y != 0
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.all(y[kept].float() == torch.tensor(1 / (1 - p), dtype=dtype).float())
    y.sum().backward()  # the gradient is the same mask times the same scale
    assert torch.equal(x.grad, y.detach())


def test_evaluation_and_rate_zero_are_the_identity():
    x = torch.randn(1000)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    module = CheapDropout(0.3).eval()
    assert module(x) is x


def test_the_policy_draws_every_backbone_and_lora_dropout_with_it():
    cfg = load_config(None, TINY + ["model.lora.dropout=0.1"])
    policy, _ = build_policy(cfg.model, 4, 2, -np.ones(2), np.ones(2), seed=0)
    kinds = [type(m) for m in policy.modules() if isinstance(m, nn.Dropout)]
    assert kinds and all(k is CheapDropout for k in kinds)
    assert any("lora_dropout" in name for name, m in policy.named_modules() if isinstance(m, CheapDropout))
