"""Training-step throughput: the LaMo step vs Hugging Face ``DecisionTransformerModel``.

    .venv/bin/python bench/bench_train_step.py --sizes tiny,small --repeats 3 --batch 64 \
        --out bench/results/train_step-cpu.json | tee bench/results/train_step-cpu.txt

One optimizer step = forward + backward + grad-clip (0.25) + AdamW (lr 1e-4, wd 1e-5) on
random segments of K=20 (state_dim 11, act_dim 3, like Hopper), batch 64. Contenders, per
size and precision, built once and then timed *interleaved* (one step of each in turn,
the order rotated every repeat) so that other load on the machine hits them alike:

- ``lamo+lm``   LaMo: frozen random-init GPT-2 backbone + LoRA (r16, c_attn) + MLP embeddings
                and MLP action head, plus the language loss (λ 0.1) on a text batch of
                2 × 1024 random byte tokens (tiny-gpt2 has a 257-token byte vocabulary).
- ``lamo``      the same without the language loss (``text_ids=None``: no LM forward at all).
- ``lamo+lm/bf16w`` (bf16 only) as ``lamo+lm`` with the frozen backbone *stored* in bfloat16
                (``model.dtype=bfloat16``); adapters, embeddings and heads stay float32.
- ``hf-dt``     ``transformers.DecisionTransformerModel`` (GPT-2 inside), same hidden size,
                layers and heads, full fine-tuning, masked action MSE.

Precisions: ``fp32`` and ``bf16`` (``torch.autocast("cpu", torch.bfloat16)``).
Sizes: ``tiny`` = 3 layers × 128 wide × 1 head (official DT gym size); ``small`` = GPT-2
small, 12 layers × 768 × 12 heads.

FLOP convention (printed with the results): tokens = 3·K·batch for the RL segments and
2·1024 for the text; N = weights of the transformer blocks (no embeddings; the LM head,
257 × d, is added on the text path). Frozen backbone + LoRA: 4·N·tokens (forward 2N +
backward through the activations 2N, no weight gradients); full fine-tune: 6·N·tokens.
Attention scores/values add 3 × 4·L·d·T² per sequence of T tokens (forward + a backward
twice as large). Embedding MLPs, heads, LoRA matmuls, layer norms and the optimizer are
left out (< 2 % at GPT-2 size). Achieved FLOP/s is divided by the 2048² matmul rate of
the same dtype, measured in the same run (best of 5 before and after the timings and best of 3 between every round; the highest
rate seen is the peak).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZES = {"tiny": (3, 128, 1), "small": (12, 768, 12)}
STATE_DIM, ACT_DIM = 11, 3
TEXT_SHAPE = (2, 1024)
LANGUAGE_WEIGHT = 0.1


def block_params(blocks: torch.nn.Module) -> int:
    """Weights of the transformer blocks, LoRA adapters excluded."""
    return sum(p.numel() for name, p in blocks.named_parameters() if "lora_" not in name)


def attention_flops(layers: int, width: int, seq_len: int, sequences: int) -> float:
    """Forward + backward FLOPs of the attention score/value matmuls (see module doc)."""
    return 3 * 4 * layers * width * seq_len ** 2 * sequences


class Contender:
    """One model + optimizer + how to compute its loss, timed step by step."""

    def __init__(self, name: str, precision: str, model: torch.nn.Module, loss_fn, flops: float,
                 trainable: int, total: int):
        self.name, self.precision, self.model, self.loss_fn = name, precision, model, loss_fn
        self.flops, self.trainable, self.total = flops, trainable, total
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-5)
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self) -> float:
        """One timed optimizer step; returns seconds."""
        self.model.train()
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
               else contextlib.nullcontext())
        t0 = time.perf_counter()
        with ctx:
            loss = self.loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 0.25)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        self.losses.append(float(loss.detach()))
        return dt


def make_batch(batch: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random Hopper-shaped segments, a quarter of them left-padded like episode starts."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, k, dtype=torch.long)
    for i in range(batch // 4):
        mask[i, : int(torch.randint(1, k, (1,), generator=g))] = 0
    start = torch.randint(0, 900, (batch, 1), generator=g)
    return {
        "states": torch.randn(batch, k, STATE_DIM, generator=g) * mask[..., None],
        "actions": (torch.rand(batch, k, ACT_DIM, generator=g) * 2 - 1) * mask[..., None],
        "returns_to_go": torch.randn(batch, k, 1, generator=g) * mask[..., None],
        "timesteps": (start + torch.arange(k)) * mask,
        "attention_mask": mask,
    }


def build_lamo(size: str, precision: str, batch: dict, k: int, with_lm: bool, bf16_weights: bool,
               seed: int) -> Contender:
    from lamo_scale.config import load_config
    from lamo_scale.model.policy import build_policy

    layers, width, heads = SIZES[size]
    cfg = load_config(None, ["model.backbone=tiny-gpt2", "model.pretrained=false",
                             f"model.tiny_layers={layers}", f"model.tiny_width={width}",
                             f"model.tiny_heads={heads}",
                             f"model.dtype={'bfloat16' if bf16_weights else 'float32'}"])
    policy, _ = build_policy(cfg.model, STATE_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM), seed=seed)
    text = torch.randint(0, 257, TEXT_SHAPE, generator=torch.Generator().manual_seed(seed + 7))
    n = block_params(policy.transformer.h)
    rl_tokens = 3 * k * batch["states"].shape[0]
    flops = 4 * n * rl_tokens + attention_flops(layers, width, 3 * k, batch["states"].shape[0])
    if with_lm:
        n_head = policy.causal_lm.get_output_embeddings().weight.numel()
        flops += 4 * (n + n_head) * text.numel() + attention_flops(layers, width, TEXT_SHAPE[1], TEXT_SHAPE[0])

    def loss_fn():
        out = policy(**batch, text_ids=text if with_lm else None,
                     language_weight=LANGUAGE_WEIGHT if with_lm else 0.0)
        return out["loss"]

    trainable, total = policy.parameter_counts()
    name = "lamo+lm" if with_lm else "lamo"
    if bf16_weights:
        name += "/bf16w"
    return Contender(name, precision, policy, loss_fn, flops, trainable, total)


def build_hf_dt(size: str, precision: str, batch: dict, k: int, seed: int) -> Contender:
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    layers, width, heads = SIZES[size]
    torch.manual_seed(seed)
    config = DecisionTransformerConfig(state_dim=STATE_DIM, act_dim=ACT_DIM, hidden_size=width, n_layer=layers,
                                       n_head=heads, max_ep_len=1000, action_tanh=True)
    model = DecisionTransformerModel(config)
    mask = batch["attention_mask"]

    def loss_fn():
        out = model(states=batch["states"], actions=batch["actions"], rewards=None,
                    returns_to_go=batch["returns_to_go"], timesteps=batch["timesteps"],
                    attention_mask=mask, return_dict=True)
        m = mask[..., None].to(torch.float32)
        err = ((out.action_preds.float() - batch["actions"]) ** 2) * m
        return err.sum() / (m.sum() * ACT_DIM)

    n = block_params(model.encoder.h)
    b = batch["states"].shape[0]
    flops = 6 * n * 3 * k * b + attention_flops(layers, width, 3 * k, b)
    total = sum(p.numel() for p in model.parameters())
    return Contender("hf-dt", precision, model, loss_fn, flops, total, total)


def run_size(size: str, args, peaks: dict) -> list[dict]:
    batch = make_batch(args.batch, args.context_len, args.seed)
    contenders: list[Contender] = []
    for precision in args.precisions:
        if not args.no_lm:
            contenders.append(build_lamo(size, precision, batch, args.context_len, True, False, args.seed))
        contenders.append(build_lamo(size, precision, batch, args.context_len, False, False, args.seed))
        if precision == "bf16" and args.bf16_weights and not args.no_lm:
            contenders.append(build_lamo(size, precision, batch, args.context_len, True, True, args.seed))
        contenders.append(build_hf_dt(size, precision, batch, args.context_len, args.seed))
    warmup = args.warmup_small if size == "small" and args.warmup_small is not None else args.warmup
    print(f"\n[{size}] {len(contenders)} contenders; warm-up ({warmup} step each) ...", flush=True)
    for c in contenders:
        for _ in range(warmup):
            c.step()
    repeats = args.repeats_tiny if size == "tiny" and args.repeats_tiny else args.repeats
    for r in range(repeats):
        shift = r % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            c.times.append(c.step())
        for d in peaks:  # sample the matmul peak between rounds too: load on the machine varies
            peaks[d] = max(peaks[d], _common.matmul_peak(d, reps=3))
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{c.name}/{c.precision} {c.times[-1]:.3f}s"
                                                             for c in contenders), flush=True)
    rows = []
    for c in contenders:
        med = _common.median(c.times)
        ref = next(h for h in contenders if h.name == "hf-dt" and h.precision == c.precision)
        rows.append({
            "size": size, "contender": c.name, "precision": c.precision, "s_per_step": med,
            "s_min": min(c.times), "s_max": max(c.times), "samples_per_s": args.batch / med,
            "tflop_per_step": c.flops / 1e12, "gflop_per_s": c.flops / med / 1e9,
            "frac_of_peak": c.flops / med / peaks["float32" if c.precision == "fp32" else "bfloat16"],
            "speedup_vs_hf_dt": _common.median(ref.times) / med,
            "trainable_params": c.trainable, "total_params": c.total, "times": c.times,
            "first_loss": c.losses[0], "last_loss": c.losses[-1],
        })
    # same contender, bf16 vs fp32
    for row in rows:
        if row["precision"] == "bf16":
            twin = next((x for x in rows if x["contender"] == row["contender"].replace("/bf16w", "")
                         and x["precision"] == "fp32"), None)
            if twin:
                row["speedup_vs_own_fp32"] = twin["s_per_step"] / row["s_per_step"]
    del contenders
    gc.collect()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,small", help="comma list of: tiny, small")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per contender (after warm-up)")
    p.add_argument("--repeats-tiny", type=int, default=10,
                   help="timed steps per contender at tiny size (steps are short and noisy); 0 = --repeats")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per contender first")
    p.add_argument("--warmup-small", type=int, default=None, help="untimed steps per contender at small size "
                   "(default: --warmup)")
    p.add_argument("--batch", type=int, default=64, help="segments per step")
    p.add_argument("--context-len", type=int, default=20, help="K, timesteps per segment")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of: fp32, bf16")
    p.add_argument("--no-lm", action="store_true", help="skip the language-loss contenders")
    p.add_argument("--no-bf16-weights", dest="bf16_weights", action="store_false",
                   help="skip the lamo+lm/bf16w contender (frozen backbone stored in bf16)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the raw results as JSON here")
    args = p.parse_args(argv)
    args.precisions = [x for x in args.precisions.split(",") if x]
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging
    logging.disable(logging.WARNING)

    info = _common.machine_info()
    print(_common.machine_line(info))
    peaks_before = {d: _common.matmul_peak(d) for d in ("float32", "bfloat16")}
    print("matmul 2048² (before): " + ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in peaks_before.items()))
    rows = []
    peaks_seen = dict(peaks_before)
    for size in [s for s in args.sizes.split(",") if s]:
        rows += run_size(size, args, peaks_seen)
    peaks_after = {d: _common.matmul_peak(d) for d in ("float32", "bfloat16")}
    print("matmul 2048² (after):  " + ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in peaks_after.items()))
    peaks = {d: max(peaks_seen[d], peaks_after[d]) for d in peaks_before}
    for row in rows:
        row["frac_of_peak"] = row["gflop_per_s"] * 1e9 / peaks["float32" if row["precision"] == "fp32" else "bfloat16"]

    print(f"\nbatch {args.batch}, K {args.context_len}, state_dim {STATE_DIM}, act_dim {ACT_DIM}; "
          f"median of interleaved steps ({args.repeats_tiny or args.repeats} tiny, {args.repeats} small); peak = best 2048² matmul "
          f"(fp32 {peaks['float32'] / 1e9:.0f}, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s)")
    print(_common.table(rows, [("size", "size"), ("contender", "contender"), ("precision", "prec"),
                               ("s_per_step", "s/step"), ("samples_per_s", "samples/s"),
                               ("tflop_per_step", "TFLOP/step"), ("gflop_per_s", "GFLOP/s"),
                               ("frac_of_peak", "of peak"), ("speedup_vs_hf_dt", "x vs hf-dt"),
                               ("speedup_vs_own_fp32", "x vs own fp32"),
                               ("trainable_params", "trainable"), ("total_params", "params")]))
    print("FLOPs: frozen+LoRA 4·N·tokens, full 6·N·tokens, N = block weights (+LM head on text), "
          "+ attention 3·4·L·d·T² per sequence; tokens = 3·K·batch (+ 2·1024 text).")
    _common.save_json(args.out, {"machine": info, "args": vars(args), "peaks_before": peaks_before,
                                 "peaks_after": peaks_after, "peaks": peaks, "rows": rows})


if __name__ == "__main__":
    main()
