"""Reading MLflow metric histories: a step logged twice (a run resumed after a kill) counts once."""
from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Metric

from lamo_scale.rollout.best import best_point
from lamo_scale.rollout.plots import eval_curves
from lamo_scale.tracking import latest_per_step, metric_history


def _resumed_run(tmp_path):
    """A run killed after logging steps 0..4 and resumed from its step-2 checkpoint: steps 3 and 4
    are logged again, later, with other values (a real sqlite store)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    first = {0: 10.0, 1: 20.0, 2: 30.0, 3: 90.0, 4: 95.0}  # the killed process's points
    again = {3: 40.0, 4: 50.0, 5: 60.0}  # the resumed process re-logs 3 and 4
    for key in ("eval/90/normalized_score", "eval/best_normalized_score"):
        client.log_batch(run_id, metrics=[Metric(key, v, 1_000 + s, s) for s, v in first.items()])
        client.log_batch(run_id, metrics=[Metric(key, v, 2_000 + s, s) for s, v in again.items()])
    return client, run_id


def test_metric_history_keeps_the_last_logged_point_per_step(tmp_path):
    client, run_id = _resumed_run(tmp_path)
    assert len(client.get_metric_history(run_id, "eval/90/normalized_score")) == 8  # MLflow keeps both
    points = metric_history(client, run_id, "eval/90/normalized_score")
    assert [(m.step, m.value) for m in points] == [(0, 10.0), (1, 20.0), (2, 30.0), (3, 40.0), (4, 50.0), (5, 60.0)]


def test_reports_read_the_resumed_values(tmp_path):
    """The report's curves and the best-checkpoint mark ignore the killed process's stale points."""
    client, run_id = _resumed_run(tmp_path)
    assert eval_curves(client, run_id) == {"90": [(0, 10.0), (1, 20.0), (2, 30.0), (3, 40.0), (4, 50.0), (5, 60.0)]}
    assert best_point(client, run_id) == (5, 60.0)  # not the stale 95.0 at step 4


def test_latest_per_step_uses_timestamps_not_history_order():
    late, early = Metric("x", 2.0, 200, 7), Metric("x", 1.0, 100, 7)
    assert latest_per_step([late, early]) == [late]
    assert latest_per_step([]) == []
