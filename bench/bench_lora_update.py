"""The LoRA update inside one addmm (lamo_scale/model/lora_update.py) vs peft's own forward, whole steps.

    .venv/bin/python bench/bench_lora_update.py --out bench/results/lora_update-cpu.json | tee bench/results/lora_update-cpu.txt

The paper's LaMo step as bench_vs_official.py builds it (recipe ``paper/hopper-medium-r1-lamo`` on a
random-init GPT-2 small: LoRA r16 / alpha 32 on c_attn, dropout 0.1, batch 64 x K 20, λ 0.1 with
2 x 1,024 text tokens and λ 0), fp32 and bf16 (base stored in bf16, autocast). Each policy is timed
with its LoRA layers in both modes in turn, on the same model and batch, order alternated every
round: ``fused`` (what build_policy installs) and ``peft`` (the layers' instance forward removed,
so peft's ``result + lora_B(lora_A(dropout(x))) * scaling`` runs). Median of ``--repeats`` after a
warm-up step of each.
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
from peft.tuners.lora import Linear as LoraLinear  # noqa: E402

import bench_train_step as bts  # noqa: E402
import bench_vs_official as bvo  # noqa: E402
from lamo_scale.model.lora_update import fuse_lora_updates  # noqa: E402


def set_fused(model: torch.nn.Module, fused: bool) -> None:
    """Install the one-addmm forward on every LoRA layer, or remove it (peft's class forward runs)."""
    if fused:
        fuse_lora_updates(model)
        return
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__dict__.pop("forward", None)


def main() -> None:
    """Time both modes on each (precision, λ) contender, interleaved; print the table."""
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
    for c in contenders:
        times = {"fused": [], "peft": []}
        for rep in range(args.repeats + 1):
            order = ["fused", "peft"] if rep % 2 == 0 else ["peft", "fused"]
            for mode in order:
                set_fused(c.model, mode == "fused")
                dt = c.step()
                if rep > 0:  # the first round warms up
                    times[mode].append(dt)
                print(f"  {c.name} {c.precision} {mode}: {dt:.2f} s", flush=True)
        set_fused(c.model, True)
        fused_s, peft_s = _common.median(times["fused"]), _common.median(times["peft"])
        rows.append({"contender": c.name, "precision": c.precision, "peft_s": peft_s, "fused_s": fused_s,
                     "speedup": peft_s / fused_s, "times": times})
    print(_common.table(rows, [("contender", "step"), ("precision", "prec"), ("peft_s", "peft s/step"),
                               ("fused_s", "fused s/step"), ("speedup", "x peft")]))
    _common.save_json(args.out, {"machine": info, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
