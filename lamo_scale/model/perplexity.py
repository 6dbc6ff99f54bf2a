"""Is the backbone a real language model? Held-out next-token NLL, logged once at start.

A broken load (random weights, a mismatched tokenizer) shows up as an NLL near
``ln(vocab_size)``; a real pre-trained LM sits far below it (SmolLM2-135M: ~3.1 nats on
WikiText-103 valid in 512-token windows).
"""
from __future__ import annotations

import itertools
import logging
import math

import torch

from lamo_scale.data.text import open_text_records, packed_blocks

log = logging.getLogger(__name__)


@torch.no_grad()
def heldout_nll(causal_lm, tokenizer, source: str, block_size: int = 512, max_blocks: int = 4) -> float:
    """Mean next-token NLL (nats) of ``causal_lm`` on the first ``max_blocks`` blocks of ``source``."""
    blocks = list(itertools.islice(packed_blocks(open_text_records(source), tokenizer, block_size), max_blocks))
    if not blocks:
        raise ValueError(f"held-out text {source} has fewer than {block_size} tokens")
    was_training = causal_lm.training
    causal_lm.eval()
    try:
        losses = [causal_lm(input_ids=torch.tensor([b]), labels=torch.tensor([b]), use_cache=False).loss.item()
                  for b in blocks]
    finally:
        causal_lm.train(was_training)
    return float(sum(losses) / len(losses))


def check_backbone(causal_lm, tokenizer, source: str, pretrained: bool, block_size: int = 512,
                   max_blocks: int = 4) -> dict[str, float]:
    """Held-out NLL/perplexity plus the uniform-guess baseline; warns when a pre-trained LM looks untrained."""
    nll = heldout_nll(causal_lm, tokenizer, source, block_size, max_blocks)
    vocab = causal_lm.config.vocab_size
    uniform = math.log(vocab)
    log.info("backbone held-out NLL %.3f nats/token (perplexity %.1f) on %s; uniform guess ln(%d) = %.2f",
             nll, math.exp(min(nll, 50.0)), source, vocab, uniform)
    if pretrained and nll > 0.8 * uniform:
        log.warning("the backbone is supposed to be pre-trained but predicts held-out text barely better than "
                    "chance (NLL %.2f vs %.2f): check the weights and the tokenizer", nll, uniform)
    return {"backbone/heldout_nll": nll, "backbone/heldout_ppl": math.exp(min(nll, 50.0)),
            "backbone/uniform_nll": uniform}
