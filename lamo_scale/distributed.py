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


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_mode() -> str:
    """``deepspeed``, ``fsdp``, ``ddp`` or ``single``, from the launcher's environment."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return "ddp" if launched_world_size() > 1 else "single"


def has_accelerator() -> bool:
    """True when a CUDA (or other torch accelerator) device is present."""
    if torch.cuda.is_available():
        return True
    acc = getattr(torch, "accelerator", None)
    return bool(acc is not None and acc.is_available())


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_memory_to_os() -> bool:
    """Fix glibc's mmap threshold at 1 MiB so large freed tensors go back to the OS at once.

    glibc raises its mmap threshold to the size of every mmapped block freed (up to 32 MiB), so
    once ZeRO-3 (or FSDP) has released a gathered parameter, later tensors of that size come from
    the heap, which is not trimmed: a rank's RSS then grows towards the whole gathered model.
    Measured at 2 gloo ranks on a 0.45 B GPT-2-XL-width backbone, λ 0: 4.1 GiB peak per rank without
    this, 3.4 with it, 2.2 with :func:`fill_zero_auto`'s limits as well (bench/README.md). Returns
    whether it was set (False off glibc).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def make_accelerator(mixed_precision: str, grad_accum: int):
    """An Accelerator for the launch mode; streams stay sharded per rank (no dispatch)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs

    mode = launch_mode()
    cpu_host = not has_accelerator()
    common = dict(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                  dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False))
    if mode in ("deepspeed", "fsdp") and cpu_host:
        return_freed_memory_to_os()  # sharded modes gather and free whole parameters in host memory
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
    expected = launched_world_size()
    if accelerator.num_processes != expected:
        raise RuntimeError(f"launcher started {expected} processes but this one joined a world of "
                           f"{accelerator.num_processes} ({mode}): the ranks would train apart, refusing. "
                           "Launch with `accelerate launch --config_file ds_configs/accelerate_<mode>.yaml` (or "
                           "torchrun) so RANK/WORLD_SIZE/MASTER_ADDR and the ACCELERATE_USE_* flags are set.")
    log.info("rank %d/%d, mode %s, distributed_type %s, device %s", accelerator.process_index,
             accelerator.num_processes, mode, accelerator.distributed_type, accelerator.device)
    return accelerator


def fill_zero_auto(zero: dict, hidden_size: int, cpu_host: bool) -> None:
    """Fill the ``"auto"`` values of a DeepSpeed ``zero_optimization`` section in place.

    Bucket sizes follow accelerate's own rule (from the hidden size). ``stage3_max_live_parameters``
    and ``stage3_max_reuse_distance``: DeepSpeed's defaults (1e9) on GPU hosts; on a CPU host,
    where the gathered parameters live in the same RAM as everything else, h² (a parameter is
    released once its module is done): with the defaults a rank keeps most of the gathered model
    between the forward and the backward from the second step on (measured at 2 gloo ranks,
    0.45 B backbone: 3.4 GiB peak per rank vs 2.2 GiB with h², same losses; bench/README.md).
    """
    hh = hidden_size * hidden_size
    values = {"reduce_bucket_size": hh, "stage3_prefetch_bucket_size": int(0.9 * hh),
              "stage3_param_persistence_threshold": 10 * hidden_size,
              "stage3_max_live_parameters": hh if cpu_host else 1_000_000_000,
              "stage3_max_reuse_distance": hh if cpu_host else 1_000_000_000}
    for key, value in values.items():
        if zero.get(key) == "auto":
            zero[key] = value


def configure_deepspeed(accelerator, micro_batch: int, grad_accum: int, grad_clip: float, hidden_size: int) -> None:
    """Fill the DeepSpeed config's ``"auto"`` values that accelerate cannot infer here.

    We do not hand our (self-sharded) data loaders to ``prepare``, so the micro-batch size
    is set explicitly; ``gradient_clipping: "auto"`` would otherwise become 1.0. The ZeRO
    section's ``"auto"`` values: :func:`fill_zero_auto`.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = grad_clip if grad_clip > 0 else 0.0
    fill_zero_auto(ds.get("zero_optimization", {}), hidden_size, cpu_host=not has_accelerator())


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


