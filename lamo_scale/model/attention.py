"""``blocked_sdpa``: SDPA, except where SDPA is slow and exact alternatives are not.

Training with attention-probability dropout (GPT-2's ``attn_pdrop`` 0.1, the paper's setting) on a
CPU sends ``scaled_dot_product_attention`` down its math path: the full [B, H, T, T] score matrix
is materialised, masked, soft-maxed, a Bernoulli mask is drawn over all of it (the upper triangle
included) and multiplied in, and its backward runs unfused. At T = 1,024 that path was ~11 s of a
26 s GPT-2-small co-training step (bench/profile_cotrain_step.py).

This implementation computes the same thing one block of 128 queries at a time, against only the
keys the block can see (causal: keys up to the block's last query). Per block the scores stay in
cache, the never-visible upper triangle is neither computed nor given dropout draws, and the
softmax runs in fp32 (or wider). Each visible probability is still kept independently with probability
``1 - p`` and scaled by ``1 / (1 - p)`` (the mask drawn by lamo_scale/model/dropout.py), so the
output has the same distribution as SDPA's (not the same random draws). Everything else — no dropout, evaluation, GPUs (whose fused kernels handle
dropout), single-query decoding, non-causal attention — goes to transformers' own SDPA function.

Select it with ``model.attn_implementation=blocked_sdpa``; importing this module registers it with
transformers' attention and mask interfaces (the mask is SDPA's).
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lamo_scale.model.dropout import apply_keep, keep_mask

NAME = "blocked_sdpa"
QUERY_BLOCK = 128
"""Queries per block: 128 was fastest of 64/128/256/512 for GPT-2-small shapes at T = 1,024
(2 x 12 heads x 64, fp32, 1 thread: 0.37 s fwd+bwd per layer vs 1.28 s for SDPA's math path)."""


def blocked_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float, scaling: float,
                             block: int = QUERY_BLOCK) -> torch.Tensor:
    """Causal attention with dropout on the probabilities, computed in query blocks.

    ``query`` [B, H, Tq, D], ``key``/``value`` [B, H, Tk, D] (Tk ≥ Tq; the queries are the last Tq
    positions); ``attention_mask`` None (causal only) or [B or 1, 1, Tq, Tk], boolean (True =
    attend) or additive float, already causal. Returns [B, H, Tq, D] in the compute dtype (bf16
    under bf16 autocast, else the inputs').
    """
    return _BlockedCausalAttention.apply(query, key, value, attention_mask, dropout, scaling, block)


