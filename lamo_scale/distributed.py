"""How this process joins the job: the Accelerator for DDP, DeepSpeed ZeRO or FSDP.

The launcher (``accelerate launch``, ``torchrun``, Slurm's ``srun`` + accelerate) sets
RANK / WORLD_SIZE / MASTER_ADDR and, for DeepSpeed/FSDP, ``ACCELERATE_USE_DEEPSPEED`` /
``ACCELERATE_USE_FSDP``; nothing here hard-codes a host.

On a GPU host the Accelerator is built plainly. On a host with no accelerator, accelerate
needs help that it does not document (measured, see shared/notes/cpu-distributed.md):

* DDP: ``cpu=True`` — otherwise each rank trains alone with no gradient sync, silently.
* DeepSpeed: a gloo ``InitProcessGroupKwargs`` and *not* ``cpu=True`` (which would drop the
  DeepSpeed request and give DDP); without gloo, both ranks think they are rank 0 of 1.
* FSDP: ``cpu=True`` plus switching the state's ``distributed_type`` to FSDP before
  ``prepare`` (accelerate only selects FSDP when it sees a GPU/NPU/XPU).

Every run checks the world size the Accelerator reports against the launcher's
``WORLD_SIZE`` and refuses to train on a mismatch, so none of these silent failure modes
can pass unnoticed.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

log = logging.getLogger(__name__)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def launch_mode() -> str:
    """``deepspeed``, ``fsdp``, ``ddp`` or ``single``, from the launcher's environment."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"


def has_accelerator() -> bool:
    """True when a CUDA (or other torch accelerator) device is present."""
    if torch.cuda.is_available():
        return True
    acc = getattr(torch, "accelerator", None)
    return bool(acc is not None and acc.is_available())


def make_accelerator(mixed_precision: str, grad_accum: int):
    """An Accelerator for the launch mode; streams stay sharded per rank (no dispatch)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs

    mode = launch_mode()
    cpu_host = not has_accelerator()
    common = dict(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                  dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False))
    if mode == "deepspeed" and cpu_host:
        accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **common)
    elif mode == "fsdp" and cpu_host:
        from accelerate import FullyShardedDataParallelPlugin
        from accelerate.state import PartialState

        plugin = FullyShardedDataParallelPlugin()
        accelerator = Accelerator(cpu=True, fsdp_plugin=plugin, **common)
        if accelerator.state.distributed_type == DistributedType.MULTI_CPU:
            accelerator.state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            accelerator.state.fsdp_plugin = plugin
    elif mode in ("ddp", "single") and cpu_host:
        accelerator = Accelerator(cpu=True, **common)
    else:
        accelerator = Accelerator(**common)
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(f"launcher started {expected} processes but this one joined a world of "
                           f"{accelerator.num_processes} ({mode}): the ranks would train apart, refusing. "
                           "Launch with `accelerate launch --config_file ds_configs/accelerate_<mode>.yaml` (or "
                           "torchrun) so RANK/WORLD_SIZE/MASTER_ADDR and the ACCELERATE_USE_* flags are set.")
    log.info("rank %d/%d, mode %s, distributed_type %s, device %s", accelerator.process_index,
             accelerator.num_processes, mode, accelerator.distributed_type, accelerator.device)
    return accelerator


def configure_deepspeed(accelerator, micro_batch: int, grad_accum: int, grad_clip: float, hidden_size: int) -> None:
    """Fill the DeepSpeed config's ``"auto"`` values that accelerate cannot infer here.

    We do not hand our (self-sharded) data loaders to ``prepare``, so the micro-batch size
    is set explicitly; ``gradient_clipping: "auto"`` would otherwise become 1.0. Bucket sizes
    follow accelerate's own rule for ``"auto"`` (it looks for ``model.config.hidden_size``).
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = grad_clip if grad_clip > 0 else 0.0
    zero = ds.get("zero_optimization", {})
    auto = {"reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in auto.items():
        if zero.get(key) == "auto":
            zero[key] = value


def is_deepspeed(accelerator) -> bool:
    """True under DeepSpeed."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def is_fsdp(accelerator) -> bool:
    """True under FSDP."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def zero_stage(accelerator) -> int:
    """The DeepSpeed ZeRO stage (0 when not under DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None and is_deepspeed(accelerator) else 0


def is_sharded(accelerator) -> bool:
    """Whether parameters or optimizer state are split across ranks (ZeRO, FSDP)."""
    return is_deepspeed(accelerator) or is_fsdp(accelerator)


def gather_trainable(accelerator, policy) -> dict[str, torch.Tensor]:
    """Full copies of every trainable parameter, on every rank (a collective: all ranks call it).

    ZeRO-3 keeps only a shard of each parameter per rank and FSDP2 keeps DTensor shards;
    saving ``param.data`` there would write an empty or partial adapter.
    """
    unwrapped = accelerator.unwrap_model(policy)
    named = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().clone().cpu() for n, p in named}
    out = {}
    for name, p in named:
        data = p.detach()
        if hasattr(data, "full_tensor"):
            data = data.full_tensor()
        out[name] = data.clone().cpu()
    return out


def describe(accelerator) -> dict:
    """What this rank joined: for logs, run params, and the per-rank record in the run dir."""
    return {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "local_rank": accelerator.local_process_index, "mode": launch_mode(),
            "distributed_type": str(accelerator.distributed_type), "zero_stage": zero_stage(accelerator),
            "device": str(accelerator.device), "host": os.uname().nodename,
            "master_addr": os.environ.get("MASTER_ADDR"), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_node": os.environ.get("SLURMD_NODENAME")}
