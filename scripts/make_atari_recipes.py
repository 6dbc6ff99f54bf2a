"""Write the paper's Atari grid of recipes into lamo_scale/recipes/atari/ (run after editing the table).

    python scripts/make_atari_recipes.py          # rewrite
    python scripts/make_atari_recipes.py --check  # exit 1 if the files differ (tests/test_atari.py runs this)

Grid: {breakout, qbert, pong} x data ratio {0.01, 0.1} (the paper's Atari ratios) x {lamo, dt}.
Breakout trains on the data made here (lamo-scale collect --recipe breakout-tracker-mixed: a
scripted tracker, NOT DQN-replay); Qbert and Pong on Minari's published atari/<game>/expert-v0
(210x160 RGB frames of ALE/<Game>-v5, downloaded: network needed). Target returns: the Decision
Transformer paper's (Chen et al., 2021: Breakout 90, Qbert 14000, Pong 20), Breakout also the
official LaMo config's 120.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lamo_scale" / "recipes" / "atari"
GAMES = {"breakout": ("lamo/breakout/tracker-mixed-v0", False, [90, 120]),
         "qbert": ("atari/qbert/expert-v0", True, [14000]),
         "pong": ("atari/pong/expert-v0", True, [20])}
RATIOS = {"r0.01": 0.01, "r0.1": 0.1}
VARIANTS = {"lamo": [], "dt": ["ablations/dt"]}
TITLES = {"lamo": "LaMo", "dt": "Decision Transformer"}


def grid() -> dict[str, str]:
    """File name -> text for every recipe of the grid."""
    files = {}
    for game, (dataset, download, targets) in GAMES.items():
        for rname, ratio in RATIOS.items():
            for variant, extra in VARIANTS.items():
                name = f"{game}-{rname}-{variant}"
                bases = ["_atari", *extra]
                base = bases[0] if len(bases) == 1 else "[" + ", ".join(bases) + "]"
                source = "scripted-tracker data made here" if not download else "Minari's published data"
                body = (f"data:\n  dataset: {dataset}\n  data_ratio: {ratio}\n"
                        + ("  download: true\n" if download else "")
                        + f"eval:\n  target_returns: {targets}\n")
                files[f"{name}.yaml"] = (f"# lamo-scale train --config atari/{name}\n"
                                         f"# {TITLES[variant]} on {game}, {ratio:.0%} of the trajectories ({source}).\n"
                                         f"base: {base}\n{body}")
    return files


def main() -> int:
    """Write or check the grid."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args()
    files = grid()
    ours = [p for p in OUT.glob("*-r*-*.yaml")]
    stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
    extra = [p.name for p in ours if p.name not in files]
    if args.check:
        if stale or extra:
            print(f"recipes out of date: {stale + extra}; run python scripts/make_atari_recipes.py", file=sys.stderr)
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
