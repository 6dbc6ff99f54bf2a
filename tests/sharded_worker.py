"""One rank of tests/test_sharded_load.py: build the policy exactly as ``lamo_scale.train`` does
(accelerator, ``distributed.sharded_init``, ``build_policy``, ``prepare``, ``finish_sharded_load``)
and record what this rank holds: local backbone parameter bytes, the rise of its peak RSS
(VmHWM, reset just before the build) over the build, the fingerprint and the actions on a fixed batch.

    accelerate launch --config_file ds_configs/accelerate_<mode>.yaml --num_processes 2 \
        tests/sharded_worker.py OUT_DIR BACKBONE_DIR [key=value ...]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def local_backbone_bytes(policy) -> int:
    total = 0
    for name, p in policy.named_parameters():
        if p.requires_grad:
            continue
        if hasattr(p, "ds_tensor"):
            t = p.ds_tensor
        elif hasattr(p, "to_local"):
            t = p.to_local()
        else:
            t = p.data
        total += t.numel() * t.element_size() + (p.data.numel() * p.data.element_size() if hasattr(p, "ds_tensor") else 0)
    return total


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    return {"states": torch.randn(4, 4, 5, generator=g), "actions": torch.zeros(4, 4, 2),
            "returns_to_go": torch.rand(4, 4, 1, generator=g), "timesteps": torch.arange(4).repeat(4, 1),
            "attention_mask": torch.ones(4, 4, dtype=torch.long)}


def main(out: str, backbone: str, *extra: str) -> None:
    torch.set_num_threads(1)
    from lamo_scale import distributed as dist
    from lamo_scale.config import load_config
    from lamo_scale.model import build_policy, sharded

    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=true", "model.backbone_dropout=0",
                             "model.lora.dropout=0", "model.max_timestep=64", *extra])
    accelerator = dist.make_accelerator("no", 1)
    rss0 = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
    policy, _ = build_policy(cfg.model, 5, 2, -np.ones(2), np.ones(2), seed=0, language_loss=False,
                             sharding=dist.sharded_init(accelerator, cfg.model))
    build_hwm = status_kb("VmHWM")
    fingerprint = policy.frozen_fingerprint()
    trainable_n, total_n = policy.parameter_counts()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    dist.configure_deepspeed(accelerator, 2, 1, 0.0, policy.hidden_size)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    dist.finish_sharded_load(accelerator, policy)
    hwm = status_kb("VmHWM")
    local = local_backbone_bytes(accelerator.unwrap_model(policy))
    units = sorted(name for name, m in accelerator.unwrap_model(policy).named_modules()
                   if type(m).__name__.startswith("FSDP"))
    policy.eval()
    with torch.no_grad():
        actions = policy(**fixed_batch())  # forward through the engine / FSDP hooks (collective)
    weights = dist.gather_trainable(accelerator, policy)
    rec = {"rank": accelerator.process_index, "world": accelerator.num_processes, "rss_before_kb": rss0,
           "build_peak_rise_kb": build_hwm - rss0, "peak_rise_kb": hwm - rss0, "bytes_read": sharded.BYTES_READ[0], "local_backbone_bytes": local, "fingerprint": fingerprint,
           "trainable": trainable_n, "total": total_n, "fsdp_units": units, "loss": float(actions["loss"]),
           "gathered": {k: list(v.shape) for k, v in weights.items()}}
    Path(out, f"rank-{accelerator.process_index}.json").write_text(json.dumps(rec))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tear the process group down before exit (an abort at exit was seen once)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(*sys.argv[1:])
    # The record is written and the group torn down; skip interpreter teardown, where a
    # "terminate called without an active exception" abort (a C++ thread destroyed while still
    # joinable) was seen twice in about a dozen runs of these workers (once under FSDP2).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
