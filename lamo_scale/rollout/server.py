"""A local ``mlflow server`` (sqlite backend, served local artifacts) for tests and benchmarks.

It runs in its own process group so :meth:`LocalServer.stop` ends the server and its helpers
(uvicorn, job runner) together; :meth:`LocalServer.start` can be called again on the same port
and store, which is how the outage test restarts it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``mlflow server`` on 127.0.0.1 with its store and artifacts under ``root``."""

    def __init__(self, root: str | Path, port: Optional[int] = None):
        """Serve ``root/mlflow.db`` and ``root/artifacts`` on ``port`` (a free one if None)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 120.0) -> None:
        """Start the server and wait until ``/health`` answers."""
        log = open(self.root / "server.log", "a")
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        tail = (self.root / "server.log").read_text()[-2000:]
        self.stop()
        raise RuntimeError(f"mlflow server on port {self.port} did not start:\n{tail}")

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 20 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LocalServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
