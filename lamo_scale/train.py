"""Train a LaMo policy: the one training loop, for one process or many.

    lamo-scale train --config lamo_scale/recipes/quickstart.yaml train.steps=200
    accelerate launch -m lamo_scale.train --config lamo_scale/recipes/quickstart.yaml model.lora.rank=8

Each step draws a micro-batch of trajectory segments (and, when ``loss.language_weight``
> 0, a micro-batch of text blocks) per rank, computes the action loss (MSE; cross-entropy for
discrete actions) + λ·LM loss in one forward call, and steps AdamW with linear warm-up and
gradient clipping. Checkpoints (adapters,
embeddings, heads, optimizer, RNG, stream positions) are written atomically and logged to
the MLflow run; ``train.resume`` continues exactly where a checkpoint left off. The loop
never steps an environment: evaluation is ``lamo-scale evaluate`` / rollout workers.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
from tqdm.auto import tqdm

from lamo_scale import checkpoint as ckpt
from lamo_scale import distributed as dist
from lamo_scale.preemption import Preempted, PreemptionFlag
from lamo_scale.config import Config, ConfigError, dump_yaml, flatten, load_config, to_dict
from lamo_scale.data.segments import SegmentStream
from lamo_scale.data.spaces import resolve_model_io
from lamo_scale.data.text import TextBlockStream, corpus_fingerprint, resolve_source, text_micro_batch
from lamo_scale.data.trajectories import TrajectoryIndex, load_trajectories, open_dataset
from lamo_scale.envs.scores import find_reference
from lamo_scale.optim import build_optimizer
from lamo_scale.model import build_policy
from lamo_scale.tracking import Tracker, run_url

log = logging.getLogger("lamo_scale.train")


SHARDED_STATE = "sharded_state"
"""Checkpoint sub-directory for optimizer/engine state that is split across ranks (ZeRO, FSDP)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a finished training job leaves behind."""

    run_dir: Path
    checkpoint: Optional[Path]
    run_id: Optional[str]
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0


def resolve_names(cfg: Config) -> tuple[str, str, Path]:
    """Experiment name, run name and run directory of a config."""
    experiment = cfg.tracking.experiment.format(recipe=cfg.recipe)
    run_name = cfg.tracking.run_name or f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.train.output_dir.format(experiment=experiment, run_name=run_name, recipe=cfg.recipe))
    return experiment, run_name, run_dir


def dataset_meta(dataset, index: TrajectoryIndex, cfg: Config) -> dict:
    """What a checkpoint needs to act in the dataset's env: ids, spaces, reference scores, stats."""
    spec = dataset.env_spec
    env_id = cfg.eval.env_id or (spec.id if spec is not None else None)
    md = dataset.storage.metadata
    ref, note = (md.get("ref_min_score"), md.get("ref_max_score")), None
    if ref[0] is None or ref[1] is None:
        # the env evaluation will act in: eval.env_id with its defaults, else the dataset's spec (its kwargs)
        ref, note = (find_reference(cfg.eval.env_id or spec, None, cfg.eval.max_episode_steps) if env_id
                     else (None, "the dataset names no environment"))
        if ref is None:
            log.warning("no reference scores for %s: %s; evaluation reports raw returns", index.dataset_id, note)
    return {
        "dataset_id": index.dataset_id,
        "env_id": env_id,
        "env_spec": spec.to_json() if spec is not None and cfg.eval.env_id is None else None,
        "state_dim": index.state_dim,
        "act_dim": index.act_dim,
        "action_low": index.action_low.tolist(),
        "action_high": index.action_high.tolist(),
        "state_stats": index.state_stats.to_dict(),
        "ref_min_score": None if ref is None else float(ref[0]),
        "ref_max_score": None if ref is None else float(ref[1]),
        "reference_note": note,
        "target_returns": list(cfg.eval.target_returns),
        "rtg_scale": cfg.data.rtg_scale,
        "context_len": cfg.data.context_len,
    }


