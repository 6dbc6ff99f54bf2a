"""Shared fixtures: offline environment, a session Minari store with a real Reacher2d dataset."""
from __future__ import annotations

import gzip
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WIKITEXT_VALID = SHARED / "corpus" / "wikitext-103" / "wiki.valid.tokens"
FIXED_ENGLISH_TEXT = Path(__file__).resolve().parent / "data" / "english_text.txt.gz"

TINY = ["model.backbone=tiny-gpt2", "model.pretrained=false", "model.tiny_layers=2", "model.tiny_width=32",
        "model.tiny_heads=2", "model.max_timestep=128"]
"""Overrides that make any recipe a tiny, seconds-long CPU job."""


@pytest.fixture(scope="session")
def minari_store(tmp_path_factory) -> Path:
    """A private Minari store for the whole session (``MINARI_DATASETS_PATH``)."""
    path = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


@pytest.fixture(scope="session")
def reacher_dataset(minari_store) -> str:
    """A real Minari dataset (scripted controller on Reacher2d, 3,000 steps) made for the session."""
    from lamo_scale.data.collect import collect_recipe

    ds = collect_recipe("reacher2d-medium", num_steps=3000, dataset_id="test/reacher2d/medium-v1", progress=False)
    return ds.id


def english_text_file(directory: Path) -> str:
    """A real text file: WikiText-103 valid when ../shared has it, else a fixed text committed
    with the tests (this project's docs and sources as of 2026-12-05, 0.6 MB: enough 64 KiB shards
    for 2 ranks x 2 text lanes), decompressed into ``directory``.

    Fixed, not read from the live sources: a fallback that changed with every commit moved
    tolerance-bound numbers in the tests that train on it."""
    if WIKITEXT_VALID.exists():
        return str(WIKITEXT_VALID)
    path = Path(directory) / "text.txt"
    path.write_bytes(gzip.decompress(FIXED_ENGLISH_TEXT.read_bytes()))
    return str(path)


@pytest.fixture
def text_file(tmp_path) -> str:
    """See :func:`english_text_file`."""
    return english_text_file(tmp_path)
