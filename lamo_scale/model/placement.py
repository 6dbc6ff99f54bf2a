"""Where an acting policy's weights live: one device, or its frozen backbone spread over a node's GPUs.

``device="auto"`` is for backbones too large for one GPU at rollout time: accelerate's
``device_map="auto"`` places the backbone's blocks (never splitting one) over every visible GPU,
then CPU memory, and hooks move the hidden states from block to block; the RL embeddings, the
action head and the policy's buffers go to the first GPU, where the acting inputs are put. With
no GPU it is the CPU, whole.
"""
from __future__ import annotations

from typing import Optional

import torch

AUTO = "auto"


def input_device(device: str | torch.device) -> torch.device:
    """The device acting inputs go to: ``device`` itself, or for ``auto`` the first GPU (the CPU without one)."""
    if str(device) == AUTO:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def place_policy(policy, device: str | torch.device, device_map: Optional[dict] = None, force_hooks: bool = False):
    """Move a policy to ``device`` for acting, or (``auto``) dispatch its backbone over the node's devices.

    ``device_map`` overrides the inferred map (module name -> device) and ``force_hooks`` attaches
    accelerate's device-alignment hooks even when the map names one device (tests use both to run
    the dispatched path on a CPU-only machine). Returns the policy.
    """
    if str(device) != AUTO:
        return policy.to(device)
    from accelerate import dispatch_model, infer_auto_device_map

    first = input_device(device)
    for child in policy.children():
        if child is not policy.lm:
            child.to(first)
    for name, buffer in policy.named_buffers(recurse=False):
        setattr(policy, name, buffer.to(first))
    if device_map is None:
        device_map = infer_auto_device_map(policy.lm, no_split_module_classes=policy._no_split_modules or [],
                                           dtype=policy.backbone_dtype)
    dispatch_model(policy.lm, device_map=device_map, main_device=str(first), force_hooks=force_hooks)
    return policy