def subset_record(index: TrajectoryIndex, cfg: Config) -> dict:
    """The data-ratio subset a run trained on: dataset, ratio, ratio seed, episode ids and their hash."""
    ids = [int(i) for i in index.episode_ids]
    return {"dataset": index.dataset_id, "data_ratio": cfg.data.data_ratio, "ratio_seed": cfg.data.ratio_seed,
            "episodes": len(ids), "sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16],
            "episode_ids": ids}


def find_resume(cfg: Config, run_dir: Path) -> Optional[ckpt.Checkpoint]:
    """The checkpoint ``train.resume`` points at (``auto``: the run dir's latest, if any)."""
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return ckpt.latest_checkpoint(run_dir / "checkpoints")
    return ckpt.resolve_checkpoint(cfg.train.resume)


def check_compatible(resume: ckpt.Checkpoint, meta: dict) -> None:
    """Refuse a checkpoint whose data shapes differ from the dataset being trained on."""
    for key in ("state_dim", "act_dim"):
        if resume.meta.get(key) != meta[key]:
            raise ckpt.CheckpointError(
                f"checkpoint {resume.path} has {key}={resume.meta.get(key)} but dataset "
                f"{meta['dataset_id']} has {key}={meta[key]}: refusing to resume on different data")


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class _Loaders:
    """Per-rank iterators over the segment stream and (optionally) the text stream."""

    def __init__(self, cfg: Config, index: TrajectoryIndex, tokenizer, rank: int, world: int, start_micro: int,
                 text_source: Optional[str]):
        from torch.utils.data import DataLoader

        self.micro_batch = cfg.train.batch_size // (world * cfg.train.grad_accum)
        segs = SegmentStream(index, cfg.data.context_len, self.micro_batch, cfg.train.seed, rank, world, start_micro)
        self.segments = segs
        workers = cfg.data.num_workers
        self.rl: Iterator = iter(DataLoader(segs, batch_size=None, num_workers=workers,
                                            persistent_workers=workers > 0))
        self.text: Optional[Iterator] = None
        self.text_micro_batch = 0
        if cfg.loss.language_weight > 0:
            # Exactly text.batch_size blocks per step over all ranks and micro-batches (ConfigError if uneven).
            text = TextBlockStream(text_source, tokenizer, cfg.text.block_size, cfg.text.batch_size, rank, world,
                                   grad_accum=cfg.train.grad_accum, seed=cfg.train.seed, start_micro_batch=start_micro,
                                   split=cfg.text.split, text_field=cfg.text.text_field)
            self.text_micro_batch = text.micro_batch
            self.text = iter(DataLoader(text, batch_size=None, num_workers=0))


