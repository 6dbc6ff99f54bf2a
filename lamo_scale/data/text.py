"""Streaming text for the language loss: records → tokens → packed fixed-length blocks.

Sources (``text.source``):

* a local file or directory (``.txt``, ``.tokens``, ``.md``, ``.rst`` files), streamed with
  the ``datasets`` "text" builder;
* a hub dataset ``name`` or ``name:config`` (e.g. ``wikitext:wikitext-103-raw-v1``),
  streamed with ``datasets.load_dataset(..., streaming=True)``;
* ``builtin:python-docs``: the Python 3.11 documentation (tutorial, how-tos, library
  reference: ~12 MB of English reST) from Debian's ``python3.11-doc`` package, fetched once
  with ``apt-get download`` (no install, no root needed beyond apt's cache) and cached;
* ``builtin:python-docstrings``: the docstrings of this Python's standard library, extracted
  with ``ast`` (no imports) into a cached file — real English prose that every machine has;
* ``auto``: WikiText-103 from the hub when online (the paper's corpus), else
  ``builtin:python-docs``, else ``builtin:python-docstrings`` — the log says which.

Tokens of consecutive records are concatenated (a newline between records) and cut into
blocks of ``block_size``. Block ``j`` of the stream belongs to rank ``j mod W``; within a
rank, micro-batch ``k`` holds that rank's blocks ``k*b .. k*b+b-1`` and DataLoader worker
``w`` of ``n`` produces the micro-batches ``k ≡ w (mod n)``. The source repeats forever.
"""
from __future__ import annotations

import ast
import hashlib
import logging
import os
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from lamo_scale.model.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".tokens", ".md", ".rst", ".raw")
BUILTIN_SOURCES = ("builtin:python-docs", "builtin:python-docstrings")
WIKITEXT = "wikitext:wikitext-103-raw-v1"


def cache_dir() -> Path:
    """Where lamo_scale caches derived files (``$LAMO_SCALE_CACHE`` or ``~/.cache/lamo_scale``)."""
    path = Path(os.environ.get("LAMO_SCALE_CACHE") or Path.home() / ".cache" / "lamo_scale")
    path.mkdir(parents=True, exist_ok=True)
    return path


def python_docstrings_corpus() -> Path:
    """Write (once) and return a text file of the standard library's docstrings."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = cache_dir() / "python-docstrings.txt"
    if out.exists():
        return out
    paragraphs: list[str] = []
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    paragraphs.extend(p.strip() for p in doc.split("\n\n") if len(p.strip()) > 40)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(paragraphs), encoding="utf-8")
    os.replace(tmp, out)
    return out


def python_docs_corpus() -> Path:
    """Fetch (once) Debian's python3.11-doc and return a text file of its reST sources."""
    import shutil
    import subprocess
    import tempfile

    out = cache_dir() / "python-docs.txt"
    if out.exists():
        return out
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FileNotFoundError("builtin:python-docs needs apt-get and dpkg-deb (Debian/Ubuntu)")
    with tempfile.TemporaryDirectory() as tmp:
        for package in ("python3.11-doc", "python3-doc"):
            got = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob("*.deb"))
            if got.returncode == 0 and debs:
                break
        else:
            raise FileNotFoundError(f"apt-get download python3.11-doc failed: {got.stderr.strip()[-300:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        sources = sorted((Path(tmp) / "x").rglob("_sources/**/*.rst.txt"))
        keep = [p for p in sources if "whatsnew" not in p.parts and "c-api" not in p.parts]
        text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in keep)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(text, encoding="utf-8")
    os.replace(tmp_out, out)
    log.info("cached %d files (%.1f MB) of the Python documentation as %s", len(keep), len(text) / 1e6, out)
    return out


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def resolve_source(source: str) -> str:
    """The concrete text source for ``source`` (``auto`` picks one and logs why)."""
    if source != "auto":
        return source
    if not _hub_offline():
        log.info("text for the language loss: %s (the paper's WikiText-103, streamed from the hub)", WIKITEXT)
        return WIKITEXT
    try:
        python_docs_corpus()
        log.info("text for the language loss: builtin:python-docs (offline: Debian's python3.11-doc)")
        return "builtin:python-docs"
    except (FileNotFoundError, OSError) as err:
        log.info("text for the language loss: builtin:python-docstrings (offline; python-docs unavailable: %s)", err)
        return "builtin:python-docstrings"


