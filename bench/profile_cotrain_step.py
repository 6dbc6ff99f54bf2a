"""Where the co-training step's time goes: torch.profiler on lamo_scale's step of bench_vs_official's
configuration (GPT-2 small random init, LoRA r16, batch 64 x K 20, λ 0.1 with 2 x 1,024 text tokens,
fp32), with the backbone's attention-probability dropout as the recipe has it (0.1) and at 0
(``model.attention_dropout``).

    .venv/bin/python bench/profile_cotrain_step.py --threads 2 | tee bench/results/profile_cotrain-cpu.txt

Prints, per contender, the step time (median of ``--repeats`` after one warm-up, interleaved)
and the top operators by self CPU time of one profiled step. Dropout in attention forces SDPA's
math path on CPU (a bernoulli mask and the [B, H, T, T] probabilities materialised); at 0 the
fused kernel runs. Both are the same model otherwise; residual and embedding dropout stay 0.1.
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
    for p in (0.1, 0.0):  # 0.1 is GPT-2's own rate; the switch is model.attention_dropout
        lamo, *_ = bvo.build_lamo_side(backbone, batch, text, 20, seed=0, extra=(f"model.attention_dropout={p}",))
        contenders[f"attention dropout {p}"] = next(c for c in lamo if c.precision == "fp32" and c.with_lm)
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
    a, b = (statistics.median(v) for v in times.values())
    print(f"\nattention dropout 0.1 / 0: {a / b:.2f}x the step time")


if __name__ == "__main__":
    main()
