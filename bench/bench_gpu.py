"""GPU throughput: the LaMo co-training step (tokens/s, MFU) and batched acting, on one CUDA device.

    python bench/bench_gpu.py --tokenizer DIR --out $OUT/gpu.json | tee $OUT/gpu.txt   (bench/gpu.sh runs it)

Backbones, random init from a config written here (no weights needed; ``--tokenizer`` is any
local tokenizer directory, SmolLM2's by default; its ids stay below every vocabulary below):

- ``smollm2-135m``  Llama, 30 x 576, 9 heads / 3 KV heads, MLP 1536, vocab 49,152 (tied), 135 M;
- ``gpt2-xl``       GPT-2, 48 x 1600, 25 heads, vocab 50,257, 1.56 B;
- ``llama-1b``      Llama-3.2-1B's shape: 16 x 2048, 32 / 8 heads, MLP 8192, vocab 128,256 (tied), 1.24 B.

Each is built by ``build_policy`` exactly as training builds it (``model.dtype=bfloat16``: the
frozen base stored in bf16, LoRA r16 + MLP embeddings/head in fp32), on the GPU, and stepped as
the training loop steps it: forward under ``torch.autocast(bfloat16)``, backward, clip 0.25,
fused AdamW. Contenders per backbone, timed interleaved: ``lamo+lm`` (λ 0.1, text 2 x 1,024
tokens) and ``lamo`` (λ 0, no LM forward); batch 64 segments of K 20 (Hopper-shaped random
segments: state 11, act 3).

MFU convention (issue 12, frozen + LoRA): 4·N·tokens (forward 2N, backward through the
activations 2N, no weight gradients), N = backbone block weights, plus the LM head (vocab x d)
on the text tokens; + attention 3·4·L·d·T² per sequence. Printed against the measured bf16
matmul rate (8192³, same run) and against the H100/H200 SXM dense bf16 spec (989.4 TFLOP/s).

Acting (``--act``): ``LaMoReacher2d-v1`` (100-step episodes), K 20, bf16 autocast, the
official-style batch-1 loop vs ``run_episodes`` with N = 1, 32, 128 parallel episodes, and the
env alone; env-steps/s and the speed-up over the batch-1 loop.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402

SPEC_BF16_PEAK = 989.4e12
"""NVIDIA's dense bf16 tensor-core peak for H100 / H200 SXM (FLOP/s)."""

SHAPES = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
    "gpt2-xl": dict(model_type="gpt2", n_layer=48, n_embd=1600, n_head=25, vocab_size=50257, n_positions=1024),
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                     rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
STATE_DIM, ACT_DIM = 11, 3
TEXT_SEQUENCES = 2
LANGUAGE_WEIGHT = 0.1


