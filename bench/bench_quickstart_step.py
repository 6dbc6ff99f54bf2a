"""The quickstart's training step, today vs an earlier commit, side by side (issue 12).

    .venv/bin/python bench/bench_quickstart_step.py --baseline-rev 1e2defd --threads 2 \
        --out bench/results/quickstart_step-cpu.json | tee bench/results/quickstart_step-cpu.txt

Both contenders run the real entry point (``python -m lamo_scale.cli train``) from their own
source tree (the baseline from a ``git worktree`` of ``--baseline-rev``, this checkout for today),
with the same explicit settings — the quickstart's: SmolLM2-135M frozen in bf16 + LoRA r16, K 5,
batch 16, language loss 0.1 on 1 × 128 tokens of the same text file, bf16 autocast, eager
attention, lamo/reacher2d/medium-v1 — and the same venv. A run's wall time includes start-up (imports,
loading the backbone, reading the data) and one final checkpoint; the per-step time is taken from
two lengths, ``(T(long) − T(short)) / (long − short)``, so both cancel. The runs are interleaved
(short and long of each contender in turn, the order flipped every repeat) and the median over
repeats is reported. FLOPs per step (frozen base + LoRA: 4·N·tokens for the blocks, N without the
embeddings; 4·V·d per text token for the LM head; attention left out: 15- and 128-token
sequences) are divided by the bf16 2048² matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402

TEXT_GZ = ROOT / "tests" / "data" / "english_text.txt.gz"  # the tests' fixed English text
K, BATCH, TEXT_TOKENS = 5, 16, 128


def settings(tmp: Path, name: str, steps: int, threads: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The quickstart's settings, spelled out so both trees train the same thing."""
    return ["--config", "quickstart", "model.backbone=smollm2-135m", "model.dtype=bfloat16",
            "model.attn_implementation=eager", "model.lora.rank=16", "model.lora.dropout=0.0",
            "data.dataset=lamo/reacher2d/medium-v1", f"data.context_len={K}", "data.rtg_scale=10",
            f"text.source={tmp / 'english_text.txt'}", f"text.block_size={TEXT_TOKENS}", "text.batch_size=1",
            "loss.language_weight=0.1", f"train.steps={steps}", f"train.batch_size={BATCH}",
            "train.mixed_precision=bf16", "train.warmup_steps=5", f"train.checkpoint_every={10 * steps}",
            f"train.log_every={steps}", f"train.threads={threads}", f"train.output_dir={tmp}/runs/{name}-{steps}",
            f"tracking.uri=sqlite:///{tmp}/{name}.db", f"tracking.run_name={name}-{steps}-{time.time_ns()}", *extra]


def timed_run(tree: Path, tmp: Path, name: str, steps: int, threads: int, extra: tuple[str, ...] = ()) -> float:
    """Wall seconds of one training run from ``tree``'s sources (``extra``: further overrides)."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "lamo_scale.cli", "train", *settings(tmp, name, steps, threads, extra)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{name} ({steps} steps) failed:\n{proc.stderr[-3000:]}")
    return wall


def step_flops() -> float:
    """Model FLOPs of one quickstart step (see the module docstring)."""
    from transformers import AutoConfig

    from lamo_scale.model.backbone import KNOWN_BACKBONES

    cfg = AutoConfig.from_pretrained(KNOWN_BACKBONES["smollm2-135m"]())
    d, layers, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    block = d * d * 2 + 2 * d * kv + 3 * d * inter
    tokens = 3 * K * BATCH + TEXT_TOKENS
    return 4.0 * layers * block * tokens + 4.0 * vocab * d * TEXT_TOKENS


def main() -> None:
    """Run the interleaved timings and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", default="1e2defd", help="git revision of the baseline tree")
    parser.add_argument("--steps", default="10,40", help="short,long run lengths")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], metavar="OVERRIDE",
                        help="add a third contender: today's tree with these overrides (repeatable), "
                             "e.g. --variant train.compile=true")
    parser.add_argument("--out", help="write the raw numbers as JSON here")
    args = parser.parse_args()
    _common.offline_env()
    info = _common.machine_info()
    print(_common.machine_line(info), flush=True)
    short, long = (int(x) for x in args.steps.split(","))
    import torch

    torch.set_num_threads(args.threads)
    peaks = [_common.matmul_peak("bfloat16")]
    with tempfile.TemporaryDirectory(prefix="qs-step-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "english_text.txt").write_bytes(gzip.decompress(TEXT_GZ.read_bytes()))
        base_tree = tmp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.baseline_rev], cwd=ROOT,
                       check=True, capture_output=True)
        # display name -> (source tree, extra overrides, slug for its run dirs and MLflow store)
        trees = {"today": (ROOT, (), "today"), f"baseline {args.baseline_rev}": (base_tree, (), "baseline")}
        if args.variant:
            trees["today + " + " ".join(args.variant)] = (ROOT, tuple(args.variant), "variant")
        try:
            walls: dict[str, dict[int, list[float]]] = {n: {short: [], long: []} for n in trees}
            for rep in range(args.repeats):
                order = list(trees) if rep % 2 == 0 else list(reversed(trees))
                for steps in (short, long):
                    for name in order:
                        tree, extra, slug = trees[name]
                        wall = timed_run(tree, tmp, slug, steps, args.threads, extra)
                        walls[name][steps].append(wall)
                        print(f"repeat {rep}: {name:20s} {steps:3d} steps {wall:6.1f} s", flush=True)
                peaks.append(_common.matmul_peak("bfloat16"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    peak = max(peaks)
    flops = step_flops()
    per_step = {n: statistics.median((w[long][i] - w[short][i]) / (long - short) for i in range(args.repeats))
                for n, w in walls.items()}
    print(f"\nbf16 matmul peak (2048², {args.threads} threads, best in run): {peak / 1e9:.0f} GFLOP/s; "
          f"model FLOPs per step {flops / 1e9:.1f} G")
    print("| contender | s/step (median) | × baseline | % of bf16 peak |")
    print("|---|---|---|---|")
    base = per_step[f"baseline {args.baseline_rev}"]
    for name, sec in per_step.items():
        print(f"| {name} | {sec:.3f} | {base / sec:.2f} | {100 * flops / sec / peak:.1f} % |")
    _common.save_json(args.out, {"machine": info, "args": vars(args), "walls": walls, "per_step_s": per_step,
                                 "flops_per_step": flops, "bf16_peak_flops": peak})


if __name__ == "__main__":
    main()