def train(cfg: Config) -> TrainResult:
    """Run one training job as configured; returns where its checkpoints and run are."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    # Listen from the very start: a preemption signal during setup must not be lost.
    preemption = PreemptionFlag()
    try:
        return _train(cfg, preemption)
    finally:
        preemption.close()


def _train(cfg: Config, preemption: PreemptionFlag) -> TrainResult:
    accelerator = dist.make_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum)
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.train.batch_size % (world * cfg.train.grad_accum):
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must divide evenly over {world} processes "
                          f"x {cfg.train.grad_accum} accumulation steps")
    if cfg.loss.language_weight > 0:
        text_micro_batch(cfg.text.batch_size, world, cfg.train.grad_accum)  # ConfigError before any model is built
    if cfg.train.compile and dist.is_sharded(accelerator):
        raise ConfigError("train.compile=true needs a plain or DDP launch; under DeepSpeed / FSDP the engine "
                          "owns the parameters (ZeRO-3 gathers them per layer call). Set train.compile=false or "
                          "launch with ds_configs/accelerate_ddp.yaml.")
    names = [resolve_names(cfg)]
    if world > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(names, from_process=0)  # run names hold a timestamp: rank 0's wins
    experiment, run_name, run_dir = names[0]
    dataset = open_dataset(cfg.data.dataset, cfg.data.download)
    # The state encoder / action kind the data needs, fixed in the config (so in every checkpoint);
    # a space the policy cannot encode is refused here, before any data is read or model built.
    cfg = dataclasses.replace(cfg, model=resolve_model_io(cfg.model, dataset.observation_space,
                                                          dataset.action_space, dataset.id))
    index = load_trajectories(dataset, cfg.data.rtg_scale, cfg.data.data_ratio, cfg.data.ratio_seed,
                              cfg.data.normalize_states)
    meta = dataset_meta(dataset, index, cfg)
    resume = find_resume(cfg, run_dir)
    if resume is not None:
        check_compatible(resume, meta)
        run_dir = resume.path.parent.parent
    policy, tokenizer = build_policy(cfg.model, index.state_dim, index.act_dim, index.action_low,
                                     index.action_high, seed=cfg.train.seed,
                                     language_loss=cfg.loss.language_weight > 0,
                                     sharding=dist.sharded_init(accelerator, cfg.model))
    sharded_backbone = getattr(policy.causal_lm, "_lamo_sharded", None) or any(
        hasattr(p, "ds_id") for p in policy.causal_lm.parameters())
    fingerprint = policy.frozen_fingerprint()
    trainable_n, total_n = policy.parameter_counts()  # before prepare: ZeRO-3 empties the local tensors
    backbone_metrics = {}
    # ``auto`` picks a corpus (and may fetch it) once per run; everything below uses the result.
    text_source = resolve_source(cfg.text.source) if cfg.loss.language_weight > 0 else None
    heldout = cfg.text.heldout_source or text_source
    if sharded_backbone and heldout and cfg.text.heldout_blocks > 0 and resume is None:
        log.info("skipping the start-of-run perplexity check: the backbone is sharded across ranks")
    elif resume is None and heldout and cfg.text.heldout_blocks > 0 and accelerator.is_main_process:
        from lamo_scale.model.perplexity import check_backbone

        backbone_metrics = check_backbone(policy.causal_lm, tokenizer, heldout, cfg.model.pretrained,
                                          min(cfg.text.block_size, 512), cfg.text.heldout_blocks)
    optimizer, scheduler = build_optimizer(policy, cfg.train)
    start_step, run_id = 0, None
    if resume is not None:
        if resume.meta.get("frozen_fingerprint") != fingerprint:
            raise ckpt.CheckpointError(f"checkpoint {resume.path} was trained on a different frozen backbone "
                                       f"(fingerprint {resume.meta.get('frozen_fingerprint')} != {fingerprint})")
        ckpt.load_trainable(policy, resume.weights(), resume.path)
        state = resume.trainer_state()
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, run_id = resume.step, resume.meta.get("mlflow_run_id")
        log.info("resuming from %s at step %d", resume.path, start_step)
    micro_batch = cfg.train.batch_size // (world * cfg.train.grad_accum)
    dist.configure_deepspeed(accelerator, micro_batch, cfg.train.grad_accum, cfg.train.grad_clip, policy.hidden_size)
    # The scheduler is stepped by hand: accelerate's wrapper would step it once per process.
    if cfg.train.compile:
        # In place (nn.Module.compile): parameter names, so checkpoints, are those of the eager model.
        policy.transformer.compile()
    policy, optimizer = accelerator.prepare(policy, optimizer)
    dist.finish_sharded_load(accelerator, policy)  # DeepSpeed: buffers to the device; FSDP2: read the shards
    loaders = _Loaders(cfg, index, tokenizer, rank, world, start_step * cfg.train.grad_accum,
                       text_source)
    if resume is not None:
        if dist.is_sharded(accelerator):
            accelerator.load_state(str(resume.path / SHARDED_STATE), load_module_strict=False) \
                if dist.is_deepspeed(accelerator) else accelerator.load_state(str(resume.path / SHARDED_STATE))
        # Restored last: building DataLoader iterators draws from the torch RNG.
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    record_rank(accelerator, run_dir, loaders)

    tracker = Tracker(cfg.tracking.uri, experiment, enabled=cfg.tracking.enabled and accelerator.is_main_process)
    run_id = tracker.start(run_name, run_id=run_id, tags={"recipe": cfg.recipe, "dataset": index.dataset_id,
                                                          "backbone": cfg.model.backbone, **cfg.tracking.tags})
    if backbone_metrics:
        tracker.log_metrics(backbone_metrics, step=0)
    if resume is None and tracker.enabled:
        tracker.log_params(flatten(cfg))
        tracker.log_text(dump_yaml(cfg), "config.yaml")
        subset = subset_record(index, cfg)
        tracker.log_text(json.dumps(subset, indent=1), "data_subset.json")
        tracker.log_params({"data.subset_episodes": subset["episodes"], "data.subset_sha256": subset["sha256"]})
        info = dist.describe(accelerator)
        tracker.log_params({"policy.trainable_params": trainable_n, "policy.total_params": total_n,
                            "dist.world_size": info["world_size"], "dist.mode": info["mode"],
                            "dist.zero_stage": info["zero_stage"],
                            "data.episodes": len(index.episode_lengths), "data.steps": index.num_steps,
                            "text.corpus": corpus_fingerprint(text_source) if text_source else "none"})
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        log.info("run dir %s; MLflow: %s", run_dir, run_url(cfg.tracking.uri, run_id) if run_id else "off")

    meta.update(config=to_dict(cfg), frozen_fingerprint=fingerprint, mlflow_run_id=run_id,
                tracking_uri=cfg.tracking.uri, experiment=experiment, world_size=world)
    result = TrainResult(run_dir=run_dir, checkpoint=resume.path if resume else None, run_id=run_id,
                         steps_done=start_step)
    status = "FAILED"
    try:
        _loop(cfg, accelerator, policy, optimizer, scheduler, loaders, tracker, meta, result, start_step, preemption)
        status = "FINISHED"
    except Preempted:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
    return result


def record_rank(accelerator, run_dir: Path, loaders: "_Loaders") -> None:
    """Write ``run_dir/dist/rank-<r>.json``: what this rank joined and the first data it reads."""
    info = dist.describe(accelerator)
    info["first_segment_ends"] = loaders.segments.ends_for(loaders.segments.start_micro_batch).tolist()
    path = run_dir / "dist" / f"rank-{info['rank']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1))


def _save(cfg, accelerator, policy, optimizer, scheduler, meta, result, step, tracker) -> None:
    """Every rank takes part (gathers are collectives); rank 0 commits the directory."""
    from accelerate.utils import gather_object

    checkpoints = result.run_dir / "checkpoints"
    staging = ckpt.staging_dir(checkpoints, step)
    if accelerator.is_main_process:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rngs = gather_object([ckpt.rng_state()]) if accelerator.num_processes > 1 else [ckpt.rng_state()]
    weights = dist.gather_trainable(accelerator, policy)
    optimizer_state = None
    if dist.is_sharded(accelerator):
        kwargs = {"exclude_frozen_parameters": True} if dist.is_deepspeed(accelerator) else {}
        accelerator.save_state(str(staging / SHARDED_STATE), **kwargs)
    else:
        optimizer_state = optimizer.state_dict()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rngs, "step": step}
        path = ckpt.commit_checkpoint(staging, step, weights, state, meta, keep=cfg.train.keep_checkpoints)
        tracker.log_artifacts(path, f"checkpoints/{path.name}")
        tracker.set_tags({"last_checkpoint_step": step, "last_checkpoint": str(path.resolve())})
        result.checkpoint = path
    accelerator.wait_for_everyone()
    result.checkpoint = checkpoints / ckpt.step_dir_name(step)


def _loop(cfg, accelerator, policy, optimizer, scheduler, loaders, tracker, meta, result, start_step,
          preemption: PreemptionFlag) -> None:
    device = accelerator.device
    lam = cfg.loss.language_weight
    k = cfg.data.context_len
    trainable = [p for p in policy.parameters() if p.requires_grad]
    bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
    step = start_step
    try:
        while step < cfg.train.steps:
            policy.train()
            parts = []  # per-micro-batch losses stay on the device: one host sync per step, below
            grad_norm = None
            micro_batches = [_to_device(next(loaders.rl), device) for _ in range(cfg.train.grad_accum)]
            valid = _mean_valid_steps(accelerator, [b["attention_mask"] for b in micro_batches])
            for batch in micro_batches:
                text = _to_device(next(loaders.text), device) if loaders.text is not None else None
                with accelerator.accumulate(policy), accelerator.autocast():
                    out = policy(**batch, text_ids=text, language_weight=lam, valid_steps=valid)
                    accelerator.backward(out["loss"])
                    if accelerator.sync_gradients and cfg.train.grad_clip > 0:
                        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.train.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                parts.append(torch.stack([out["loss"].detach().float(), out["action_loss"].detach().float(),
                                          out.get("language_loss", torch.zeros_like(out["loss"])).detach().float()]))
                n = batch["states"].shape[0] * accelerator.num_processes
                window_samples += n
                window_tokens += 3 * k * n + (text.numel() * accelerator.num_processes if text is not None else 0)
            scheduler.step()
            # One small all-reduce: the global mean losses, and whether any rank was asked to stop.
            sums = (torch.stack(parts).cpu().double() / cfg.train.grad_accum).sum(0)
            flags = torch.tensor([*sums.tolist(), float(preemption.requested)], dtype=torch.float64)
            reduced = _all_reduce_mean_max(accelerator, flags)
            loss, action_loss, language_loss, stop = reduced.tolist()
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step + 1}: loss={loss}, action_loss={action_loss}, "
                    f"language_loss={language_loss}, lr={scheduler.get_last_lr()[0]:.3g}. Stopped without "
                    f"saving; last good checkpoint: {result.checkpoint}. Try a lower train.lr, train.grad_clip, or "
                    f"mixed_precision=no.")
            step += 1
            result.losses.append(loss)
            result.steps_done = step
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                norm = grad_norm if grad_norm is not None else _engine_grad_norm(policy)
                metrics = {"train/loss": loss, "train/action_loss": action_loss, "train/lr": scheduler.get_last_lr()[0],
                           "train/samples_per_s": window_samples / elapsed, "train/tokens_per_s": window_tokens / elapsed}
                if norm is not None:
                    metrics["train/grad_norm"] = float(norm)
                if loaders.text is not None:
                    metrics["train/language_loss"] = language_loss
                tracker.log_metrics(metrics, step)
                if accelerator.is_main_process:  # cluster logs (and runs without MLflow) see the same figures
                    log.info("step %d/%d loss %.4f action_loss %.4f lr %.3g %.1f samples/s %.0f tokens/s", step,
                             cfg.train.steps, loss, action_loss, metrics["train/lr"],
                             metrics["train/samples_per_s"], metrics["train/tokens_per_s"])
                window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
            if stop > 0 or step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                _save(cfg, accelerator, policy, optimizer, scheduler, meta, result, step, tracker)
            if stop > 0 and step < cfg.train.steps:
                log.warning("preempted: checkpoint for step %d written, exiting for requeue", step)
                raise Preempted(step)
    finally:
        bar.close()


def _reduce_dtype(accelerator) -> torch.dtype:
    """float64 for the scalar all-reduces where the backend has it (gloo/CPU), else float32."""
    return torch.float64 if accelerator.device.type == "cpu" else torch.float32


def _all_reduce_mean_max(accelerator, values: torch.Tensor) -> torch.Tensor:
    """Mean of all but the last entry across ranks; max of the last (a stop flag)."""
    if accelerator.num_processes == 1:
        return values
    import torch.distributed as tdist

    t = values.to(accelerator.device, dtype=_reduce_dtype(accelerator))
    means = t[:-1].clone()
    flag = t[-1:].clone()
    tdist.all_reduce(means, op=tdist.ReduceOp.SUM)
    tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    return torch.cat([means / accelerator.num_processes, flag]).cpu().double()


def _mean_valid_steps(accelerator, masks: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """Unpadded steps of one optimizer step's whole batch (all ranks, all micro-batches) divided by
    ranks x micro-batches: normalising every micro-batch's action loss by it makes the step's loss
    and gradient exactly those of one big batch (None when there is a single micro-batch)."""
    parts = accelerator.num_processes * len(masks)
    if parts == 1:
        return None
    count = sum(m.sum() for m in masks).to(_reduce_dtype(accelerator))
    if accelerator.num_processes > 1:
        import torch.distributed as tdist

        tdist.all_reduce(count, op=tdist.ReduceOp.SUM)
    return count / parts


def _engine_grad_norm(policy) -> Optional[float]:
    """DeepSpeed clips inside its engine; read the norm it computed."""
    get = getattr(policy, "get_global_grad_norm", None)
    value = get() if get is not None else None
    return None if value is None else float(value)


def build_arg_parser(prog: str = "lamo-scale train") -> argparse.ArgumentParser:
    """The ``train`` command line: a recipe plus ``key=value`` overrides (all listed in --help)."""
    from lamo_scale.config import describe_options

    lines = [f"  {key:<32} {tp:<28} default {default}\n      {doc}" for key, tp, default, doc in describe_options()]
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a LaMo policy from a recipe, with dotted overrides (key=value).",
        epilog="options (set in the recipe YAML or as key=value overrides):\n" + "\n".join(lines))
    parser.add_argument("--config", "-c", action="append",
                        help="recipe YAML path or packaged recipe name (lamo-scale recipes); repeat to merge "
                             "left to right, e.g. --config paper/hopper-medium-r0.1-lamo --config ablations/no-language")
    parser.add_argument("--resume", help="checkpoint or run dir to resume ('auto': latest in the run dir)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200 model.lora.rank=8")
    return parser


def setup_logging() -> None:
    """Plain timestamped logs on stderr (progress bars stay on their own line)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "alembic", "mlflow", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to static destruction, a
    rank's gloo/DeepSpeed threads were seen to abort the process ("terminate called without an
    active exception", SIGABRT) after a 2-rank ZeRO-3 run had finished and saved."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: Optional[list[str]] = None, prog: str = "lamo-scale train") -> int:
    """Entry point of ``accelerate launch -m lamo_scale.train`` and ``lamo-scale train``."""
    args = build_arg_parser(prog).parse_args(argv)
    setup_logging()
    overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
    from lamo_scale.data.trajectories import DatasetNotFoundError
    from lamo_scale.model import BackboneError

    try:
        cfg = load_config(args.config, overrides)
        result = train(cfg)
        summary = {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint), "mlflow_run_id": result.run_id,
                   "steps": result.steps_done, "final_loss": result.losses[-1] if result.losses else None}
        print(json.dumps(summary), flush=True)
        return 0
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (DatasetNotFoundError, BackboneError, ckpt.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 3
    finally:
        _close_process_group()  # after the summary line, so the ranks still print it in their own time


def _exit_skipping_teardown(rc: int) -> None:
    """Exit a rank of a multi-process launch without interpreter teardown. Everything is on disk
    by now (checkpoints renamed into place, the MLflow run terminated by its client, the summary
    printed); in teardown a rank of a finished 2-rank ZeRO-3 run still aborted now and then even
    after ``destroy_process_group`` ("terminate called without an active exception": a C++
    thread destroyed while joinable), which fails the launch although the run is complete."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(rc)


if __name__ == "__main__":
    exit_code = main(prog="accelerate launch -m lamo_scale.train")
    if dist.launched_world_size() > 1:
        _exit_skipping_teardown(exit_code)
    sys.exit(exit_code)
