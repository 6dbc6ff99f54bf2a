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

Packing (see :class:`TextBlockStream`): consecutive records are grouped into *shards* of about
``shard_chars`` characters (64 KiB); shard ``g`` belongs to *lane* ``g mod B`` (``B`` =
``text.batch_size``); a lane's records are tokenised, newline-joined and cut into ``block_size``
blocks. Each optimizer step takes one block from every lane, each lane in its own seeded
permutation (a new one every epoch of that lane); rank ``r`` of ``W`` owns lanes ``ℓ ≡ r (mod W)``
and tokenises only their shards. The blocks, and the set of blocks in every step, are therefore the
same at any world size and gradient accumulation. Lanes cycle forever, reshuffled every epoch.
"""
from __future__ import annotations

import ast
import hashlib
import logging
import os
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lamo_scale.config import ConfigError
from lamo_scale.model.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".tokens", ".md", ".rst", ".raw")
BUILTIN_SOURCES = ("builtin:python-docs", "builtin:python-docstrings")
WIKITEXT = "wikitext:wikitext-103-raw-v1"
SHARD_CHARS = 1 << 16
"""Characters per shard of consecutive records: the unit dealt to lanes (and so to ranks)."""


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


def _hub_unreachable() -> Optional[str]:
    """Why the hub's WikiText-103 cannot be reached (one request, 5 s at most), or None when it can."""
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(WIKITEXT.split(":")[0], timeout=5)
    except Exception as err:  # DNS failure, refused connection, time-out, HTTP error: all mean "not usable"
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def resolve_source(source: str) -> str:
    """The concrete text source for ``source`` (``auto`` picks one and logs why).

    ``auto`` streams WikiText-103 when the hub answers; offline (``HF_HUB_OFFLINE`` /
    ``HF_DATASETS_OFFLINE``, or the hub unreachable) it falls back to local English text."""
    if source != "auto":
        return source
    if not _hub_offline():
        why = _hub_unreachable()
        if why is None:
            log.info("text for the language loss: %s (the paper's WikiText-103, streamed from the hub)", WIKITEXT)
            return WIKITEXT
        log.warning("text.source=auto: the hub is unreachable (%s); using local text. Set HF_HUB_OFFLINE=1 to "
                    "skip this check, or text.source=<file/dir> to choose the text.", why)
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


class _Packer:
    """Incremental packing: records in, full ``block_size`` blocks out (tokenised ``chunk`` records at a time)."""

    def __init__(self, tokenizer, block_size: int, chunk: int = 256):
        self.tokenizer, self.block_size, self.chunk = tokenizer, block_size, chunk
        self.pending: list[str] = []
        self.buffer: list[int] = []

    def add(self, text: str) -> list[list[int]]:
        """Queue one record (blank ones are skipped); returns the blocks completed by it, if any."""
        if text and text.strip():
            self.pending.append(text if text.endswith("\n") else text + "\n")
            if len(self.pending) >= self.chunk:
                return self.flush()
        return []

    def flush(self) -> list[list[int]]:
        """Tokenise the queued records; returns every complete block (a partial tail stays buffered)."""
        for ids in encode_batch(self.tokenizer, self.pending):
            self.buffer.extend(ids)
        self.pending.clear()
        n, size = len(self.buffer), self.block_size
        blocks = [self.buffer[i:i + size] for i in range(0, n - n % size, size)]
        del self.buffer[:n - n % size]
        return blocks


def packed_blocks(records: Iterable[str], tokenizer, block_size: int, chunk: int = 256) -> Iterator[list[int]]:
    """Concatenate the records' tokens (newline-joined) and yield ``block_size`` blocks."""
    packer = _Packer(tokenizer, block_size, chunk)
    for text in records:
        yield from packer.add(text)
    yield from packer.flush()


