"""Replace submodules of one exact type throughout a model (the fused GELU, the cheap dropout)."""
from __future__ import annotations

from typing import Callable

from torch import nn


def replace_modules(model: nn.Module, kind: type, make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule of exactly type ``kind`` by ``make(old)``; returns how many."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is kind:
                setattr(module, name, make(child))
                replaced += 1
    return replaced
