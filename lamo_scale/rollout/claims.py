"""Race-safe job claims on top of MLflow, which has no compare-and-set.

A job is one (checkpoint step, target) of one training run. Its claims live in the run's
**metric history**, used as an append-only log (the tracking store only ever inserts metric
points, so concurrent writes are never lost or overwritten):

* ``claims/<step>/<target>``: one point per claim attempt or heartbeat, with
  ``value`` = the worker's random 52-bit owner id (exact in a float64),
  ``timestamp`` = the writer's wall clock (ms) and ``step`` = the **epoch** of the lease.
* ``done/<step>/<target>``: the completion marker, ``value`` = the owner id, ``step`` = the
  checkpoint step. It is written in the SAME ``log_batch`` as the job's results, which the
  SQL tracking store applies in one transaction: results and marker appear together or not
  at all, so a killed worker never leaves partial results.

Rules every worker applies to the same log, so they all agree:

1. The **current epoch** is the largest epoch in the log. Its **winner** is the entry with
   the smallest ``(timestamp, owner)`` of that epoch; its lease **expires** ``lease_s`` after
   the winner's latest entry in that epoch (heartbeats are further entries by the winner).
2. A job is **available** when it has no done marker and no current epoch, or the current
   epoch's lease has expired.
3. To claim, a worker appends ``(now, owner, epoch + 1)``, waits ``settle_s``, re-reads the
   log and holds the job iff it is the winner of the current epoch and no done marker exists.
4. While it evaluates, a heartbeat thread appends ``(now, owner, epoch)`` every
   ``lease_s / 4``.
5. Before committing, the worker appends a heartbeat, re-reads the log and commits (results +
   done marker, one batch) only if it is still the winner of the current epoch and no done
   marker exists; otherwise it drops its results.

Why it holds: two workers can both believe they won step 3 only if an entry with an earlier
timestamp reached the store more than ``settle_s`` after it was stamped (a stalled writer or
clock skew beyond ``settle_s``). Step 5 re-reads the log after the whole evaluation, by which
time such a straggler is visible, so at most one of them commits. A lease can only be taken
over once the holder's heartbeats stopped for ``lease_s``; the holder's step-5 heartbeat
renews the lease right before its commit, so a takeover can race a commit only if a write
takes longer than ``lease_s - settle_s``. The assumptions are therefore: clock skew and
write latency well below ``settle_s`` (claims) and ``lease_s`` (takeovers).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)


def new_owner_id() -> int:
    """A random 52-bit worker id (exactly representable as a float metric value)."""
    return secrets.randbits(52) or 1


def now_ms() -> int:
    """Wall-clock milliseconds, the timestamp unit of MLflow metric points."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Lease:
    """The current epoch of a job's claim log, its winner and when its lease expires."""

    epoch: int
    owner: int
    expires_ms: int


def current_lease(entries: list[tuple[int, int, int]], lease_ms: int) -> Optional[Lease]:
    """The current lease from ``(timestamp_ms, owner, epoch)`` entries (None for an empty log)."""
    if not entries:
        return None
    epoch = max(e for _, _, e in entries)
    mine = [(ts, owner) for ts, owner, e in entries if e == epoch]
    winner = min(mine)[1]
    last = max(ts for ts, owner in mine if owner == winner)
    return Lease(epoch, winner, last + lease_ms)


def claim_key(step: int, target: str) -> str:
    """Metric name of a job's claim log."""
    return f"claims/{step}/{target}"


def done_key(step: int, target: str) -> str:
    """Metric name of a job's completion marker."""
    return f"done/{step}/{target}"


class JobClaim:
    """One worker's view of one job's claim log in one MLflow run."""

    def __init__(self, client, run_id: str, step: int, target: str, owner: int, lease_s: float,
                 settle_s: float):
        """Bind the job ``(step, target)`` of ``run_id`` to the worker ``owner``."""
        self.client, self.run_id, self.step, self.target = client, run_id, step, target
        self.owner, self.lease_ms, self.settle_s = owner, int(lease_s * 1000), settle_s
        self.epoch: Optional[int] = None

    def _entries(self) -> list[tuple[int, int, int]]:
        hist = self.client.get_metric_history(self.run_id, claim_key(self.step, self.target))
        return [(int(m.timestamp), int(m.value), int(m.step)) for m in hist]

    def is_done(self) -> bool:
        """Whether a completion marker exists."""
        return bool(self.client.get_metric_history(self.run_id, done_key(self.step, self.target)))

    def _append(self, epoch: int) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[
            Metric(claim_key(self.step, self.target), float(self.owner), now_ms(), epoch)])

    def available(self) -> bool:
        """Rule 2: no done marker and no unexpired lease."""
        lease = current_lease(self._entries(), self.lease_ms)
        return (lease is None or lease.expires_ms <= now_ms()) and not self.is_done()

    def try_claim(self) -> bool:
        """Rule 3: append a claim for the next epoch, settle, re-read; True if this worker holds the job."""
        lease = current_lease(self._entries(), self.lease_ms)
        if (lease is not None and lease.expires_ms > now_ms()) or self.is_done():
            return False
        epoch = 0 if lease is None else lease.epoch + 1
        self._append(epoch)
        time.sleep(self.settle_s)
        if not self._holds(epoch):
            return False
        self.epoch = epoch
        return True

    def _holds(self, epoch: int) -> bool:
        lease = current_lease(self._entries(), self.lease_ms)
        return (lease is not None and lease.epoch == epoch and lease.owner == self.owner
                and not self.is_done())

    def heartbeat(self) -> None:
        """Rule 4: renew the lease of the epoch this worker holds."""
        if self.epoch is not None:
            self._append(self.epoch)

    def commit(self, metrics: dict[str, float]) -> bool:
        """Rule 5: log ``metrics`` at the checkpoint's step with the done marker, if still held."""
        from mlflow.entities import Metric

        if self.epoch is None:
            return False
        self.heartbeat()
        if not self._holds(self.epoch):
            log.warning("lost the lease of %s/%s (step %d); dropping its results", self.run_id, self.target,
                        self.step)
            return False
        ts = now_ms()
        points = [Metric(k, float(v), ts, self.step) for k, v in metrics.items()]
        points.append(Metric(done_key(self.step, self.target), float(self.owner), ts, self.step))
        self.client.log_batch(self.run_id, metrics=points)
        return True


class Heartbeat:
    """Context manager: renew a held claim every ``lease_s / 4`` from a background thread."""

    def __init__(self, claim: JobClaim):
        """Heartbeat for ``claim`` (which must be held)."""
        self.claim = claim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        period = self.claim.lease_ms / 4000.0
        while not self._stop.wait(period):
            try:
                self.claim.heartbeat()
            except Exception as err:  # a missed beat only shortens the lease
                log.warning("heartbeat failed: %s", err)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