def text_files(source: str) -> list[str]:
    """The text files of a local file/dir source, sorted."""
    path = Path(source).expanduser()
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"text.source directory {path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    return files


def open_text_records(source: str, split: str = "train", text_field: str = "text") -> Iterable[str]:
    """An iterable of text records (lines or documents) for ``source``."""
    import datasets

    source = resolve_source(source)
    if source == "builtin:python-docstrings":
        source = str(python_docstrings_corpus())
    elif source == "builtin:python-docs":
        source = str(python_docs_corpus())
    elif source.startswith("builtin:"):
        raise ValueError(f"unknown built-in text source '{source}'; known: {', '.join(BUILTIN_SOURCES)}")
    if Path(source).expanduser().exists():
        stream = datasets.load_dataset("text", data_files=text_files(source), split="train", streaming=True)
    else:
        name, _, config = source.partition(":")
        try:
            stream = datasets.load_dataset(name, config or None, split=split, streaming=True)
        except Exception as err:  # datasets raises many types for a missing/unreachable id
            raise FileNotFoundError(
                f"text.source '{source}' is neither a local file/dir nor a loadable dataset "
                f"({type(err).__name__}: {err}). Offline, use a local path or builtin:python-docstrings.") from err
    return (record[text_field] for record in stream)


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids for each text, without special tokens (HF tokenizers run batched)."""
    if isinstance(tokenizer, ByteTokenizer):
        return [tokenizer.encode(t) for t in texts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def packed_blocks(records: Iterable[str], tokenizer, block_size: int, chunk: int = 256) -> Iterator[list[int]]:
    """Concatenate the records' tokens (newline-joined) and yield ``block_size`` blocks."""
    buffer: list[int] = []
    pending: list[str] = []

    def drain() -> Iterator[list[int]]:
        for ids in encode_batch(tokenizer, pending):
            buffer.extend(ids)
        pending.clear()
        while len(buffer) >= block_size:
            yield buffer[:block_size]
            del buffer[:block_size]

    for text in records:
        if text and text.strip():
            pending.append(text if text.endswith("\n") else text + "\n")
            if len(pending) >= chunk:
                yield from drain()
    yield from drain()


class TextBlockStream(IterableDataset):
    """Endless micro-batches ``[micro_batch, block_size]`` of token ids for one rank."""

    def __init__(self, source: str, tokenizer, block_size: int, micro_batch: int, rank: int = 0,
                 world_size: int = 1, start_micro_batch: int = 0, split: str = "train",
                 text_field: str = "text"):
        """Stream packed blocks of ``source`` for ``rank`` of ``world_size`` from ``start_micro_batch``."""
        super().__init__()
        self.source, self.split, self.text_field = source, split, text_field
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.micro_batch = micro_batch
        self.rank, self.world_size = rank, world_size
        self.start_micro_batch = start_micro_batch

    def _rank_blocks(self) -> Iterator[list[int]]:
        epoch = 0
        while True:
            produced = 0
            records = open_text_records(self.source, self.split, self.text_field)
            for j, block in enumerate(packed_blocks(records, self.tokenizer, self.block_size)):
                produced += 1
                if j % self.world_size == self.rank:
                    yield block
            if produced < self.world_size:
                raise ValueError(f"text.source '{self.source}' yields {produced} blocks of {self.block_size} "
                                 f"tokens: fewer than the {self.world_size} ranks; use more text or a smaller block")
            epoch += 1
            log.debug("text stream %s: epoch %d done", self.source, epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch: list[list[int]] = []
        for i, block in enumerate(self._rank_blocks()):
            k = i // self.micro_batch
            if k < self.start_micro_batch or (k - self.start_micro_batch) % num_workers != worker:
                continue
            batch.append(block)
            if len(batch) == self.micro_batch:
                yield torch.tensor(batch, dtype=torch.long)
                batch = []


def corpus_fingerprint(source: str) -> str:
    """A short id of a text source for logs (file hash prefix for local files, else the name)."""
    path = Path(source).expanduser()
    if path.is_file():
        with open(path, "rb") as f:
            return f"{path.name}:{hashlib.sha256(f.read(1 << 20)).hexdigest()[:12]}"
    return source
