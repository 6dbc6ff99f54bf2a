"""The CPU dropout mask: torch's ``F.dropout`` (a ``bernoulli_`` draw) vs lamo_scale's
``model.dropout.dropout`` (a float32 uniform draw and a compare), forward + backward, per element.

    .venv/bin/python bench/bench_dropout.py --out bench/results/dropout-cpu.json | tee bench/results/dropout-cpu.txt

Tensor of 4.5 M elements (one packed GPT-2-small co-training residual stream: 5,824 rows x 768),
p 0.1, fp32 and bf16; contenders interleaved, median of ``--repeats``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from lamo_scale.model.dropout import dropout  # noqa: E402


def time_one(fn, x: torch.Tensor) -> float:
    """Seconds for one forward + backward of ``fn`` on a leaf copy of ``x``."""
    leaf = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    fn(leaf).sum().backward()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    """Time both masks at each dtype; print ns/element and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--elements", type=int, default=5824 * 768)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--out", help="write the raw numbers as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = _common.machine_info()
    print(_common.machine_line(info), flush=True)
    contenders = {"F.dropout (bernoulli_)": lambda t: torch.nn.functional.dropout(t, args.p, training=True),
                  "lamo_scale dropout (uniform >= p)": lambda t: dropout(t, args.p)}
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(args.elements).to(dtype)
        times = {name: [] for name in contenders}
        for name, fn in contenders.items():
            time_one(fn, x)  # warm-up
        for r in range(args.repeats):
            for name in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
                times[name].append(time_one(contenders[name], x))
        base = _common.median(times["F.dropout (bernoulli_)"])
        for name, ts in times.items():
            s = _common.median(ts)
            rows.append({"dtype": str(dtype).split(".")[-1], "contender": name, "ns_per_element": s / args.elements * 1e9,
                         "x_vs_bernoulli": base / s})
    print(_common.table(rows, [("dtype", "dtype"), ("contender", "contender"),
                               ("ns_per_element", "ns/element fwd+bwd"), ("x_vs_bernoulli", "x vs F.dropout")]))
    _common.save_json(args.out, {"machine": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
