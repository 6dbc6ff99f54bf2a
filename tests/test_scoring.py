"""The one score rule (lamo_scale.scoring), pinned by hand."""
import math
from types import SimpleNamespace

import pytest

from lamo_scale.scoring import checkpoint_score, counts_as_seed, last_fraction_mean, run_score


def test_run_score_is_the_best_targets_mean_over_the_last_fifth_of_checkpoints():
    # 10 checkpoints per target: the last 20 % are the last 2 (steps 900, 1000).
    high = [(100 * i, v) for i, v in enumerate([0, 10, 20, 30, 95, 40, 50, 60, 30, 40], start=1)]
    low = [(100 * i, v) for i, v in enumerate([5, 5, 5, 5, 5, 5, 5, 5, 50, 44], start=1)]
    score, target = run_score({"100": high, "80": low})
    # target 100: (30 + 40) / 2 = 35 ; target 80: (50 + 44) / 2 = 47 -> 80 wins, its early 95 peak ignored
    assert (score, target) == (47.0, "80")


def test_last_fraction_rounds_up_and_sorts_by_step():
    pts = [(300, 3.0), (100, 1.0), (200, 2.0)]  # 20 % of 3 -> 1 point: the latest step
    assert last_fraction_mean(pts) == 3.0
    assert last_fraction_mean([(s, float(s)) for s in range(1, 7)]) == pytest.approx((5 + 6) / 2)  # ceil(1.2) = 2
    assert math.isnan(last_fraction_mean([]))
    assert math.isnan(run_score({})[0])


def test_checkpoint_score_and_seed_eligibility():
    assert checkpoint_score({"100": 20.0, "80": 31.5, "60": math.nan}) == 31.5
    assert math.isnan(checkpoint_score({}))
    run = lambda status: SimpleNamespace(info=SimpleNamespace(status=status))  # noqa: E731
    assert counts_as_seed(run("FINISHED"))
    assert not counts_as_seed(run("FAILED")) and not counts_as_seed(run("RUNNING")) and not counts_as_seed(run("KILLED"))
