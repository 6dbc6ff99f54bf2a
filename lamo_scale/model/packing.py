"""One backbone call for the RL windows *and* the language batch of a co-training step.

LaMo's training step runs two different batches through the same frozen backbone: ``B`` RL
windows of ``3K - 1`` tokens and ``Bt`` text blocks of ``T`` tokens. Run as two calls, every
layer's weights are read twice in the forward pass and twice in the backward pass (FSDP2
all-gathers them twice: 17 against 10 all-gathers per step in bench/results/distributed_packing-cpu.txt;
ZeRO-3 kept them live between the two calls at the size measured there), and every small op is
launched twice. Packed, the two batches are laid end to end as rows of one
``[1, B·(3K - 1) + Bt·T, hidden]`` sequence: every linear layer, norm and activation
runs once over all rows, and only attention is split back into the segments, each attended
exactly as it would be alone (its own causal and padding mask, by the configured kernel).
The result is the same function as the two calls (tests/test_packing.py).

How it plugs into transformers: the backbone's attention kernel name is replaced, at load, by a
wrapper registered here (``lamo_packed_<kernel>``) with the kernel's own mask function. Without a
layout the wrapper calls the kernel unchanged, so acting, perplexity and every other call are
untouched. A packed call passes its :class:`PackedLayout` through the model's keyword arguments
(transformers forwards them to the attention function) and a 4-D placeholder mask, which
transformers' mask builders return as given (per-segment masks are built once per call instead).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "lamo_packed_"
KWARG = "lamo_packing"
PACKABLE_KERNELS = ("eager", "sdpa", "blocked_sdpa")
"""Kernels the wrapper is exercised with (tests/test_packing.py); others keep two calls."""
PACKABLE_MODELS = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
"""Architectures whose text input is ``input embedding (+ GPT-2's wpe)`` and whose positions come
from ``position_ids``, and whose LM head is a plain linear layer (no logit scaling or capping)."""


@dataclass
class Segment:
    """``batch`` sequences of ``length`` tokens, rows ``start .. start + batch·length`` of the packed call."""

    start: int
    batch: int
    length: int
    mask: object = None
    """The attention mask this segment would get alone, in the kernel's own format (or None)."""

    @property
    def end(self) -> int:
        """One past the segment's last packed row."""
        return self.start + self.batch * self.length

    def take(self, states: torch.Tensor) -> torch.Tensor:
        """This segment's ``[batch, heads, length, dim]`` view of packed ``[1, heads, rows, dim]`` states."""
        return states[0, :, self.start:self.end].unflatten(1, (self.batch, self.length)).transpose(0, 1)


class _SplitSegments(torch.autograd.Function):
    """Every segment's view of packed ``[1, heads, rows, dim]`` states, with one gradient buffer.

    Taken by plain indexing, each view's backward (``select`` + ``slice``) would allocate and
    zero a tensor of the whole packed size, and autograd would add those up: per layer three
    full-size zero-fills, copies and adds for each of query, key and value (~0.5 GB of memory
    traffic per layer at the paper's co-training batch). Here the backward writes each segment's
    gradient into its rows of one buffer.
    """

    @staticmethod
    def forward(ctx, states, segments):
        ctx.segments, ctx.shape = segments, states.shape
        return tuple(seg.take(states) for seg in segments)

    @staticmethod
    def backward(ctx, *grads):
        covered = sum(seg.end - seg.start for seg in ctx.segments) == ctx.shape[2]
        like = next(g for g in grads if g is not None)
        if covered and all(g is not None for g in grads):
            packed = like.new_empty(ctx.shape)  # every row is written below
        else:
            packed = like.new_zeros(ctx.shape)
        for seg, grad in zip(ctx.segments, grads):
            if grad is not None:
                seg.take(packed).copy_(grad)
        return packed, None


def split_segments(states: torch.Tensor, segments: list[Segment]) -> tuple[torch.Tensor, ...]:
    """:meth:`Segment.take` for every segment, differentiable at the cost of one buffer."""
    if not states.requires_grad:
        return tuple(seg.take(states) for seg in segments)
    return _SplitSegments.apply(states, segments)


@dataclass
class PackedLayout:
    """The segments of one packed call (what the attention wrapper splits by)."""

    segments: list[Segment]


def packed_name(kernel: str) -> str:
    """The wrapper's registered name for ``kernel`` (registering it on first use)."""
    name = PREFIX + kernel
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_wrapper(kernel))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[kernel])
    return name


def _kernel(module: nn.Module, kernel: str):
    if kernel == "eager":  # each model's own eager function (GPT-2's differs from Llama's)
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[kernel]


def _make_wrapper(kernel: str):
    def packed_attention(module, query, key, value, attention_mask, **kwargs):
        layout = kwargs.pop(KWARG, None)
        inner = _kernel(module, kernel)
        if layout is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        outputs = []
        parts = zip(*(split_segments(states, layout.segments) for states in (query, key, value)))
        for seg, (q, k, v) in zip(layout.segments, parts):
            out, _ = inner(module, q, k, v, seg.mask, **kwargs)
            outputs.append(out.reshape(1, seg.batch * seg.length, *out.shape[2:]))
        return torch.cat(outputs, dim=1), None

    packed_attention.__doc__ = f"``{kernel}`` attention, per segment when a packed layout is passed."
    return packed_attention


def enable_packing(lm: nn.Module) -> bool:
    """Route ``lm``'s attention through the packing wrapper of its kernel; False (and nothing
    changed) where the architecture or kernel is not one packing is known to be exact for."""
    config = lm.config
    kernel = config._attn_implementation
    if config.model_type not in PACKABLE_MODELS or kernel not in PACKABLE_KERNELS:
        return False
    config._attn_implementation = packed_name(kernel)
    return True


def is_packed(lm: nn.Module) -> bool:
    """Whether ``lm`` runs its attention through the packing wrapper."""
    return str(lm.config._attn_implementation).startswith(PREFIX)


_PLACEHOLDER_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


def packed_call(transformer: nn.Module, parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
    """Run ``parts`` (``(embeddings [B, T, hidden], padding mask [B, T] or None)``) through
    ``transformer`` in one call; returns each part's last hidden states ``[B, T, hidden]``.

    The embeddings must be complete inputs (absolute position embeddings already added where the
    architecture has them; the caller keeps ``wpe`` from adding its own). Positions for rotary
    backbones restart at 0 in every sequence, as in a call of its own.
    """
    config = transformer.config
    segments, rows, positions, start = [], [], [], 0
    for embeds, mask in parts:
        batch, length = embeds.shape[:2]
        alone = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=mask,
                                   past_key_values=None, position_ids=None)
        segments.append(Segment(start, batch, length, alone))
        rows.append(embeds.reshape(1, batch * length, embeds.shape[-1]))
        positions.append(torch.arange(length, device=embeds.device).repeat(batch))
        start += batch * length
    out = transformer(inputs_embeds=torch.cat(rows, dim=1), attention_mask=_PLACEHOLDER_MASK.to(rows[0].device),
                      position_ids=torch.cat(positions)[None], use_cache=False,
                      **{KWARG: PackedLayout(segments)}).last_hidden_state
    return [out[0, s.start:s.end].reshape(s.batch, s.length, -1) for s in segments]
