"""Checkpoints: atomic writes, verification, corruption refused, latest complete one found."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lamo_scale import checkpoint as ckpt


def write(tmp_path, step, value=1.0):
    return ckpt.save_checkpoint(tmp_path, step, {"w": torch.full((3,), value)}, {"step": step}, {"note": "x"})


def test_roundtrip_and_metadata(tmp_path):
    path = write(tmp_path, 5, 2.0)
    assert path.name == "step-00000005"
    c = ckpt.verify(path)
    assert c.step == 5 and c.meta["note"] == "x" and set(c.meta["files"]) == {ckpt.WEIGHTS, ckpt.TRAINER_STATE}
    assert torch.equal(c.weights()["w"], torch.full((3,), 2.0))
    assert c.trainer_state() == {"step": 5}


def test_corrupt_weights_are_refused_and_skipped(tmp_path):
    write(tmp_path, 1)
    bad = write(tmp_path, 2)
    with open(bad / ckpt.WEIGHTS, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.verify(bad)
    assert ckpt.latest_checkpoint(tmp_path).step == 1


def test_incomplete_directory_is_not_a_checkpoint(tmp_path):
    write(tmp_path, 1)
    (tmp_path / "step-00000009").mkdir()  # e.g. copied by hand, no meta.json
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.verify(tmp_path / "step-00000009")
    assert ckpt.latest_checkpoint(tmp_path).step == 1
    assert ckpt.resolve_checkpoint(tmp_path).step == 1


def test_keep_prunes_oldest(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, {}, {}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]


def test_kill_during_write_leaves_previous_checkpoint_loadable(tmp_path):
    """A process SIGKILLed in the middle of writing a large checkpoint never damages the last good one."""
    write(tmp_path, 1)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from lamo_scale import checkpoint as ckpt
        real = torch.save
        def save_then_die(obj, path, *a, **k):
            real(obj, path, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)   # die after the weights, before meta.json
        torch.save = save_then_die
        ckpt.save_checkpoint({str(tmp_path)!r}, 2, {{"w": torch.randn(1000, 1000)}}, {{"s": 1}}, {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.step == 1 and torch.equal(latest.weights()["w"], torch.ones(3))
    assert not (tmp_path / "step-00000002").exists()


def test_bad_meta_json_refused(tmp_path):
    path = write(tmp_path, 1)
    (path / ckpt.META).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.verify(path)
    meta = {"format_version": 999}
    (path / ckpt.META).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="format"):
        ckpt.verify(path)