def make_shape_dir(name: str, root: Path, tokenizer_dir: Path) -> Path:
    """A local backbone directory (config.json + a tokenizer) for ``name``'s shape, random init."""
    import shutil

    from transformers import AutoConfig

    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    fields = dict(SHAPES[name])
    AutoConfig.for_model(fields.pop("model_type"), **fields).save_pretrained(target)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).is_file():
            shutil.copy(tokenizer_dir / f, target / f)
    return target


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int = 8192, reps: int = 10) -> float:
    """Mean bf16 FLOP/s of ``reps`` n³ matmuls after 3 warm-ups."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def block_weights(lm) -> int:
    """Weights of the transformer blocks (no embeddings, no LM head, no LoRA)."""
    return sum(p.numel() for n, p in lm.named_parameters()
               if "lora_" not in n and (".h." in n or ".layers." in n))


def build(backbone_dir: Path, state_dim: int, act_dim: int, args):
    """The LaMo policy on ``backbone_dir`` (random init, bf16 base, LoRA r16), built on the device."""
    from lamo_scale.config import load_config
    from lamo_scale.model.policy import build_policy

    cfg = load_config(None, [f"model.backbone={backbone_dir}", "model.pretrained=false", "model.dtype=bfloat16",
                             "model.attn_implementation=sdpa", "model.lora.dropout=0"])
    with torch.device(args.device):
        policy, _ = build_policy(cfg.model, state_dim, act_dim, -np.ones(act_dim), np.ones(act_dim), seed=args.seed)
    return policy.to(args.device)


def step_bench(name: str, backbone_dir: Path, args) -> list[dict]:
    """Interleaved timed steps of lamo+lm and lamo on one backbone shape."""
    from bench_train_step import make_batch

    dev = args.device
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    policy = build(backbone_dir, STATE_DIM, ACT_DIM, args)
    lm = policy.causal_lm
    cfg = lm.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    width = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_blocks = block_weights(lm)
    n_head = lm.get_output_embeddings().weight.numel()
    batch = {k: v.to(dev) for k, v in make_batch(args.batch, args.context_len, args.seed).items()}
    text_shape = (TEXT_SEQUENCES, args.text_len)
    text = torch.randint(0, 49152, text_shape, device=dev)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5, fused=True)
    rl_tokens = 3 * args.context_len * args.batch
    att = lambda t, seqs: 3 * 4 * layers * width * t ** 2 * seqs  # noqa: E731
    contenders = {
        "lamo+lm": (True, 4 * n_blocks * rl_tokens + att(3 * args.context_len, args.batch)
                    + 4 * (n_blocks + n_head) * text.numel() + att(args.text_len, TEXT_SEQUENCES),
                    rl_tokens + text.numel()),
        "lamo": (False, 4 * n_blocks * rl_tokens + att(3 * args.context_len, args.batch), rl_tokens),
    }

    def one(with_lm: bool) -> tuple[float, float]:
        sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16):
            out = policy(**batch, text_ids=text if with_lm else None,
                         language_weight=LANGUAGE_WEIGHT if with_lm else 0.0)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        return time.perf_counter() - t0, float(out["loss"].detach())

    policy.train()
    for _ in range(args.warmup):
        for with_lm, _, _ in contenders.values():
            one(with_lm)
    times = {c: [] for c in contenders}
    losses = {c: [] for c in contenders}
    for r in range(args.repeats):
        order = list(contenders)[r % 2:] + list(contenders)[:r % 2]
        for c in order:
            dt, loss = one(contenders[c][0])
            times[c].append(dt)
            losses[c].append(loss)
    trainable, total = policy.parameter_counts()
    rows = []
    for c, (_, flops, tokens) in contenders.items():
        med = _common.median(times[c])
        rows.append({"backbone": name, "contender": c, "s_per_step": med, "tokens_per_s": tokens / med,
                     "samples_per_s": args.batch / med, "tflop_per_step": flops / 1e12,
                     "tflop_per_s": flops / med / 1e12, "mfu_vs_measured": flops / med / args.peak,
                     "mfu_vs_spec": flops / med / SPEC_BF16_PEAK, "block_params": n_blocks,
                     "trainable_params": trainable, "total_params": total,
                     "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if dev.startswith("cuda") else None,
                     "times": times[c],
                     "last_loss": losses[c][-1]})
    print(f"  [{name}] " + ", ".join(f"{r['contender']} {r['s_per_step'] * 1e3:.1f} ms/step, "
                                     f"{r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu_vs_spec']:.1%}" for r in rows),
          flush=True)
    del policy, opt
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def act_bench(name: str, backbone_dir: Path, args) -> list[dict]:
    """Batch-1 loop vs run_episodes at N = 1, 32, 128 (and the env alone) on Reacher2d."""
    from bench_eval import ENV_ID, RTG_SCALE, TARGET, env_only, sequential_loop

    from lamo_scale.data.trajectories import StateStats
    from lamo_scale.rollout.acting import ActingSpec, make_eval_env, run_episodes

    probe = make_eval_env(ENV_ID)
    state_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    policy = build(backbone_dir, state_dim, act_dim, args).eval()
    stats = StateStats(np.zeros(state_dim, np.float32), np.ones(state_dim, np.float32))
    k = args.context_len
    spec = ActingSpec(ENV_ID, stats, RTG_SCALE, k, max_episode_steps=args.horizon)
    rows = []

    def timed(label, fn):
        fn()  # warm-up (allocator, kernels, env construction)
        t0 = time.perf_counter()
        steps = fn()
        dt = time.perf_counter() - t0
        rows.append({"backbone": name, "contender": label, "env_steps": steps, "env_steps_per_s": steps / dt})
        print(f"  [{name}] {label}: {steps / dt:,.0f} env-steps/s", flush=True)

    timed("sequential (batch 1)", lambda: sequential_loop(policy, stats, k, 1, args.horizon, args.seed,
                                                           torch.bfloat16, device=args.device)[0])
    for n in args.num_envs:
        timed(f"batched N={n}", lambda n=n: int(sum(run_episodes(
            policy.act, spec, [TARGET], episodes=n, num_envs=n, seed=args.seed, device=args.device, progress=False,
            autocast_dtype=torch.bfloat16, vector_env=args.vector_env)[TARGET].lengths)))
    timed("env only (random actions)", lambda: env_only(2000, args.seed))
    seq = rows[0]["env_steps_per_s"]
    for r in rows:
        r["speedup_vs_sequential"] = None if r["contender"].startswith("env") else r["env_steps_per_s"] / seq
    del policy
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> None:
    """Run the step and acting benches and print their tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="smollm2-135m,gpt2-xl,llama-1b", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--act-backbones", default="smollm2-135m,gpt2-xl", help="backbones for the acting bench ('' = none)")
    p.add_argument("--tokenizer", default=str(Path.home() / ".cache/lamo_scale/backbones/smollm2-135m"),
                   help="a local tokenizer directory copied into each shape's directory")
    p.add_argument("--shape-root", default="/tmp/lamo_gpu_shapes", help="where the shape directories are written")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context-len", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--num-envs", default="1,32,128", help="parallel episodes for the batched acting contenders")
    p.add_argument("--vector-env", default="sync", choices=["sync", "async"],
                   help="how the batched contenders step their envs (eval.vector_env)")
    p.add_argument("--horizon", type=int, default=100, help="steps per acting episode (Reacher2d's full 100)")
    p.add_argument("--text-len", type=int, default=1024, help="tokens per text sequence (2 sequences)")
    p.add_argument("--device", default="cuda", help="cuda (the bench), or cpu for a smoke run with small settings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the raw results as JSON here")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device (use --device cpu for a smoke run)")
    args.num_envs = [int(n) for n in args.num_envs.split(",") if n]
    info = _common.machine_info()
    info["gpu"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    print(_common.machine_line(info) + f", GPU {info['gpu']}")
    args.peak = matmul_peak(args.device, 8192 if args.device.startswith("cuda") else 1024)
    print(f"bf16 matmul 8192³: {args.peak / 1e12:.0f} TFLOP/s (spec dense bf16 {SPEC_BF16_PEAK / 1e12:.0f})", flush=True)
    root, tok = Path(args.shape_root), Path(args.tokenizer)
    step_rows, act_rows = [], []
    for name in [b for b in args.backbones.split(",") if b]:
        step_rows += step_bench(name, make_shape_dir(name, root, tok), args)
    for name in [b for b in args.act_backbones.split(",") if b]:
        act_rows += act_bench(name, make_shape_dir(name, root, tok), args)
    peak_after = matmul_peak(args.device, 8192 if args.device.startswith("cuda") else 1024)
    print(f"\nco-training step: batch {args.batch}, K {args.context_len}, text {TEXT_SEQUENCES}x{args.text_len} (λ 0.1) "
          f"or none (λ 0); bf16 autocast, frozen bf16 base + LoRA r16; median of {args.repeats} interleaved steps")
    print(_common.table(step_rows, [("backbone", "backbone"), ("contender", "contender"), ("s_per_step", "s/step"),
                                    ("tokens_per_s", "tokens/s"), ("tflop_per_s", "TFLOP/s"),
                                    ("mfu_vs_spec", "MFU (spec)"), ("mfu_vs_measured", "of matmul"),
                                    ("peak_mem_gib", "peak GiB"), ("total_params", "params")]))
    if act_rows:
        print(f"\nacting: LaMoReacher2d-v1, {args.horizon}-step episodes, K {args.context_len}, bf16 autocast")
        print(_common.table(act_rows, [("backbone", "backbone"), ("contender", "contender"),
                                       ("env_steps_per_s", "env-steps/s"), ("speedup_vs_sequential", "x batch-1")]))
    print(f"bf16 matmul after: {peak_after / 1e12:.0f} TFLOP/s")
    _common.save_json(args.out, {"machine": info, "args": {k: v for k, v in vars(args).items()},
                                 "matmul_peak_before": args.peak, "matmul_peak_after": peak_after,
                                 "step": step_rows, "act": act_rows})


if __name__ == "__main__":
    main()
