"""Write the paper's grid of recipes into lamo_scale/recipes/paper/ (run after editing the table).

    python scripts/make_recipes.py          # rewrite
    python scripts/make_recipes.py --check  # exit 1 if the files differ (the test suite runs this)

Grid: {hopper, halfcheetah, walker2d} x {medium, medium-replay(-like), medium-expert} x data
ratio {0.01, 0.1, 1} x {lamo, dt}; Reacher2d x ratios x {lamo, dt}; Kitchen {complete, partial,
mixed} x {lamo, dt}. Ablations are overlays in recipes/ablations/ (--config twice).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lamo_scale" / "recipes" / "paper"
TARGETS = {"hopper": [3600, 2600, 2200, 1800], "halfcheetah": [12000, 8000, 6000, 4500],
           "walker2d": [5000, 4000, 3000, 2500]}
MUJOCO_DATA = {"medium": "medium-v0", "medium-replay": "medium-replay-like-v0", "medium-expert": "medium-expert-v0"}
RATIOS = {"r0.01": 0.01, "r0.1": 0.1, "r1": 1.0}
VARIANTS = {"lamo": [], "dt": ["ablations/dt"]}
TITLES = {"lamo": "LaMo", "dt": "Decision Transformer"}


def recipe(name: str, bases: list[str], body: str, about: str) -> str:
    """One recipe file: the command that runs it, what it is, its bases and its keys."""
    base = bases[0] if len(bases) == 1 else "[" + ", ".join(bases) + "]"
    return f"# lamo-scale train --config paper/{name}\n# {about}\nbase: {base}\n{body}"


def grid() -> dict[str, str]:
    """File name -> text for every recipe of the grid."""
    files = {}
    for env, targets in TARGETS.items():
        for kind, ds in MUJOCO_DATA.items():
            for rname, ratio in RATIOS.items():
                for variant, extra in VARIANTS.items():
                    name = f"{env}-{kind}-{rname}-{variant}"
                    like = " (D4RL-like data made by lamo-scale collect)" if kind != "medium-replay" else \
                        " (medium-replay-like: a mixture of weaker real policies, see lamo-scale collect --list)"
                    body = (f"data:\n  dataset: lamo/{env}/{ds}\n  data_ratio: {ratio}\n"
                            f"eval:\n  target_returns: {targets}\n")
                    files[name] = recipe(name, ["_mujoco", *extra], body,
                                         f"{TITLES[variant]} on {env} {kind}, {ratio:.0%} of the trajectories{like}.")
    for rname, ratio in RATIOS.items():
        for variant, extra in VARIANTS.items():
            name = f"reacher2d-{rname}-{variant}"
            body = f"data:\n  dataset: lamo/reacher2d/medium-v1\n  data_ratio: {ratio}\n"
            files[name] = recipe(name, ["_reacher2d", *extra], body,
                                 f"{TITLES[variant]} on sparse Reacher2d, {ratio:.0%} of the trajectories.")
    for split in ("complete", "partial", "mixed"):
        for variant, extra in VARIANTS.items():
            name = f"kitchen-{split}-{variant}"
            body = f"data:\n  dataset: D4RL/kitchen/{split}-v2\n  download: true\n"
            files[name] = recipe(name, ["_kitchen", *extra], body, f"{TITLES[variant]} on D4RL Kitchen {split}.")
    return {f"{k}.yaml": v for k, v in files.items()}


def main() -> int:
    """Write or check the grid."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args()
    files = grid()
    stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
    extra = [p.name for p in OUT.glob("*.yaml") if not p.name.startswith("_") and p.name not in files]
    if args.check:
        if stale or extra:
            print(f"recipes out of date: {stale + extra}; run python scripts/make_recipes.py", file=sys.stderr)
            return 1
        return 0
    for name in extra:
        (OUT / name).unlink()
    for name in stale:
        (OUT / name).write_text(files[name])
    print(f"{len(files)} recipes in {OUT} ({len(stale)} written, {len(extra)} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