class _BlockedCausalAttention(torch.autograd.Function):
    """The blocked attention with a hand-written backward.

    Through autograd, every per-block slice of the queries, keys and values came back in the
    backward pass as a zero-filled tensor of the whole ``[B, H, T, D]`` size, added up one by one
    (at T = 1,024, 8 blocks: 24 zero-fills and ~21 full-size adds per layer). Here each block's
    gradients are written or accumulated into the rows of one buffer per input. Per block, the
    forward keeps the fp32 probabilities and the 1-byte dropout mask (autograd kept those and the
    dropped probabilities); the backward is autograd's own arithmetic in the same order and
    dtypes: matmul, dropout, softmax and scale backward.
    """

    @staticmethod
    def forward(ctx, query, key, value, attention_mask, dropout, scaling, block):
        device = query.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
        with torch.autocast(device, enabled=False):
            q, k, v = query.to(dtype), key.to(dtype), value.to(dtype)
            tq, tk = q.shape[-2], k.shape[-2]
            offset = tk - tq
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            saved = []
            for start in range(0, tq, block):
                end = min(tq, start + block)
                visible = end + offset
                probs = _block_probs(q, k, attention_mask, start, end, offset, scaling)
                keep = keep_mask(probs.shape, dropout, q.device) if dropout > 0 else None
                torch.matmul(_dropped(probs, keep, dropout, dtype), v[..., :visible, :], out=out[..., start:end, :])
                saved += [probs] if keep is None else [probs, keep]
        ctx.save_for_backward(q, k, v, *saved)
        ctx.mask, ctx.dropout, ctx.scaling, ctx.block = attention_mask, dropout, scaling, block
        ctx.in_dtypes = (query.dtype, key.dtype, value.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *saved = ctx.saved_tensors
        saved = iter(saved)
        dropout, block, mask_all = ctx.dropout, ctx.block, ctx.mask
        dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):
            grad_out = grad_out.to(dtype)
            tq, tk = q.shape[-2], k.shape[-2]
            offset = tk - tq
            dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
            for start in range(0, tq, block):
                end = min(tq, start + block)
                visible = end + offset
                probs = next(saved)
                keep = next(saved) if dropout > 0 else None
                d_out = grad_out[..., start:end, :]
                dv[..., :visible, :] += torch.matmul(_dropped(probs, keep, dropout, dtype).transpose(-1, -2), d_out)
                d_probs = torch.matmul(d_out, v[..., :visible, :].transpose(-1, -2))
                if keep is not None:
                    d_probs = apply_keep(d_probs, keep, dropout)
                d_probs = d_probs.to(probs.dtype)
                d_scores = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype)
                if mask_all is not None and mask_all.dtype == torch.bool:
                    d_scores = d_scores.masked_fill(~mask_all[..., start:end, :visible], 0)
                d_scores = (d_scores * ctx.scaling).to(dtype)
                torch.matmul(d_scores, k[..., :visible, :], out=dq[..., start:end, :])
                dk[..., :visible, :] += torch.matmul(d_scores.transpose(-1, -2), q[..., start:end, :])
        dtypes = ctx.in_dtypes
        return dq.to(dtypes[0]), dk.to(dtypes[1]), dv.to(dtypes[2]), None, None, None, None


def blocked_causal_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                       attention_mask: torch.Tensor | None, dropout: float, scaling: float,
                                       block: int = QUERY_BLOCK) -> torch.Tensor:
    """:func:`blocked_causal_attention` left to autograd, drawing the same dropout masks in the same
    order: the reference its hand-written backward is tested (tests/test_attention.py) and
    benchmarked (bench/bench_attention_backward.py) against. Not used in training."""
    offset, outputs = key.shape[-2] - query.shape[-2], []
    for start in range(0, query.shape[-2], block):
        end = min(query.shape[-2], start + block)
        visible = end + offset
        probs = _block_probs(query, key, attention_mask, start, end, offset, scaling)
        keep = keep_mask(probs.shape, dropout, query.device) if dropout > 0 else None
        outputs.append(_dropped(probs, keep, dropout, value.dtype) @ value[..., :visible, :])
    return torch.cat(outputs, dim=-2)


def _block_probs(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                 start: int, end: int, offset: int, scaling: float) -> torch.Tensor:
    """Softmax probabilities (fp32 or wider) of queries ``start:end`` over the keys they can see."""
    visible = end + offset
    scores = torch.matmul(query[..., start:end, :], key[..., :visible, :].transpose(-1, -2))
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * scaling
    fill = torch.finfo(torch.float32).min  # not -inf: a fully padded row must not become NaN
    if attention_mask is None:
        rows = torch.arange(start + offset, end + offset, device=query.device)[:, None]
        scores = scores.masked_fill(rows < torch.arange(visible, device=query.device), fill)
    else:
        mask = attention_mask[..., start:end, :visible]
        scores = scores.masked_fill(~mask, fill) if mask.dtype == torch.bool else scores + mask.to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def _dropped(probs: torch.Tensor, keep: torch.Tensor | None, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The probabilities as the value matmul takes them: in ``dtype``, dropout applied."""
    probs = probs.to(dtype)
    return probs if keep is None else apply_keep(probs, keep, p)


def blocked_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                         scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention-interface entry: the blocked path for CPU training with dropout on
    causal self-attention, transformers' SDPA function for everything else."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    tq, tk = query.shape[-2], key.shape[-2]
    if (dropout == 0.0 or query.device.type != "cpu" or not causal or tq == 1 or tk < tq
            or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
            or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = blocked_causal_attention(query, key, value, attention_mask, dropout, scale)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, blocked_sdpa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
