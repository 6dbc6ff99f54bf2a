"""MLflow tracking: one experiment per recipe, one run per training job.

Only the main process logs. Metric writes go through a bounded buffer: if the tracking
server is unreachable the points are kept (up to ``max_buffered``) and retried at the next
log call (at most every ``retry_s`` seconds), with one warning, so a server outage never
stops training. Tags and artifact uploads that fail are queued and retried the same way;
``end`` keeps retrying for up to ``end_wait_s`` before giving up. The MLflow HTTP client's own
retries default to 1 here (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``; MLflow's default retries a
dead server for minutes per call, stalling the training loop).
"""
from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _mlflow():
    import mlflow

    return mlflow


class Tracker:
    """A thin, failure-tolerant handle on one MLflow run (a no-op when disabled)."""

    def __init__(self, uri: str, experiment: str, enabled: bool = True, max_buffered: int = 100_000,
                 retry_s: float = 2.0, end_wait_s: float = 60.0):
        """Track to ``uri`` under ``experiment``; nothing is logged when ``enabled`` is false."""
        self.uri, self.experiment, self.enabled = uri, experiment, enabled
        self.run_id: Optional[str] = None
        self._pending: collections.deque = collections.deque(maxlen=max_buffered)
        self._pending_tags: dict[str, str] = {}
        self._pending_uploads: list[tuple[str, str]] = []
        self.retry_s, self.end_wait_s = retry_s, end_wait_s
        self._retry_at = 0.0
        self._warned = False
        self._client = None

    @property
    def client(self):
        """The MlflowClient bound to this tracking URI."""
        if self._client is None:
            self._client = _mlflow().MlflowClient(tracking_uri=self.uri)
        return self._client

    def start(self, run_name: str, run_id: Optional[str] = None, tags: Optional[dict] = None) -> Optional[str]:
        """Create the run (or reattach to ``run_id`` on resume) and return its id."""
        if not self.enabled:
            return None
        client = self.client
        if run_id is not None:
            self.run_id = run_id
            client.update_run(run_id, status="RUNNING")
            return run_id
        for attempt in range(5):
            # Several jobs starting at once can race on a new sqlite store's schema or on
            # creating the same experiment; the loser retries and finds what the winner made.
            try:
                exp = client.get_experiment_by_name(self.experiment)
                exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
                run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
                break
            except Exception as err:
                if attempt == 4:
                    raise
                log.warning("MLflow run creation failed (%s: %s); retrying", type(err).__name__, err)
                time.sleep(0.5 * 2 ** attempt)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log flat params (values stringified, long ones cut to MLflow's limit)."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as a run artifact."""
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metric points at ``step`` and try to flush the queue."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send buffered metric points, then queued uploads and tags; False (all kept) if the server
        is unreachable. After a failure, retries wait ``retry_s`` unless ``force``."""
        if not self.enabled or not (self._pending or self._pending_tags or self._pending_uploads):
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            while self._pending:
                batch = [self._pending[i] for i in range(min(len(self._pending), 1000))]
                self.client.log_batch(self.run_id, metrics=batch)
                for _ in batch:
                    self._pending.popleft()
            while self._pending_uploads:  # in order: a checkpoint's upload precedes its tags
                local_dir, artifact_path = self._pending_uploads[0]
                if Path(local_dir).is_dir():
                    self.client.log_artifacts(self.run_id, local_dir, artifact_path)
                else:  # pruned (train.keep_checkpoints) before the server came back
                    log.warning("not uploading %s: it no longer exists", local_dir)
                self._pending_uploads.pop(0)
            if self._pending_tags:
                from mlflow.entities import RunTag

                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._pending_tags.items()])
                self._pending_tags.clear()
        except Exception as err:  # any transport error: keep everything, warn once
            self._retry_at = time.monotonic() + self.retry_s
            if not self._warned:
                log.warning("MLflow unreachable (%s); buffering %d metric points and retrying",
                            type(err).__name__, len(self._pending))
                self._warned = True
            return False
        self._warned = False
        return True

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Upload a directory as run artifacts (queued and retried if the server is unreachable)."""
        if not self.enabled:
            return
        self._pending_uploads.append((str(local_dir), artifact_path))
        self.flush(force=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags (queued and retried if the server is unreachable)."""
        if self.enabled:
            self._pending_tags.update({k: str(v) for k, v in tags.items()})
            self.flush(force=True)

    def end(self, status: str = "FINISHED") -> None:
        """Flush (retrying for up to ``end_wait_s``) and mark the run ``FINISHED`` / ``FAILED`` / ``KILLED``."""
        if not self.enabled or self.run_id is None:
            return
        deadline = time.monotonic() + self.end_wait_s
        while not self.flush(force=True) and time.monotonic() < deadline:
            time.sleep(min(self.retry_s, max(0.0, deadline - time.monotonic())))
        while True:
            try:
                self.client.set_terminated(self.run_id, status=status)
                return
            except Exception as err:
                if time.monotonic() >= deadline:
                    log.warning("could not close MLflow run %s: %s", self.run_id, err)
                    return
                time.sleep(self.retry_s)


def latest_per_step(history) -> list:
    """One point per step of an MLflow metric history, sorted by step: the last one logged.

    A run resumed (``train.resume=auto``) after a kill re-logs the steps between its last
    checkpoint and the kill, so MLflow holds two points for each of them; the later one
    (latest timestamp; on a tie, the later in the history) is the one that counts.
    """
    latest = {}
    for point in history:
        kept = latest.get(point.step)
        if kept is None or point.timestamp >= kept.timestamp:
            latest[point.step] = point
    return [latest[step] for step in sorted(latest)]


def metric_history(client, run_id: str, key: str) -> list:
    """``client.get_metric_history(run_id, key)`` with one point per step (:func:`latest_per_step`):
    what every report reads instead of the raw history."""
    return latest_per_step(client.get_metric_history(run_id, key))


def run_url(uri: str, run_id: str) -> str:
    """Where a person finds the run: the UI address for servers, the command for local stores."""
    if uri.startswith("http"):
        client = _mlflow().MlflowClient(tracking_uri=uri)
        exp_id = client.get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"
    return f"run {run_id} in {uri}  (browse: mlflow ui --backend-store-uri {uri})"
