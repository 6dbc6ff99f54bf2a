"""Preemption: SIGTERM / SIGUSR1 (Slurm's warning) → checkpoint at the end of the step, then exit.

The handler only sets a flag; the training loop checks it after each optimizer step (all
ranks agree through a max-reduce), writes a checkpoint, and exits with
:data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "try again") so a scheduler script can
requeue the job; the next start resumes from that checkpoint (``train.resume=auto``).
"""
from __future__ import annotations

import logging
import signal
from typing import Optional

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written."""

    def __init__(self, step: int):
        """Exit with :data:`PREEMPTED_EXIT_CODE` after ``step``."""
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


class PreemptionFlag:
    """Install handlers for SIGTERM/SIGUSR1 that record the request (restored by :meth:`close`)."""

    def __init__(self):
        """Start listening."""
        self.signal: Optional[int] = None
        self._previous = {}
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: nothing to install
                pass

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            log.warning("received %s: checkpointing at the end of this step, then exiting (code %d)",
                        signal.Signals(signum).name, PREEMPTED_EXIT_CODE)
        self.signal = signum

    @property
    def requested(self) -> bool:
        """Whether a preemption signal arrived."""
        return self.signal is not None

    def close(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