def sharded_init(accelerator, model_cfg):
    """How to build the backbone so that no rank ever holds all of it, or None (build it whole).

    ZeRO-3: a :class:`~lamo_scale.model.sharded.ShardedInit` carrying a concrete DeepSpeed config
    (the ``"auto"`` values that ``zero.Init`` reads filled in) and transformers'
    ``HfDeepSpeedConfig`` for it, kept alive so that ``from_pretrained`` / ``from_config`` see
    ZeRO-3 too. FSDP2: meta-device construction. ``model.sharded_init=false`` turns it off.
    """
    if not getattr(model_cfg, "sharded_init", True):
        return None
    from lamo_scale.model.sharded import ShardedInit

    rank, world = accelerator.process_index, accelerator.num_processes
    if zero_stage(accelerator) == 3:
        import copy

        from transformers import AutoConfig
        from transformers.integrations import HfDeepSpeedConfig

        ds = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        hidden = 1024
        if model_cfg.backbone not in ("tiny-gpt2", "tiny-llama"):
            try:
                hidden = int(getattr(AutoConfig.from_pretrained(model_cfg.backbone), "hidden_size", hidden))
            except (OSError, ValueError):
                pass
        for key in ("gradient_accumulation_steps", "train_micro_batch_size_per_gpu"):
            if ds.get(key, "auto") == "auto":
                ds[key] = 1
        if ds.get("train_batch_size") == "auto":
            del ds["train_batch_size"]
        if ds.get("gradient_clipping") == "auto":
            ds["gradient_clipping"] = 0.0
        # zero.Init takes its dtype from these two flags (its explicit ``dtype`` argument is ignored
        # on hosts without fp16, deepspeed 0.19 partition_parameters._set_dtype): the backbone's
        # load dtype. This copy only drives construction; the engine keeps accelerate's config.
        from lamo_scale.model.backbone import load_dtype

        ds["bf16"] = {"enabled": load_dtype(model_cfg) == torch.bfloat16}
        ds["fp16"] = {"enabled": False}
        fill_zero_auto(ds.setdefault("zero_optimization", {}), hidden, cpu_host=not has_accelerator())
        plan = ShardedInit("zero3", rank, world, ds)
        plan.keep_alive.append(HfDeepSpeedConfig(ds))  # sets transformers' weakref: is_deepspeed_zero3_enabled()
        _KEEP_ALIVE[:] = plan.keep_alive
        return plan
    if is_fsdp(accelerator):
        return ShardedInit("fsdp2", rank, world)
    return None


_KEEP_ALIVE: list = []
"""transformers holds its DeepSpeed config by weakref: keep it for the life of the process."""


def move_buffers(module: torch.nn.Module, device) -> int:
    """Move every registered buffer of ``module`` that is not on ``device`` there; returns how many moved."""
    moved = 0
    for sub in module.modules():
        for name, buf in sub._buffers.items():
            if buf is not None and buf.device != torch.device(device):
                sub._buffers[name] = buf.to(device)
                moved += 1
    return moved


def finish_sharded_load(accelerator, policy) -> None:
    """After ``prepare``: DeepSpeed places the parameters but leaves module buffers (the action bounds, ...)
    where they were built, so they are moved to the device here; FSDP2 meta-built backbones get their
    local shards allocated and read."""
    if is_deepspeed(accelerator):
        move_buffers(accelerator.unwrap_model(policy), accelerator.device)
    if not is_fsdp(accelerator):
        return
    from lamo_scale.model.sharded import materialize_fsdp2

    n = materialize_fsdp2(accelerator.unwrap_model(policy))
    if n:
        log.info("rank %d read its FSDP2 shards: %s elements", accelerator.process_index, f"{n:,}")


def gather_trainable(accelerator, policy) -> dict[str, torch.Tensor]:
    """Full copies of every trainable parameter, on rank 0 only (a collective: all ranks call it).

    ZeRO-3 keeps only a shard of each parameter per rank and FSDP2 keeps DTensor shards;
    saving ``param.data`` there would write an empty or partial adapter. Parameters are
    gathered one at a time, so no rank ever holds more than one full trainable tensor beyond
    what it already had; only rank 0 keeps copies (the other ranks return ``{}``). Frozen
    weights are never gathered.
    """
    unwrapped = accelerator.unwrap_model(policy)
    named = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
    keep = accelerator.is_main_process
    out = {}
    if zero_stage(accelerator) == 3:
        import deepspeed

        for name, p in named:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if keep:
                    out[name] = p.detach().clone().cpu()
        return out
    for name, p in named:
        data = p.detach()
        if hasattr(data, "full_tensor"):
            data = data.full_tensor()  # collective: every rank takes part
        if keep:
            out[name] = data.clone().cpu()
        del data
    return out


def describe(accelerator) -> dict:
    """What this rank joined: for logs, run params, and the per-rank record in the run dir."""
    return {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "local_rank": accelerator.local_process_index, "mode": launch_mode(),
            "distributed_type": str(accelerator.distributed_type), "zero_stage": zero_stage(accelerator),
            "device": str(accelerator.device), "host": os.uname().nodename,
            "master_addr": os.environ.get("MASTER_ADDR"), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_node": os.environ.get("SLURMD_NODENAME")}
