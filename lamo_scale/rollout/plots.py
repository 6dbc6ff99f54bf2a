"""Evaluation curves: normalised score vs training step, per target return (matplotlib, Agg)."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from lamo_scale.tracking import metric_history

log = logging.getLogger(__name__)

PLOT_ARTIFACT = "plots/eval_curve.png"
"""Where a run's evaluation curve is stored among its artifacts."""


def eval_curves(client, run_id: str, metric_keys=None) -> dict[str, list[tuple[int, float]]]:
    """``{target: [(step, normalised score), ...]}`` of one run, sorted by step (the last-logged point per step)."""
    if metric_keys is None:
        metric_keys = client.get_run(run_id).data.metrics
    curves = {}
    for key in sorted(metric_keys):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval" and parts[2] == "normalized_score":
            curves[parts[1]] = [(m.step, m.value) for m in metric_history(client, run_id, key)]
    return curves


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str) -> Path:
    """Draw one line per label (step on x, normalised score on y) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("normalised score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_eval_plot(client, run_id: str, title: str) -> bool:
    """Redraw a run's curve from its metrics and store it as ``plots/eval_curve.png`` (False if no scores)."""
    curves = eval_curves(client, run_id)
    if not curves:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_curves({f"target {t}": p for t, p in curves.items()}, Path(tmp) / Path(PLOT_ARTIFACT).name, title)
        client.log_artifact(run_id, str(path), str(Path(PLOT_ARTIFACT).parent))
    return True
