"""Table of the quickstart-grad-clip sweep: score of the last checkpoint per seed, mean ± std, Welch.

    python docs/results/quickstart-grad-clip/summarize.py <dir holding mlruns.db and runs/>

Score = the paper's rule on the last checkpoint (step 250): the best target's normalised score
(64 episodes per target). R^2 = fit of that checkpoint to the behaviour agent's mean action
(fit_to_mean.py, 2,000 dataset windows).
"""
from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

from scipy.stats import ttest_ind

HERE = Path(__file__).resolve().parent


def main(where: str) -> None:
    """Print the per-seed table and the Welch test for each metric."""
    db = sqlite3.connect(Path(where) / "mlruns.db")
    rows = db.execute("select r.name, m.value from metrics m join runs r on r.run_uuid = m.run_uuid "
                      "where m.key = 'eval/best_normalized_score' and m.step = 250 order by r.name").fetchall()
    scores, fits = {}, {}
    for name, value in rows:
        clip = name.split("grad_clip")[1].split("-")[0]
        ckpt = Path(where) / "runs" / "lamo-quickstart-grad-clip" / name / "checkpoints" / "step-00000250"
        out = subprocess.run([sys.executable, str(HERE / "fit_to_mean.py"), str(ckpt)], capture_output=True, text=True,
                             check=True).stdout
        r2 = float(out.rsplit("R^2 vs the behaviour mean", 1)[1])
        scores.setdefault(clip, []).append(value)
        fits.setdefault(clip, []).append(r2)
        print(f"{name}: score {value:.2f}, R^2 {r2:.3f}", flush=True)
    for label, table in (("score", scores), ("R^2", fits)):
        for clip, vals in table.items():
            print(f"{label} grad_clip {clip}: {statistics.fmean(vals):.3f} ± {statistics.stdev(vals):.3f}  {vals}")
        a, b = table["1.0"], table["0.25"]
        t, p = ttest_ind(a, b, equal_var=False)
        print(f"{label}: clip 1.0 - clip 0.25 = {statistics.fmean(a) - statistics.fmean(b):+.3f}, Welch t {t:.2f}, p {p:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
