"""Where the co-training step's time goes: torch.profiler on lamo_scale's step of bench_vs_official's
configuration (GPT-2 small random init, LoRA r16, batch 64 x K 20, λ 0.1 with 2 x 1,024 text tokens,
fp32), with three attention set-ups: GPT-2's own attention dropout 0.1 under plain ``sdpa`` (CPU
SDPA's math path: the full [B, H, T, T] probabilities, a bernoulli mask over all of them), the same
dropout under ``blocked_sdpa`` (the recipe's; lamo_scale/model/attention.py), and dropout 0 under
``sdpa`` (the fused kernel; not the paper's setting).

    .venv/bin/python bench/profile_cotrain_step.py --threads 2 | tee bench/results/profile_cotrain-cpu.txt

Prints, per contender, the step time (median of ``--repeats`` after one warm-up, interleaved)
and the top operators by self CPU time of one profiled step. Residual and embedding dropout stay
0.1 in all three.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_train_step as bts  # noqa: E402
import bench_vs_official as bvo  # noqa: E402


def main() -> None:
    """Build the contenders, time them interleaved, profile one step of each."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(_common.machine_line(_common.machine_info()), flush=True)
    backbone = bvo.gpt2_small_dir(Path(tempfile.mkdtemp()))
    batch = bts.make_batch(64, 20, 0)
    text = torch.randint(0, bvo.VOCAB, bvo.TEXT_SHAPE, generator=torch.Generator().manual_seed(7))
    contenders = {}
    setups = {"sdpa, attention dropout 0.1": ("model.attn_implementation=sdpa",),
              "blocked_sdpa, attention dropout 0.1": ("model.attn_implementation=blocked_sdpa",),
              "sdpa, attention dropout 0": ("model.attn_implementation=sdpa", "model.attention_dropout=0")}
    for name, extra in setups.items():
        lamo, *_ = bvo.build_lamo_side(backbone, batch, text, 20, seed=0, extra=extra, precisions=("fp32",))
        contenders[name] = next(c for c in lamo if c.with_lm)
    for c in contenders.values():
        c.step()  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, c in contenders.items():
            times[name].append(c.step())
    for name, c in contenders.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            c.step()
        print(f"\n## {name}: {statistics.median(times[name]):.2f} s/step (median of {args.repeats})")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
    medians = {name: statistics.median(v) for name, v in times.items()}
    slow = medians["sdpa, attention dropout 0.1"]
    print()
    for name, t in medians.items():
        print(f"{name}: {t:.2f} s/step, {slow / t:.2f}x faster than sdpa with dropout 0.1")


if __name__ == "__main__":
    main()
