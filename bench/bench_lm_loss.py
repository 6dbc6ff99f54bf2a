"""The language-model loss over the LM head: fused chunked cross-entropy vs full-vocabulary logits.

    .venv/bin/python bench/bench_lm_loss.py --out bench/results/lm_loss-cpu.json | tee bench/results/lm_loss-cpu.txt

Shapes: GPT-2 small's head (768 -> 50,257, tied, frozen as under LoRA) on the co-training text
batch of the paper's recipe (2 x 1,024 tokens), and SmolLM2-135M's (576 -> 49,152) on the
quickstart's (1 x 128). Forward + backward of the loss w.r.t. the hidden states, in fp32 and under
bf16 autocast, interleaved (one of each in turn, order rotated every repeat), median seconds:

- ``full logits``  what ``causal_lm(input_ids, labels=...)`` computes: the head on every row,
                   logits upcast to fp32, ``cross_entropy``, autograd keeps them for backward;
- ``fused``        ``lamo_scale.model.lm_loss`` (512-row chunks, gradients made in the forward;
                   the trainer takes this path only above one chunk of rows, so not at the
                   quickstart's 1 x 128, which the table shows for that reason); on CPU it writes
                   each chunk's logits 1,024 vocabulary columns at a time (``CPU_VOCAB_BLOCK``);
- ``fused, 1 GEMM`` the same with one GEMM per chunk (the block size set past the vocabulary): the
                   A/B for the column blocks.

Also printed: the fp32 logit bytes the full path holds at once, and the fraction of the matmul
peak (measured in the same run) each reaches, counting the frozen head's 2 matmuls (forward and
grad of hidden; no weight gradient, and the fused path adds none) as 2 x 2 x rows x hidden x vocab
FLOP.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

import torch  # noqa: E402

from lamo_scale.model import lm_loss  # noqa: E402
from lamo_scale.model.lm_loss import _FusedLinearCrossEntropy  # noqa: E402

SHAPES = {"gpt2-small, 2 x 1024": (2048, 768, 50257), "smollm2-135m, 1 x 128": (128, 576, 49152)}


def _full(hidden, weight, labels):
    logits = torch.nn.functional.linear(hidden, weight).float()
    return torch.nn.functional.cross_entropy(logits, labels)


def _fused(hidden, weight, labels):
    return _FusedLinearCrossEntropy.apply(hidden, weight, None, labels, 512)


def _fused_one_gemm(hidden, weight, labels):
    block = lm_loss.CPU_VOCAB_BLOCK
    lm_loss.CPU_VOCAB_BLOCK = weight.shape[0]
    try:
        return _fused(hidden, weight, labels)
    finally:
        lm_loss.CPU_VOCAB_BLOCK = block


CONTENDERS = {"full logits": _full, "fused": _fused, "fused, 1 GEMM": _fused_one_gemm}


def main() -> None:
    """Time each contender on each shape and precision; print the table and ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = _common.machine_info()
    print(_common.machine_line(info))
    peaks = {p: _common.matmul_peak(p) for p in ("float32", "bfloat16")}
    print("matmul peak: " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    rows = []
    for shape_name, (n, h, v) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        weight = (torch.randn(v, h, generator=g) * 0.02)
        labels = torch.randint(0, v, (n,), generator=g)
        base = torch.randn(n, h, generator=g)
        for precision in ("float32", "bfloat16"):
            w = weight.to(getattr(torch, precision))
            times = {name: [] for name in CONTENDERS}
            losses = {}
            for rep in range(args.repeats + 1):
                order = list(times)[rep % len(times):] + list(times)[:rep % len(times)]
                for name in order:
                    fn = CONTENDERS[name]
                    hidden = base.clone().requires_grad_(True)
                    t0 = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                        loss = fn(hidden, w, labels)
                    loss.backward()
                    if rep > 0:  # the first round warms up
                        times[name].append(time.perf_counter() - t0)
                    losses[name] = loss.item()
            flop = 2 * 2 * n * h * v  # frozen head: forward + grad of hidden, no weight grad
            full_s = _common.median(times["full logits"])
            for name in CONTENDERS:
                sec = _common.median(times[name])
                rows.append({"shape": shape_name, "precision": precision, "contender": name, "seconds": sec,
                             "speedup": full_s / sec, "peak_fraction": flop / sec / peaks[precision],
                             "logit_MB_held": (n * v * 4 / 2 ** 20) if name == "full logits" else min(n, 512) * v * 4 / 2 ** 20,
                             "loss": losses[name]})
    print(_common.table(rows, [("shape", "shape"), ("precision", "precision"), ("contender", "contender"),
                               ("seconds", "s (median)"), ("speedup", "x full"), ("peak_fraction", "of peak"),
                               ("logit_MB_held", "fp32 logits MB"), ("loss", "loss")]))
    _common.save_json(args.out, {"machine": info, "matmul_peak_flops": peaks, "rows": rows})


if __name__ == "__main__":
    main()
