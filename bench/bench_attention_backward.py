"""The co-training step with the hand-written attention backward and the packed-gradient buffer,
against the same step left to autograd, side by side on one model.

    .venv/bin/python bench/bench_attention_backward.py --out bench/results/attention_backward-cpu.json \
        | tee bench/results/attention_backward-cpu.txt

The paper's LaMo step as bench_vs_official.py builds it (recipe ``paper/hopper-medium-r1-lamo`` on a
random-init GPT-2 small: ``blocked_sdpa`` with attention dropout 0.1, packing on, batch 64 x K 20,
λ 0.1 with 2 x 1,024 text tokens), fp32 and bf16 (base stored in bf16, autocast). Each policy is
timed in two modes in turn, same model and batch, order alternated every round:

- ``hand-written``: what training runs (lamo_scale/model/attention.py ``_BlockedCausalAttention``,
  lamo_scale/model/packing.py ``split_segments``);
- ``autograd``: ``blocked_causal_attention_reference`` (the same blocks and draws, backward by
  autograd: every block's slice of q, k, v comes back as a zero-filled full-size tensor) and
  plain indexing for the packed segments.

Median of ``--repeats`` after a warm-up step of each.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

import torch  # noqa: E402

import bench_train_step as bts  # noqa: E402
import bench_vs_official as bvo  # noqa: E402
from lamo_scale.model import attention, packing  # noqa: E402

HAND_WRITTEN = (attention.blocked_causal_attention, packing.split_segments)
AUTOGRAD = (attention.blocked_causal_attention_reference,
            lambda states, segments: tuple(seg.take(states) for seg in segments))


def set_mode(hand_written: bool) -> None:
    """Point the attention dispatch and the packing wrapper at one implementation or the other."""
    attention.blocked_causal_attention, packing.split_segments = HAND_WRITTEN if hand_written else AUTOGRAD


def main() -> None:
    """Time both modes on the λ 0.1 step in fp32 and bf16, interleaved; print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = _common.machine_info()
    print(_common.machine_line(info), flush=True)
    backbone = bvo.gpt2_small_dir(Path(tempfile.mkdtemp()))
    batch = bts.make_batch(64, 20, 0)
    text = torch.randint(0, bvo.VOCAB, bvo.TEXT_SHAPE, generator=torch.Generator().manual_seed(7))
    contenders, *_ = bvo.build_lamo_side(backbone, batch, text, 20, seed=0)
    rows = []
    for c in (c for c in contenders if c.with_lm):
        times = {"hand-written": [], "autograd": []}
        for rep in range(args.repeats + 1):
            order = list(times) if rep % 2 == 0 else list(times)[::-1]
            for mode in order:
                set_mode(mode == "hand-written")
                dt = c.step()
                if rep > 0:  # the first round warms up
                    times[mode].append(dt)
                print(f"  {c.name} {c.precision} {mode}: {dt:.2f} s", flush=True)
        set_mode(True)
        new, old = _common.median(times["hand-written"]), _common.median(times["autograd"])
        rows.append({"contender": c.name, "precision": c.precision, "autograd_s": old, "hand_written_s": new,
                     "speedup": old / new, "times": times})
    print(_common.table(rows, [("contender", "step"), ("precision", "prec"), ("autograd_s", "autograd s/step"),
                               ("hand_written_s", "hand-written s/step"), ("speedup", "x autograd")]))
    _common.save_json(args.out, {"machine": info, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
