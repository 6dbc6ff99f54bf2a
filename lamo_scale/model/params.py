"""Whether a parameter is whole and local, so code may read it outside its module's forward."""
from __future__ import annotations

import torch
from torch import nn


def is_whole_local(param: torch.Tensor) -> bool:
    """False for a ZeRO-3 partition (``ds_id``; DeepSpeed gathers it only inside its module's
    forward), an FSDP2 shard (a DTensor, so not exactly ``nn.Parameter``) and an empty tensor."""
    return getattr(param, "ds_id", None) is None and type(param) is nn.Parameter and param.numel() > 0
