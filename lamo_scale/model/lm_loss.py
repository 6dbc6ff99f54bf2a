"""The language-modelling loss without full-vocabulary logits: a fused, chunked linear + cross-entropy.

``causal_lm(input_ids, labels=...)`` materialises ``[B, T, V]`` logits, upcasts them to fp32 and
keeps them (and their softmax) for the backward pass: for GPT-2's 50,257-way head and 2 x 1,024
text tokens that is ~0.8 GB of fp32 per step, and the memory traffic dominates the LM path on CPU.
Here the head is applied ``CHUNK_TOKENS`` rows at a time; each chunk's loss *and* its gradients
(w.r.t. the hidden states, and the head weight when it trains) are computed in the forward pass,
so nothing vocabulary-sized outlives its chunk and the backward pass is a multiply by the
incoming gradient. Same loss as Hugging Face's to float rounding (tests/test_lm_loss.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

CHUNK_TOKENS = 512
IGNORE_INDEX = -100
# On CPU one [512 x 768] @ [768 x 50,257] GEMM runs at ~60 % of the fp32 matmul peak; the same product
# written 1,024 vocabulary columns at a time into one buffer reaches ~90 % (bench/README.md,
# "LM loss over the head"). On GPUs the single GEMM is the better kernel.
CPU_VOCAB_BLOCK = 1024


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear(hidden, weight)`` would compute in here (autocast's, where it is on)."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``h @ weight.T + bias`` for one chunk of rows, in ``h``'s dtype (the caller casts both)."""
    if h.device.type != "cpu" or weight.shape[0] <= CPU_VOCAB_BLOCK:
        return nn.functional.linear(h, weight, bias)
    out = torch.empty(h.shape[0], weight.shape[0], dtype=h.dtype, device=h.device)
    for start in range(0, weight.shape[0], CPU_VOCAB_BLOCK):
        torch.mm(h, weight[start:start + CPU_VOCAB_BLOCK].t(), out=out[:, start:start + CPU_VOCAB_BLOCK])
    if bias is not None:
        out += bias
    return out


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """mean over valid rows of ``CE(hidden @ weight.T + bias, labels)``, gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk):
        valid = labels != IGNORE_INDEX
        count = valid.sum().clamp_min(1).to(torch.float32)
        want_h, want_w = hidden.requires_grad, weight.requires_grad
        want_b = bias is not None and bias.requires_grad
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # cast once, not per chunk (autocast would recast a frozen fp32 head on every call)
        dtype = _compute_dtype(hidden, weight)
        head_w = weight.to(dtype)
        head_b = None if bias is None else bias.to(dtype)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            target = labels[start:start + chunk]
            keep = valid[start:start + chunk]
            # one fused log-softmax pass instead of logsumexp + subtract + exp (2x faster per chunk
            # at GPT-2's 512 x 50,257 on the 2-core box; bench/README.md "LM loss over the head")
            with torch.autocast(hidden.device.type, enabled=False):
                logits = _chunk_logits(h.to(dtype), head_w, head_b)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            del logits
            safe_target = target.clamp_min(0).unsqueeze(1)
            total -= (log_probs.gather(1, safe_target).squeeze(1) * keep).sum()
            if want_h or want_w or want_b:
                # d(mean CE)/d logits = (softmax - onehot) / count, zero on ignored rows
                probs = log_probs.exp_()
                probs.scatter_add_(1, safe_target, -torch.ones_like(safe_target, dtype=probs.dtype))
                probs.mul_((keep.to(probs.dtype) / count).unsqueeze(1))
                if want_h:
                    grad_h[start:start + chunk] = probs.to(dtype) @ head_w
                if want_w:
                    grad_w += probs.t() @ h.float()
                if want_b:
                    grad_b += probs.sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.wants = (want_h, want_w, want_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        saved = iter(ctx.saved_tensors)
        grads = []
        for wanted, dtype in zip(ctx.wants, ctx.dtypes):
            grads.append((next(saved) * grad_output).to(dtype) if wanted else None)
        return grads[0], grads[1], grads[2], None, None


def _head_is_local(head: nn.Module) -> bool:
    """False where the head's weight is a shard (ZeRO-3 partitions it; only its forward gathers it)."""
    weight = getattr(head, "weight", None)
    return (isinstance(head, nn.Linear) and weight is not None and getattr(weight, "ds_id", None) is None
            and type(weight) is nn.Parameter and weight.numel() > 0)


def language_model_loss(causal_lm: nn.Module, transformer: nn.Module, text_ids: torch.Tensor,
                        chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """Next-token cross-entropy of ``causal_lm`` on ``text_ids [B, T]`` (fp32 scalar).

    ``transformer`` is the backbone stack without its head. Falls back to the model's own loss
    where the head cannot be applied piecewise (a ZeRO-3-partitioned or non-linear head, or a
    config with logit soft-capping or scaling) and where the batch fits in one chunk.
    """
    # Up to one chunk of rows there is nothing to save, and the plain path was faster in bf16
    # (bench/bench_lm_loss.py: 0.64x at SmolLM2's 1 x 128 quickstart batch).
    if not _plain_head(causal_lm) or text_ids[:, 1:].numel() <= chunk:
        return causal_lm(input_ids=text_ids, labels=text_ids, use_cache=False).loss.float()
    hidden = transformer(input_ids=text_ids, use_cache=False).last_hidden_state
    return language_loss_from_hidden(causal_lm, hidden, text_ids, chunk)


def language_loss_from_hidden(causal_lm: nn.Module, hidden: torch.Tensor, text_ids: torch.Tensor,
                              chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """The same loss from the backbone's last hidden states ``[B, T, hidden]`` of ``text_ids``
    (a packed co-training call computes them together with the RL windows' states).

    Chunked and fused above one chunk of rows on a local linear head; otherwise the head is called
    as a module (ZeRO-3 gathers a partitioned head in its forward) on all rows but the last.
    """
    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    labels = text_ids[:, 1:].reshape(-1)
    head = causal_lm.get_output_embeddings()
    if _plain_head(causal_lm) and labels.numel() > chunk:
        return _FusedLinearCrossEntropy.apply(rows, head.weight, head.bias, labels, chunk)
    return nn.functional.cross_entropy(head(rows).float(), labels, ignore_index=IGNORE_INDEX)


def _plain_head(causal_lm: nn.Module) -> bool:
    """Whether the LM head is a local linear layer whose logits the config uses unchanged."""
    head: Optional[nn.Module] = causal_lm.get_output_embeddings()
    config = causal_lm.config
    return (head is not None and _head_is_local(head) and not getattr(config, "final_logit_softcapping", None)
            and getattr(config, "logit_scale", None) in (None, 1.0))