def text_micro_batch(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Text blocks per micro-batch so that a step holds exactly ``batch_size`` blocks, or a ConfigError.

    Every micro-batch gets the same number of blocks, so the mean of the per-micro-batch LM losses
    (token means, averaged over accumulation and ranks) is the mean over the step's blocks.
    """
    slots = world_size * grad_accum
    if batch_size % slots:
        fits = [n for n in (slots, 2 * slots) if n != batch_size]
        raise ConfigError(
            f"text.batch_size={batch_size} blocks per step cannot be split evenly over {world_size} process(es) "
            f"x train.grad_accum={grad_accum} micro-batches: set text.batch_size to a multiple of {slots} "
            f"(e.g. {' or '.join(map(str, fits))}), or change the process count / train.grad_accum")
    return batch_size // slots


def shard_records(records: Iterable[str], shard_chars: int = SHARD_CHARS) -> Iterator[tuple[int, str]]:
    """``(shard, record)`` pairs: consecutive records, a new shard after each ``shard_chars`` characters.

    Shards depend only on the records' lengths, so every rank agrees on them without tokenising.
    """
    shard, size = 0, 0
    for text in records:
        yield shard, text
        size += len(text) + 1
        if size >= shard_chars:
            shard, size = shard + 1, 0


def _as_array(blocks: list[list[int]], block_size: int) -> np.ndarray:
    return np.asarray(blocks, dtype=np.int32).reshape(len(blocks), block_size)


class TextBlockStream(IterableDataset):
    """Endless micro-batches ``[micro_batch, block_size]`` of token ids for one rank.

    Lanes: the ``batch_size`` (= ``text.batch_size``) lanes partition the corpus: shard ``g`` (see
    :func:`shard_records`) goes to lane ``g mod batch_size``; a lane's blocks are its shards' records
    packed in corpus order (only the lane's last partial block is dropped). Step ``s`` reads block
    ``perm_e[s mod n]`` of every lane, where ``n`` is the lane's block count, ``e = s // n`` its
    epoch and ``perm_e`` a permutation seeded by ``(seed, lane, e)``. Rank ``r`` of ``W`` owns lanes
    ``r, r+W, ...``; its micro-batch ``m`` of a step (``m < grad_accum``) holds the next
    ``micro_batch`` of them. So the blocks of a step — and the block set of the corpus — do not
    depend on ``W`` or ``grad_accum``, and resuming at micro-batch ``k`` is a seek, not a replay.

    Cost: every rank reads all records (to count shard sizes) but tokenises only its lanes'
    shards, and holds their tokens in memory (2 bytes a token when the ids fit in uint16).
    Compared with one global packing, block boundaries differ only where a lane jumps from one
    shard to the next. DataLoader worker ``w`` of ``n`` yields micro-batches ``k ≡ w (mod n)``.
    """

    def __init__(self, source: str, tokenizer, block_size: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, seed: int = 0, start_micro_batch: int = 0,
                 split: str = "train", text_field: str = "text", shard_chars: int = SHARD_CHARS):
        """Stream ``rank``'s share of ``batch_size`` blocks per step of ``source``, from ``start_micro_batch``."""
        super().__init__()
        self.source, self.split, self.text_field = source, split, text_field
        self.tokenizer = tokenizer
        self.block_size, self.batch_size = block_size, batch_size
        self.micro_batch = text_micro_batch(batch_size, world_size, grad_accum)
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.seed = int(seed) % (1 << 63)
        self.start_micro_batch = start_micro_batch
        self.shard_chars = shard_chars
        self.lanes = list(range(rank, batch_size, world_size))
        self._blocks: dict[int, np.ndarray] | None = None
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def lane_blocks(self) -> dict[int, np.ndarray]:
        """This rank's lanes → their packed blocks ``[n, block_size]`` in corpus order (built once)."""
        if self._blocks is None:
            self._blocks = self._pack_lanes()
        return self._blocks

    def _pack_lanes(self) -> dict[int, np.ndarray]:
        packers = {lane: _Packer(self.tokenizer, self.block_size) for lane in self.lanes}
        parts: dict[int, list[np.ndarray]] = {lane: [] for lane in self.lanes}
        shards = 0
        records = open_text_records(self.source, self.split, self.text_field)
        for shard, text in shard_records(records, self.shard_chars):
            shards = shard + 1
            lane = shard % self.batch_size
            if lane in packers and (done := packers[lane].add(text)):
                parts[lane].append(_as_array(done, self.block_size))
        if shards < self.batch_size:
            raise ValueError(
                f"text.source '{self.source}' splits into {shards} shard(s) of ~{self.shard_chars} characters: "
                f"fewer than text.batch_size={self.batch_size} lanes; use more text or a smaller text.batch_size")
        out = {}
        for lane, packer in packers.items():
            if done := packer.flush():
                parts[lane].append(_as_array(done, self.block_size))
            if not parts[lane]:
                raise ValueError(f"text.source '{self.source}': lane {lane} of {self.batch_size} holds no full block "
                                 f"of {self.block_size} tokens; use more text or a smaller text.block_size")
            blocks = np.concatenate(parts[lane])
            out[lane] = blocks.astype(np.uint16) if blocks.max() < (1 << 16) else blocks
        log.info("text stream %s, rank %d: lanes %s, %d blocks of %d tokens", self.source, self.rank,
                 self.lanes, sum(len(b) for b in out.values()), self.block_size)
        return out

    def block(self, lane: int, step: int) -> np.ndarray:
        """The block ``lane`` contributes to optimizer step ``step`` (its seeded, per-epoch order)."""
        blocks = self.lane_blocks()[lane]
        epoch, i = divmod(step, len(blocks))
        cached = self._orders.get(lane)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, lane, epoch]).permutation(len(blocks)))
            self._orders[lane] = cached
        return blocks[cached[1][i]]

    def micro_batch_at(self, k: int) -> torch.Tensor:
        """This rank's micro-batch ``k`` (step ``k // grad_accum``), ``[micro_batch, block_size]``."""
        step, m = divmod(k, self.grad_accum)
        lanes = self.lanes[m * self.micro_batch:(m + 1) * self.micro_batch]
        return torch.from_numpy(np.stack([self.block(lane, step) for lane in lanes]).astype(np.int64))

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start_micro_batch + worker
        while True:
            yield self.micro_batch_at(k)
            k += num_workers


def corpus_fingerprint(source: str) -> str:
    """A short id of a text source for logs (file hash prefix for local files, else the name)."""
    path = Path(source).expanduser()
    if path.is_file():
        with open(path, "rb") as f:
            return f"{path.name}:{hashlib.sha256(f.read(1 << 20)).hexdigest()[:12]}"
    return source
