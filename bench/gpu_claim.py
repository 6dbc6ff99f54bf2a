"""Evaluate the final checkpoint of every run under ``--runs`` and summarise per variant (bench/gpu.sh's
``claim`` stage: LaMo vs the same backbone from random init vs the paper's DT on the quickstart's cell).

    python bench/gpu_claim.py --runs /tmp/claim --device cuda --episodes 64 --out $OUT/claim.json

Runs are named ``<variant>-s<seed>``. Each final checkpoint is rolled out for ``--episodes``
episodes per target return (its recipe's targets, all episodes of a target in one batched wave);
its score is the paper's rule applied to that one checkpoint (the best target's mean normalised
score). Per variant: mean ± std over seeds (ddof 1); between variants: Welch's two-sided t-test.
Runs without a final checkpoint are listed as unfinished and left out (no partial scores).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()


def main(argv=None) -> None:
    """Evaluate, print the per-seed and per-variant table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="directory holding <variant>-s<seed>/checkpoints/step-N")
    p.add_argument("--steps", type=int, required=True, help="the recipe's train.steps (the final checkpoint)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import numpy as np

    from lamo_scale import checkpoint as ckpt
    from lamo_scale.paper_report import compare  # the report's Welch test: both read the same way
    from lamo_scale.rollout.evaluate import evaluate_checkpoint

    rows, unfinished = [], []
    for run in sorted(Path(args.runs).iterdir()):
        if not run.is_dir() or "-s" not in run.name:
            continue
        variant, seed = run.name.rsplit("-s", 1)
        final = run / "checkpoints" / ckpt.step_dir_name(args.steps)
        if not final.is_dir():
            unfinished.append(run.name)
            continue
        report = evaluate_checkpoint(final, episodes=args.episodes, num_envs=2 * args.episodes, device=args.device,
                                     log_to_mlflow=False, progress=False)
        per_target = {str(t): s.get("normalized_score") for t, s in report.summaries.items()}
        rows.append({"variant": variant, "seed": int(seed), "score": report.best_normalized(),
                     "per_target": per_target})
        print(f"{run.name}: score {report.best_normalized():.2f} (per target {per_target})", flush=True)
    variants = {}
    for r in rows:
        variants.setdefault(r["variant"], []).append(r["score"])
    print("\nvariant                 n  mean ± std     seeds")
    for v, s in variants.items():
        sd = float(np.std(s, ddof=1)) if len(s) > 1 else float("nan")
        print(f"{v:22s} {len(s):2d}  {np.mean(s):5.1f} ± {sd:4.1f}   {', '.join(f'{x:.1f}' for x in s)}")
    tests = {}
    others = [v for v in variants if v != "lamo"] if "lamo" in variants else []
    for other in others:
        diff, se, threshold, verdict = compare(variants["lamo"], variants[other])
        tests[f"lamo vs {other}"] = {"diff": diff, "se": se, "threshold": threshold, "verdict": verdict}
        print(f"LaMo - {other}: {diff:+.1f} ± {se:.1f} (95 % threshold {threshold:.1f}): {verdict}")
    if unfinished:
        print("unfinished (no final checkpoint, left out):", ", ".join(unfinished))
    _common.save_json(args.out, {"rows": rows, "unfinished": unfinished, "welch": tests})


if __name__ == "__main__":
    main()
