"""Shared helpers for the bench scripts: offline env, machine line, timing, tables.

Not a benchmark itself. Imported as ``_common`` (the bench scripts run from ``bench/``'s
parent with ``bench/`` first on ``sys.path``).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def offline_env(minari_dir: str | None = None) -> str:
    """Set the offline / no-telemetry variables and a Minari store; returns the store path.

    Must run before importing lamo_scale, transformers or minari.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if minari_dir:
        os.environ["MINARI_DATASETS_PATH"] = minari_dir
    elif not os.environ.get("MINARI_DATASETS_PATH"):
        os.environ["MINARI_DATASETS_PATH"] = os.path.join(tempfile.gettempdir(), "lamo_bench_minari")
    Path(os.environ["MINARI_DATASETS_PATH"]).mkdir(parents=True, exist_ok=True)
    return os.environ["MINARI_DATASETS_PATH"]


def machine_info() -> dict:
    """CPU model, core count, torch/transformers versions, torch threads, load average."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def machine_line(info: dict) -> str:
    """One human line describing the machine."""
    extra = f", transformers {info['transformers']}" if "transformers" in info else ""
    load = f", load avg at start {info['loadavg_at_start'][0]}" if "loadavg_at_start" in info else ""
    return (f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}{extra}, "
            f"{info['threads']} torch threads, python {info['python']}{load}")


def median(xs):
    """Median of a non-empty list (None for an empty one)."""
    return statistics.median(xs) if xs else None


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` FLOP/s of an ``n x n`` matmul in ``dtype_name`` (float32 / bfloat16)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table of ``rows`` with ``(key, header)`` columns (floats formatted)."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            if v == 0:
                return "0"
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 1:
                return f"{v:.2f}"
            return f"{v:.3g}"
        return str(v)

    cells = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h) in enumerate(columns)]
    out = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def save_json(path: str | None, payload: dict) -> None:
    """Write ``payload`` as JSON to ``path`` (parents created) if a path is given."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
