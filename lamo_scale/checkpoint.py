"""Small, atomic, verifiable checkpoints: trainable weights + trainer state + metadata.

Layout of ``<run_dir>/checkpoints/step-00000500/``:

* ``policy.safetensors`` — every trainable parameter (adapters, embeddings, heads; the
  whole backbone only under full fine-tuning). Never the frozen backbone.
* ``trainer_state.pt`` — optimizer, scheduler, RNG states, data-stream positions.
* ``meta.json`` — written last: config, step, dataset/env ids, state statistics, spaces,
  frozen-backbone fingerprint, MLflow run, and the SHA-256 of every other file.

A checkpoint is built in a hidden temporary directory and renamed into place, so a crash
mid-write never leaves a half-written ``step-*`` directory; :func:`verify` re-hashes the
files and a checkpoint that fails is refused, never half-loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

WEIGHTS = "policy.safetensors"
TRAINER_STATE = "trainer_state.pt"
META = "meta.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the run it is loaded into."""


@dataclass
class Checkpoint:
    """A verified checkpoint on disk."""

    path: Path
    meta: dict

    @property
    def step(self) -> int:
        """Optimizer steps done when it was written."""
        return int(self.meta["step"])

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights."""
        return load_file(str(self.path / WEIGHTS))

    def trainer_state(self) -> dict:
        """Optimizer / scheduler / RNG / stream state (for exact resume)."""
        return torch.load(self.path / TRAINER_STATE, map_location="cpu", weights_only=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint at ``step``."""
    return f"step-{step:08d}"


def staging_dir(checkpoints_dir: Path, step: int) -> Path:
    """The hidden directory a checkpoint is assembled in (the same path on every rank)."""
    return Path(checkpoints_dir) / f".tmp-{step_dir_name(step)}"


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != META)


def commit_checkpoint(staging: Path, step: int, weights: dict[str, torch.Tensor], trainer_state: dict,
                      meta: dict[str, Any], keep: int = 0) -> Path:
    """Write weights + state into ``staging`` (which may already hold other ranks' files), hash
    every file, write ``meta.json`` last and rename the directory into place."""
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(staging / WEIGHTS))
    torch.save(trainer_state, staging / TRAINER_STATE)
    files = {}
    for name in _all_files(staging):
        with open(staging / name, "rb") as f:
            os.fsync(f.fileno())
        files[name] = _sha256(staging / name)
    full_meta = dict(meta, step=step, format_version=FORMAT_VERSION, files=files)
    with open(staging / META, "w") as f:
        json.dump(full_meta, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(staging)
    final = staging.parent / step_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _fsync_dir(staging.parent)
    if keep > 0:
        for old in list_checkpoints(staging.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(checkpoints_dir: Path, step: int, weights: dict[str, torch.Tensor], trainer_state: dict,
                    meta: dict[str, Any], keep: int = 0) -> Path:
    """Atomically write a checkpoint for ``step`` from one process; prune to the newest ``keep``."""
    staging = staging_dir(checkpoints_dir, step)
    shutil.rmtree(staging, ignore_errors=True)
    return commit_checkpoint(staging, step, weights, trainer_state, meta, keep)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoint directories (complete or not) under ``checkpoints_dir``, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    return sorted(p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))


def verify(path: Path) -> Checkpoint:
    """Load a checkpoint's metadata and check every file's hash; raise :class:`CheckpointError` if bad."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {META})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is corrupt: {err}") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format_version')} != {FORMAT_VERSION}")
    for name, expected in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(file) != expected:
            raise CheckpointError(f"{path}: {name} is corrupt (SHA-256 mismatch); refusing to load it")
    return Checkpoint(path, meta)


def latest_checkpoint(checkpoints_dir: Path) -> Optional[Checkpoint]:
    """The newest checkpoint that verifies; corrupt newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(checkpoints_dir)):
        try:
            return verify(path)
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s", err)
    return None


def resolve_checkpoint(ref: str | Path) -> Checkpoint:
    """A checkpoint from a checkpoint dir, a run dir (its latest), or a ``checkpoints/`` dir."""
    path = Path(ref)
    if (path / META).exists():
        return verify(path)
    for candidate in (path / "checkpoints", path):
        found = latest_checkpoint(candidate)
        if found is not None:
            return found
    raise CheckpointError(f"no complete checkpoint found at {path}")


def load_trainable(policy, weights: dict[str, torch.Tensor], source) -> None:
    """Load a checkpoint's trainable weights; every trainable parameter must be present."""
    expected = set(policy.trainable_state_dict())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {source} does not fit this policy: missing "
                          f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    result = policy.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"checkpoint {source}: unexpected keys {result.unexpected_keys[:5]}")


def rng_state() -> dict:
    """Every RNG stream that training touches (python, numpy, torch CPU and CUDA)."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
