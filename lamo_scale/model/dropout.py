"""Dropout whose keep-mask on a CPU is a uniform draw and a compare instead of a Bernoulli draw.

torch's CPU ``bernoulli_`` (behind ``nn.Dropout`` and ``F.dropout``) cost ~5 ns per element on this
project's 2-core box, against ~2 ns for ``torch.rand`` plus a comparison. At GPT-2's dropout 0.1
(the paper's: residual, embedding, LoRA and attention-probability dropout) that was 1.6 s of an
18 s fp32 co-training step (bench/README.md). Here an element is kept when a float32 uniform draw
``u`` in [0, 1) is ``>= p``, i.e. with probability ``1 - p`` up to the 2^-24 grid of the draw, and
kept elements are scaled by ``1 / (1 - p)``: the same distribution as ``F.dropout``, not the same
draws. Only a 1-byte mask is kept for the backward pass. Anywhere but a CPU, and in evaluation,
torch's own dropout runs.
"""
from __future__ import annotations

import torch
from torch import nn

from lamo_scale.model.swap import replace_modules


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask keeping each element with probability ``1 - p``: ``u >= p``, ``u`` a float32
    uniform draw whatever the data's dtype (the one mask rule of this module)."""
    return torch.rand(shape, device=device) >= p


def apply_keep(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """``x`` with the dropped elements zeroed and the kept ones scaled by ``1 / (1 - p)`` (also
    the backward of dropout, applied to the incoming gradient)."""
    return x.mul(keep).mul_(1.0 / (1.0 - p))


class _ThresholdDropout(torch.autograd.Function):
    """``x * (u >= p) / (1 - p)`` with ``u`` uniform; the backward multiplies by the same mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.p = p
        return apply_keep(x, keep, p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return apply_keep(grad, keep, ctx.p), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` in distribution; on a CPU the cheap mask of this module."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training=True)
    return _ThresholdDropout.apply(x, p)


class CheapDropout(nn.Dropout):
    """``nn.Dropout`` drawing its CPU mask with :func:`dropout` (``p`` stays settable as on nn.Dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop elements of ``x`` with probability ``p`` while training."""
        return dropout(x, self.p, self.training)


def use_cheap_dropout(model: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` inside ``model`` (backbone, LoRA, heads) by a
    :class:`CheapDropout` of the same rate; returns how many were replaced."""
    return replace_modules(model, nn.Dropout, lambda old: CheapDropout(old.p, old.inplace))
