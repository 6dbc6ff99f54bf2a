"""Scale-out on CPU: per-rank memory and step time under DDP, ZeRO-2, ZeRO-3 and FSDP2.

    .venv/bin/python bench/bench_distributed.py --steps 4 --out bench/results/distributed-cpu.json \
        | tee bench/results/distributed-cpu.txt

The driver (this script without ``--worker``) launches, one after another, for each
fine-tuning mode (``lora``, ``full``):

- ``single``  one plain process (no launcher): the 1-rank reference, micro-batch = global batch;
- ``ddp`` / ``zero2`` / ``zero3`` / ``fsdp``  two ranks through
  ``accelerate launch --config_file ds_configs/accelerate_<mode>.yaml --num_processes 2
  bench/bench_distributed.py --worker ...`` (gloo on CPU), micro-batch = global batch / 2.

Each worker builds the accelerator exactly as ``lamo_scale.train`` does
(``distributed.make_accelerator`` + ``distributed.configure_deepspeed`` + ``accelerator.prepare``
of the policy and a ``torch.optim.AdamW`` over the trainable parameters), on a GPT-2-small-size
backbone built with ``GPT2LMHeadModel(GPT2Config(n_layer=...))`` (random init: no weights
offline), ``apply_finetune_mode`` (LoRA r16 on c_attn, or full) and ``LaMoPolicy`` (state 11,
act 3, MLP embeddings/head). It runs warm-up + timed training steps on random segments
(K=20, the same global batch in every mode, each rank taking its slice), with
``accelerator.backward`` + grad clip 0.25 + ``optimizer.step`` as the training loop does, and
records on every rank:

- parameters: bytes of *local* parameter storage, trainable / frozen. ZeRO-3: the rank's
  partition ``p.ds_tensor`` plus any full ``p.data`` still held (parameters below
  ``stage3_param_persistence_threshold`` = 10·hidden elements stay whole on every rank);
  FSDP2: ``p.to_local()``; otherwise ``p``. Tensors that share a storage (ZeRO-2 flattens the
  trainable parameters into one buffer) are counted once, at the storage's size.
- gradients: measured in the warm-up step right after backward, before the optimizer step.
  DDP / single / FSDP2: the local ``p.grad`` tensors (FSDP2: the DTensor's local shard);
  DDP's reducer buckets (another copy of the gradients, C++-side) are not visible and not
  counted. DeepSpeed: ``accelerate`` calls ``engine.step()`` inside ``accelerator.backward``,
  so the engine's ``step`` is wrapped to look just before it runs: ZeRO-2 the gradient
  partitions it keeps (``averaged_gradients``, views into its contiguous partition buffer),
  ZeRO-3 ``grad_partitions_flat_buffer`` (this rank's partition of every gradient); the
  reduce buckets (``ipg_buckets``, ``reduce_bucket_size`` elements each) are reported apart.
- optimizer state: every tensor in the base ``torch.optim.AdamW``'s ``.state`` (exp_avg,
  exp_avg_sq, step; DTensor → local shard). Under DeepSpeed the base optimizer is stepped on
  the ZeRO optimizer's fp32 flat partitions, and those partitions (the "master" weights:
  ZeRO-2 ``single_partition_of_fp32_groups``, ZeRO-3 ``fp32_partitioned_groups_flat``) are
  held *in addition* to the model parameters even in fp32 training; they are reported as
  ``master`` and included in the optimizer total.
- process RSS (psutil) at the end, and the peak (``ru_maxrss``).

Step time: ``--warmup`` untimed steps then ``--steps`` timed ones; each timed step starts
after a barrier and its time is the slowest rank's. On a 2-core box two ranks of one thread
each share the cores with everything else: the numbers show the overhead of each mode, not a
speed-up.

Dropout (backbone and LoRA) is set to 0 so that every mode computes the same loss on the same
global batch: the final-step loss is printed as a check that the ranks really trained together.

``--load DIR`` measures instead how a *checkpoint directory* is loaded (the path a hub
checkpoint takes, ``model.backbone=DIR``), per rank: peak RSS (``VmHWM``) after the policy is
built, after ``prepare`` (+ FSDP2's shard read), and after the first training step(s), for DDP
(every rank loads the whole model) vs ZeRO-3 (``zero.Init`` + streamed partitions) vs FSDP2
(meta device + streamed shards). ``--make-backbone`` first writes a random-init Llama-shaped
checkpoint there (``--shape tinyllama-1b``: 2048 wide, 20 layers, GQA 32/4, MLP 5632, vocab
32000, untied: 1.01 B parameters, 4.0 GB of fp32 safetensors)::

    .venv/bin/python bench/bench_distributed.py --load /tmp/llama-1b --make-backbone --steps 1 \
        --out bench/results/sharded_load-cpu.json | tee bench/results/sharded_load-cpu.txt
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

REPO = Path(__file__).resolve().parent.parent
STATE_DIM, ACT_DIM, K = 11, 3, 20
YAMLS = {"ddp": "accelerate_ddp.yaml", "zero2": "accelerate_deepspeed_zero2.yaml",
         "zero3": "accelerate_deepspeed_zero3.yaml", "fsdp": "accelerate_fsdp.yaml"}
MB = 1024 ** 2


# ----------------------------------------------------------------------------------- worker
def make_global_batch(batch: int, step: int):
    """Random Hopper-shaped segments (a quarter left-padded), identical in every mode."""
    import torch

    g = torch.Generator().manual_seed(1000 + step)
    mask = torch.ones(batch, K, dtype=torch.long)
    for i in range(batch // 4):
        mask[i, : int(torch.randint(1, K, (1,), generator=g))] = 0
    start = torch.randint(0, 900, (batch, 1), generator=g)
    return {
        "states": torch.randn(batch, K, STATE_DIM, generator=g) * mask[..., None],
        "actions": (torch.rand(batch, K, ACT_DIM, generator=g) * 2 - 1) * mask[..., None],
        "returns_to_go": torch.randn(batch, K, 1, generator=g) * mask[..., None],
        "timesteps": (start + torch.arange(K)) * mask,
        "attention_mask": mask,
    }


class Bytes:
    """Sum of tensor bytes, each underlying storage counted once."""

    def __init__(self):
        self.seen: set[int] = set()
        self.total = 0

    def add(self, t) -> None:
        if t is None:
            return
        if isinstance(t, (list, tuple)):
            for item in t:
                self.add(item)
            return
        if isinstance(t, dict):
            for item in t.values():
                self.add(item)
            return
        if hasattr(t, "to_local"):
            t = t.to_local()
        if t.numel() == 0:
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.seen:
            return
        self.seen.add(key)
        self.total += storage.nbytes()


def param_bytes(model, stage: int) -> dict:
    trainable, frozen = Bytes(), Bytes()
    persistent = 0
    for p in model.parameters():
        acc = trainable if p.requires_grad else frozen
        if stage == 3 and hasattr(p, "ds_tensor"):
            acc.add(p.ds_tensor)
            if p.data.numel() > 0:  # persistent (small) parameters stay whole on every rank
                persistent += p.data.numel() * p.data.element_size()
                acc.add(p.data)
        else:
            acc.add(p)
    return {"param_trainable": trainable.total, "param_frozen": frozen.total, "param_persistent_full": persistent}


def optimizer_state_bytes(base_optimizer) -> int:
    import torch

    acc = Bytes()
    for state in base_optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                acc.add(value)
    return acc.total


def deepspeed_grad_bytes(zero_opt, stage: int) -> dict:
    grads, buckets = Bytes(), Bytes()
    if stage == 3:
        grads.add(getattr(zero_opt, "grad_partitions_flat_buffer", None))
    else:
        grads.add(getattr(zero_opt, "grads_in_partition", None))  # contiguous partition buffer, if any
        grads.add(getattr(zero_opt, "averaged_gradients", {}))
    for bucket in getattr(zero_opt, "ipg_buckets", {}).values():
        buckets.add(getattr(bucket, "buffer", None))
    detail = {}
    for name in ("grads_in_partition", "averaged_gradients", "grad_partitions_flat_buffer"):
        part = Bytes()
        part.add(getattr(zero_opt, name, None))
        detail[name] = part.total
    return {"grads": grads.total, "grad_buckets": buckets.total, "grads_detail": detail}


def parse_text(spec: str) -> tuple[int, int] | None:
    """``"BxT"`` (text blocks per rank x tokens) → ``(B, T)``; empty → None (no language loss)."""
    if not spec:
        return None
    try:
        blocks, tokens = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--text {spec!r}: expected BxT, text blocks per rank x tokens per block (e.g. 1x128)")
    if blocks < 1 or tokens < 2:
        raise SystemExit(f"--text {spec!r}: need at least 1 block of 2 tokens (the LM loss predicts the next token)")
    return blocks, tokens


def count_all_gathers() -> dict:
    """Count calls and output bytes of ``all_gather_into_tensor`` / ``all_gather`` / ``all_gather_single`` from now on, in
    ``deepspeed.comm`` (ZeRO-3's parameter gathers; its torch backend holds the torch functions it
    bound at start-up, so nothing is counted twice) and ``torch.distributed`` (FSDP2's ``all_gather_single``). Returns the
    live counter."""
    import torch.distributed as torch_dist

    modules = [torch_dist]
    try:
        import deepspeed.comm as ds_comm

        modules.append(ds_comm)
    except ImportError:
        pass
    counter = {"calls": 0, "bytes": 0}
    for module in modules:
        for name in ("all_gather_into_tensor", "all_gather", "all_gather_single"):
            if not hasattr(module, name):
                continue
            original = getattr(module, name)

            def counted(out, *a, _original=original, **kw):
                counter["calls"] += 1
                tensors = out if isinstance(out, (list, tuple)) else [out]
                counter["bytes"] += sum(t.numel() * t.element_size() for t in tensors)
                return _original(out, *a, **kw)

            setattr(module, name, counted)
    return counter


def worker(args) -> None:
    import numpy as np
    import psutil
    import torch

    torch.set_num_threads(args.threads)
    proc = psutil.Process()
    rss_start = proc.memory_info().rss
    from transformers import GPT2Config, GPT2LMHeadModel

    from lamo_scale import distributed as dist
    from lamo_scale.config import load_config
    from lamo_scale.model.adapters import apply_finetune_mode
    from lamo_scale.model import packing
    from lamo_scale.model.backbone import set_dropout
    from lamo_scale.model.policy import LaMoPolicy

    accelerator = dist.make_accelerator("no", 1)
    rank, world = accelerator.process_index, accelerator.num_processes
    if args.global_batch % world:
        raise SystemExit(f"global batch {args.global_batch} does not divide over {world} ranks")
    micro = args.global_batch // world
    cfg = load_config(None, ["model.pretrained=false", f"model.finetune={args.finetune}",
                             f"model.lora.rank={args.lora_rank}", "model.lora.dropout=0"]).model
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=args.layers))
    set_dropout(lm, 0.0)
    if args.pack == "on":
        packing.enable_packing(lm)
    lm = apply_finetune_mode(lm, cfg)
    torch.manual_seed(1)
    policy = LaMoPolicy(lm, STATE_DIM, ACT_DIM, cfg, -np.ones(ACT_DIM, np.float32), np.ones(ACT_DIM, np.float32))
    if args.finetune == "full" and not args.keep_unused:
        # Without the language loss the tied wte / lm_head matrix gets no gradient; DDP (no
        # find_unused_parameters) then fails on the second step. Freeze it in every mode alike.
        policy.causal_lm.get_input_embeddings().weight.requires_grad_(False)
    trainable_n, total_n = policy.parameter_counts()
    packed = policy.packs_text
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-5)
    dist.configure_deepspeed(accelerator, micro, 1, args.grad_clip, policy.hidden_size)
    rss_built = proc.memory_info().rss
    policy, optimizer = accelerator.prepare(policy, optimizer)
    stage = dist.zero_stage(accelerator)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    info = dist.describe(accelerator)
    text = parse_text(args.text)
    text_ids = (torch.randint(0, 50257, text, generator=torch.Generator().manual_seed(7 + rank)).to(accelerator.device)
                if text else None)
    gathers = count_all_gathers()
    rec = {"mode": args.mode, "finetune": args.finetune, "layers": args.layers, "rank": rank, "world": world,
           "text": args.text, "pack": args.pack, "packed": packed,
           "micro_batch": micro, "global_batch": args.global_batch, "threads": args.threads,
           "trainable_params": trainable_n, "total_params": total_n, "distributed_type": info["distributed_type"],
           "zero_stage": stage, "rss_start": rss_start, "rss_built": rss_built}

    engine = policy if dist.is_deepspeed(accelerator) else None
    measured: dict = {}
    if engine is not None:
        original_step = engine.step

        def step_and_measure(*a, **kw):  # accelerate calls engine.step() inside accelerator.backward
            if not measured:
                measured.update(deepspeed_grad_bytes(engine.optimizer, stage))
            return original_step(*a, **kw)

        engine.step = step_and_measure

    def run_step(step: int) -> float:
        batch = make_global_batch(args.global_batch, step)
        valid = batch["attention_mask"].sum().to(torch.float64) / world if world > 1 else None
        local = {k: v[rank * micro:(rank + 1) * micro].to(accelerator.device) for k, v in batch.items()}
        policy.train()
        with accelerator.accumulate(policy), accelerator.autocast():
            out = policy(**local, valid_steps=valid, text_ids=text_ids, language_weight=0.1 if text else 0.0)
            accelerator.backward(out["loss"])
            if engine is None and not measured:
                grads = Bytes()
                for p in policy.parameters():
                    grads.add(p.grad)
                measured.update(grads=grads.total, grad_buckets=0)
            if accelerator.sync_gradients and args.grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(out["loss"].detach())

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        accelerator.wait_for_everyone()
        if step == args.warmup:
            gathers.update(calls=0, bytes=0)
        t0 = time.perf_counter()
        losses.append(run_step(step))
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    rec["allgather_calls_per_step"] = gathers["calls"] / max(args.steps, 1)
    rec["allgather_mb_per_step"] = gathers["bytes"] / MB / max(args.steps, 1)
    rec.update(measured)
    rec.update(param_bytes(policy, stage))
    if engine is not None:
        zero_opt = engine.optimizer
        master = Bytes()
        for t in getattr(zero_opt, "single_partition_of_fp32_groups", None) or \
                getattr(zero_opt, "fp32_partitioned_groups_flat", None) or []:
            master.add(t)
        rec["master"] = master.total
        rec["opt_state"] = optimizer_state_bytes(zero_opt.optimizer)
    else:
        rec["master"] = 0
        rec["opt_state"] = optimizer_state_bytes(getattr(optimizer, "optimizer", optimizer))
    rec["optimizer_total"] = rec["master"] + rec["opt_state"]
    rec["model_state_total"] = rec["param_trainable"] + rec["param_frozen"] + rec["grads"] + rec["optimizer_total"]
    rec["rss_end"] = proc.memory_info().rss
    rec["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rec["step_times"] = times
    rec["losses"] = losses
    Path(args.result_dir, f"{args.mode}-{args.finetune}-w{world}-r{rank}.json").write_text(json.dumps(rec, default=str))
    accelerator.wait_for_everyone()
    accelerator.end_training()


# ----------------------------------------------------------------------------------- driver
def launch(mode: str, finetune: str, ranks: int, args, result_dir: str) -> tuple[list[dict], float, str]:
    worker_args = ["--worker", "--mode", mode, "--finetune", finetune, "--layers", str(args.layers),
                   "--global-batch", str(args.global_batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--threads", str(args.threads), "--lora-rank", str(args.lora_rank),
                   "--grad-clip", str(args.grad_clip), "--result-dir", result_dir, "--pack", args.pack]
    if args.text:
        worker_args += ["--text", args.text]
    if args.keep_unused:
        worker_args.append("--keep-unused")
    script = str(Path(__file__).resolve())
    if mode == "single":
        cmd = [sys.executable, script, *worker_args]
    else:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", f"ds_configs/{YAMLS[mode]}",
               "--num_processes", str(ranks), script, *worker_args]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.pop("WORLD_SIZE", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    world = 1 if mode == "single" else ranks
    recs = []
    for r in range(world):
        path = Path(result_dir, f"{mode}-{finetune}-w{world}-r{r}.json")
        if path.is_file():
            recs.append(json.loads(path.read_text()))
    err = ""
    if proc.returncode != 0 or len(recs) != world:
        err = (proc.stdout[-1500:] + "\n" + proc.stderr[-3000:]).strip()
    return recs, wall, err


def summarise(recs: list[dict], wall: float, reference: dict | None) -> dict:
    r0 = recs[0]
    row = {"finetune": r0["finetune"], "mode": r0["mode"], "ranks": r0["world"], "micro": r0["micro_batch"],
           "dist_type": r0["distributed_type"].split(".")[-1], "launch_s": wall}
    for key in ("param_trainable", "param_frozen", "grads", "grad_buckets", "master", "opt_state", "optimizer_total",
                "model_state_total", "rss_end", "rss_peak"):
        row[key + "_mb"] = r0[key] / MB
        row[key + "_mb_max"] = max(r[key] for r in recs) / MB
    step_times = [max(ts) for ts in zip(*(r["step_times"] for r in recs))]
    row["s_per_step"] = _common.median(step_times)
    row["allgather_calls"] = r0.get("allgather_calls_per_step", 0)
    row["allgather_mb"] = r0.get("allgather_mb_per_step", 0)
    row["step_times"] = step_times
    # the ranks' losses average to the global-batch loss (valid_steps = global count / world)
    row["final_loss"] = sum(r["losses"][-1] for r in recs) / len(recs)
    if reference is not None:
        row["x_time_vs_single"] = row["s_per_step"] / reference["s_per_step"]
        ref_sharded = reference["param_trainable_mb"] + reference["grads_mb"] + reference["optimizer_total_mb"]
        mine = row["param_trainable_mb"] + row["grads_mb"] + row["optimizer_total_mb"]
        row["trainable_state_vs_single"] = mine / ref_sharded if ref_sharded else None
        row["loss_diff_vs_single"] = abs(row["final_loss"] - reference["final_loss"])
    return row


COLUMNS = [("finetune", "ft"), ("mode", "mode"), ("ranks", "ranks"), ("param_trainable_mb", "params train MB"),
           ("param_frozen_mb", "params frozen MB"), ("grads_mb", "grads MB"), ("master_mb", "fp32 master MB"),
           ("opt_state_mb", "Adam state MB"), ("model_state_total_mb", "total MB"),
           ("trainable_state_vs_single", "train.+grad+opt × single"), ("grad_buckets_mb", "grad buckets MB"),
           ("rss_end_mb", "RSS end MB"), ("rss_peak_mb", "RSS peak MB"), ("allgather_calls", "all-gathers/step"),
           ("allgather_mb", "gathered MB/step"), ("s_per_step", "s/step"),
           ("x_time_vs_single", "time × single"), ("loss_diff_vs_single", "|Δloss| vs single")]


def driver(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    info = _common.machine_info()
    print(_common.machine_line(info))
    print(f"GPT-2 {args.layers}x768 (vocab 50257, random init) + LaMo heads; global batch {args.global_batch} "
          f"segments of K={K}; {args.warmup} warm-up + {args.steps} timed steps; {args.threads} torch thread(s) "
          f"per process; per-rank figures are rank 0's (max over ranks in the JSON); language loss: "
          f"{args.text + ' text per rank, λ 0.1, packing ' + args.pack if args.text else 'off'}", flush=True)
    rows, failures = [], {}
    with tempfile.TemporaryDirectory(prefix="lamo_bench_dist_") as result_dir:
        for finetune in args.finetune.split(","):
            reference = None
            for mode in args.modes.split(","):
                recs, wall, err = launch(mode, finetune, 2, args, result_dir)
                if err:
                    failures[f"{finetune}/{mode}"] = err
                    print(f"[{finetune}/{mode}] FAILED after {wall:.0f} s:\n{err}\n", flush=True)
                    continue
                row = summarise(recs, wall, reference)
                row["per_rank"] = recs
                if mode == "single":
                    reference = row
                rows.append(row)
                print(f"[{finetune}/{mode}] {row['ranks']} rank(s), {row['s_per_step']:.2f} s/step, "
                      f"model state {row['model_state_total_mb']:.1f} MB/rank, RSS {row['rss_end_mb']:.0f} MB, "
                      f"final loss {row['final_loss']:.6f}, launch-to-exit {wall:.0f} s", flush=True)
    print()
    print(_common.table(rows, COLUMNS))
    print()
    for row in rows:
        r0 = row["per_rank"][0]
        print(f"{row['finetune']}/{row['mode']}: trainable {r0['trainable_params']:,} of {r0['total_params']:,} "
              f"params; distributed_type {row['dist_type']}; zero stage {r0['zero_stage']}; "
              f"step times {', '.join(f'{t:.2f}' for t in row['step_times'])} s")
    _common.save_json(args.out, {"machine": info, "args": vars(args), "rows": rows, "failures": failures})
    if failures:
        sys.exit(1)

# ------------------------------------------------------------------------ checkpoint-load bench
LOAD_YAMLS = {"ddp": "accelerate_ddp.yaml", "zero3": "accelerate_deepspeed_zero3.yaml", "fsdp": "accelerate_fsdp.yaml",
              "zero3_offload": "accelerate_deepspeed_zero3_offload.yaml"}
SHAPES = {"tinyllama-1b": dict(layers=20, width=2048, heads=32, kv_heads=4, intermediate=5632, vocab=32000),
          "test-300m": dict(layers=6, width=768, heads=12, kv_heads=4, intermediate=3072, vocab=16384)}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def load_worker(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from lamo_scale import distributed as dist
    from lamo_scale.config import load_config
    from lamo_scale.model import build_policy, sharded

    accelerator = dist.make_accelerator("no", 1)
    rank, world = accelerator.process_index, accelerator.num_processes
    micro = args.global_batch // world
    cfg = load_config(None, [f"model.backbone={args.load}", "model.pretrained=true", "model.backbone_dropout=0",
                             "model.lora.dropout=0", f"model.lora.rank={args.lora_rank}",
                             f"model.dtype={args.dtype}"]).model
    rec = {"mode": args.mode, "rank": rank, "world": world, "rss_start_kb": _status_kb("VmRSS"),
           "hwm_start_kb": _status_kb("VmHWM")}
    t = time.perf_counter()
    policy, _ = build_policy(cfg, STATE_DIM, ACT_DIM, -np.ones(ACT_DIM, np.float32), np.ones(ACT_DIM, np.float32),
                             seed=0, language_loss=False, sharding=dist.sharded_init(accelerator, cfg))
    rec["build_s"] = time.perf_counter() - t
    rec["hwm_build_kb"], rec["rss_build_kb"] = _status_kb("VmHWM"), _status_kb("VmRSS")
    rec["fingerprint"] = policy.frozen_fingerprint()
    rec["trainable_params"], rec["total_params"] = policy.parameter_counts()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-5)
    dist.configure_deepspeed(accelerator, micro, 1, args.grad_clip, policy.hidden_size)
    t = time.perf_counter()
    policy, optimizer = accelerator.prepare(policy, optimizer)
    dist.finish_sharded_load(accelerator, policy)
    rec["prepare_s"] = time.perf_counter() - t
    rec["hwm_load_kb"], rec["rss_load_kb"] = _status_kb("VmHWM"), _status_kb("VmRSS")
    rec["bytes_read"] = sharded.BYTES_READ[0]
    trainable = [p for p in policy.parameters() if p.requires_grad]
    rec["step_s"], rec["losses"] = [], []
    for step in range(args.steps):
        batch = make_global_batch(args.global_batch, step)
        valid = batch["attention_mask"].sum().to(torch.float64) / world if world > 1 else None
        local = {k: v[rank * micro:(rank + 1) * micro].to(accelerator.device) for k, v in batch.items()}
        accelerator.wait_for_everyone()
        t = time.perf_counter()
        policy.train()
        with accelerator.accumulate(policy), accelerator.autocast():
            out = policy(**local, valid_steps=valid, text_ids=text_ids, language_weight=0.1 if text else 0.0)
            accelerator.backward(out["loss"])
            if accelerator.sync_gradients and args.grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        rec["losses"].append(float(out["loss"].detach()))
        rec["step_s"].append(time.perf_counter() - t)
        rec[f"hwm_step{step + 1}_kb"] = _status_kb("VmHWM")
    t = time.perf_counter()
    weights = dist.gather_trainable(accelerator, policy)
    rec["gather_s"] = time.perf_counter() - t
    rec["gathered_tensors"] = len(weights)
    rec["hwm_end_kb"], rec["rss_end_kb"] = _status_kb("VmHWM"), _status_kb("VmRSS")
    rec["wall_s"] = time.perf_counter() - t0
    Path(args.result_dir, f"load-{args.mode}-r{rank}.json").write_text(json.dumps(rec))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def load_driver(args) -> None:
    info = _common.machine_info()
    print(_common.machine_line(info), flush=True)
    backbone = Path(args.load)
    if args.make_backbone and not (backbone / "config.json").is_file():
        from lamo_scale.model.sharded import write_random_backbone

        t = time.perf_counter()
        write_random_backbone(backbone, **SHAPES[args.shape], max_shard_size="2GB")
        print(f"wrote {args.shape} random-init checkpoint to {backbone} in {time.perf_counter() - t:.0f} s", flush=True)
    from lamo_scale.model.sharded import SafetensorsDir

    reader = SafetensorsDir(backbone)
    n_params = sum(t.numel for t in reader.tensors.values())
    file_bytes = sum(t.numel * t.itemsize for t in reader.tensors.values())
    print(f"checkpoint {backbone}: {n_params / 1e9:.3f} B parameters, {file_bytes / 2**30:.2f} GiB safetensors; "
          f"model.dtype={args.dtype}; LoRA r{args.lora_rank} on q/k/v; 2 ranks, gloo, {args.threads} thread(s) each; "
          f"global batch {args.global_batch} × K={K}; {args.steps} step(s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lamo_bench_load_") as result_dir:
        for mode in args.modes.split(","):
            worker_args = ["--worker", "--load", str(backbone), "--mode", mode, "--global-batch", str(args.global_batch),
                           "--steps", str(args.steps), "--threads", str(args.threads), "--lora-rank",
                           str(args.lora_rank), "--grad-clip", str(args.grad_clip), "--dtype", args.dtype,
                           "--result-dir", result_dir]
            cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                   f"ds_configs/{LOAD_YAMLS[mode]}", "--num_processes", "2", str(Path(__file__).resolve()), *worker_args]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            env.pop("WORLD_SIZE", None)
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
            wall = time.perf_counter() - t
            recs = [json.loads(Path(result_dir, f"load-{mode}-r{r}.json").read_text())
                    for r in range(2) if Path(result_dir, f"load-{mode}-r{r}.json").is_file()]
            if proc.returncode != 0 or len(recs) != 2:
                print(f"[{mode}] FAILED after {wall:.0f} s:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = {"mode": mode, "launch_s": wall, "per_rank": recs}
            for key in ("hwm_build_kb", "hwm_load_kb", "hwm_step1_kb", "hwm_end_kb", "rss_start_kb", "bytes_read"):
                row[key] = max(r.get(key, 0) for r in recs)
            row["build_s"] = max(r["build_s"] for r in recs)
            row["prepare_s"] = max(r["prepare_s"] for r in recs)
            row["step1_s"] = max(r["step_s"][0] for r in recs) if args.steps else None
            row["loss1"] = sum(r["losses"][0] for r in recs) / 2 if args.steps else None
            row["fingerprint"] = recs[0]["fingerprint"]
            rows.append(row)
            print(f"[{mode}] peak RSS/rank: build {row['hwm_build_kb'] / 2**20:.2f} GiB, load (build+prepare) "
                  f"{row['hwm_load_kb'] / 2**20:.2f} GiB, through step 1 {row.get('hwm_step1_kb', 0) / 2**20:.2f} GiB; "
                  f"read {row['bytes_read'] / 2**30:.2f} GiB; build {row['build_s']:.0f} s, prepare "
                  f"{row['prepare_s']:.0f} s, step 1 {row['step1_s'] or 0:.0f} s, loss {row['loss1']}, "
                  f"fingerprint {row['fingerprint']}, launch-to-exit {wall:.0f} s", flush=True)
    ddp = next((r for r in rows if r["mode"] == "ddp"), None)
    print()
    print("| mode | peak RSS/rank after build (GiB) | after load = build + prepare (GiB) | through step 1 (GiB) "
          "| × DDP (load) | × DDP (step 1) | RSS at start (GiB) | read/rank (GiB) | build s | prepare s | step 1 s | loss step 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        x_load = r["hwm_load_kb"] / ddp["hwm_load_kb"] if ddp else float("nan")
        x_step = r.get("hwm_step1_kb", 0) / ddp["hwm_step1_kb"] if ddp and ddp.get("hwm_step1_kb") else float("nan")
        print(f"| {r['mode']} | {r['hwm_build_kb'] / 2**20:.2f} | {r['hwm_load_kb'] / 2**20:.2f} | "
              f"{r.get('hwm_step1_kb', 0) / 2**20:.2f} | {x_load:.2f} | {x_step:.2f} | {r['rss_start_kb'] / 2**20:.2f} | "
              f"{r['bytes_read'] / 2**30:.2f} | {r['build_s']:.0f} | {r['prepare_s']:.0f} | {r['step1_s'] or 0:.0f} | "
              f"{r['loss1']:.6f} |")
    _common.save_json(args.out, {"machine": info, "args": vars(args), "n_params": n_params, "file_bytes": file_bytes,
                                 "rows": rows})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="internal: run one rank (under accelerate launch)")
    parser.add_argument("--mode", default="single", help="internal (worker): the mode being run")
    parser.add_argument("--result-dir", help="internal (worker): where each rank writes its JSON")
    parser.add_argument("--modes", default="single,ddp,zero2,zero3,fsdp",
                        help="single = 1 plain process; the others run 2 ranks through accelerate launch")
    parser.add_argument("--finetune", default="lora,full", help="lora (r16 on c_attn, frozen backbone) and/or full")
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 layers (768 wide, vocab 50257)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--global-batch", type=int, default=8, help="segments per step over all ranks")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--grad-clip", type=float, default=0.25)
    parser.add_argument("--keep-unused", action="store_true",
                        help="full: keep the tied wte/lm_head trainable although it gets no gradient (DDP fails)")
    parser.add_argument("--text", default="", help="co-train with the language loss on BxT random text tokens per "
                        "rank (e.g. 1x128); empty = no language loss")
    parser.add_argument("--pack", default="on", choices=["on", "off"],
                        help="with --text: RL windows and text in one backbone call (model.pack_text) or two")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per launch")
    parser.add_argument("--out", help="write the raw numbers as JSON here")
    parser.add_argument("--load", help="checkpoint-load bench on this local checkpoint dir (see the module doc)")
    parser.add_argument("--make-backbone", action="store_true", help="--load: write a random-init checkpoint first")
    parser.add_argument("--shape", default="tinyllama-1b", choices=sorted(SHAPES), help="--make-backbone: its shape")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="--load: model.dtype")
    args = parser.parse_args(argv)
    parse_text(args.text)  # a malformed --text is refused before any rank is launched
    if args.load and args.modes == parser.get_default("modes"):
        args.modes = "ddp,zero3,fsdp"
    if args.load and args.global_batch == parser.get_default("global_batch"):
        args.global_batch = 2
    if args.worker and args.load:
        load_worker(args)
    elif args.worker:
        worker(args)
    elif args.load:
        load_driver(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
