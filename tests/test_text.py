"""Text stream: packing into blocks, rank sharding, resume, sources."""
import random
import string

import pytest
import torch

from lamo_scale.config import ConfigError, load_config
from lamo_scale.data.text import (TextBlockStream, open_text_records, packed_blocks, python_docstrings_corpus,
                                  text_micro_batch)
from lamo_scale.model.tokenizer import ByteTokenizer


def test_packing_concatenates_records_with_newlines():
    blocks = list(packed_blocks(["ab", "", "cde", "f"], ByteTokenizer(), block_size=3))
    assert [bytes(b).decode() for b in blocks] == ["ab\n", "cde", "\nf\n"]


def _take(stream, n):
    return [b for _, b in zip(range(n), iter(stream))]


class CountingTokenizer(ByteTokenizer):
    """A ByteTokenizer that counts the characters it was asked to encode."""

    def __init__(self):
        self.chars = 0

    def encode(self, text, add_special_tokens=False):
        self.chars += len(text)
        return super().encode(text)


@pytest.fixture
def corpus(tmp_path) -> str:
    """~10 KB of random lowercase words: any two 16-byte blocks differ."""
    rng = random.Random(0)
    lines = [" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
                      for _ in range(rng.randint(3, 15))) for _ in range(200)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _stream(source, tokenizer=None, **kwargs):
    kwargs = {"block_size": 16, "batch_size": 4, "shard_chars": 256, **kwargs}
    return TextBlockStream(source, tokenizer or ByteTokenizer(), **kwargs)


def _blocks(stream):
    return [tuple(b) for blocks in stream.lane_blocks().values() for b in blocks.tolist()]


def _rows(tensors):
    return sorted(tuple(row) for t in tensors for row in t.tolist())


def test_rank_shards_are_disjoint_their_union_is_the_single_process_and_tokenised_once(corpus):
    single_tok = CountingTokenizer()
    single = _stream(corpus, single_tok)
    everything = _blocks(single)
    assert len(everything) > 4 * 50
    for world, accum in [(2, 1), (2, 2), (4, 1)]:
        toks = [CountingTokenizer() for _ in range(world)]
        ranks = [_stream(corpus, toks[r], rank=r, world_size=world, grad_accum=accum) for r in range(world)]
        shards = [_blocks(s) for s in ranks]
        assert sorted(sum(shards, [])) == sorted(everything)  # as a multiset: nothing lost, nothing twice
        for a in range(world):
            for b in range(a + 1, world):
                assert not set(shards[a]) & set(shards[b])
        # each rank tokenises only its share: together exactly what one process tokenises
        assert sum(t.chars for t in toks) == single_tok.chars
        assert max(t.chars for t in toks) < 1.5 * single_tok.chars / world
        # and every step holds the same blocks as in the single process, also across epochs
        for step in (0, 1, 57, 300):
            got = [s.micro_batch_at(step * accum + m) for s in ranks for m in range(accum)]
            assert _rows(got) == _rows([single.micro_batch_at(step)])


def test_block_order_is_a_seeded_reproducible_shuffle_new_every_epoch(corpus):
    stream = _stream(corpus, batch_size=1, seed=0)
    in_corpus_order = _blocks(stream)
    n = len(in_corpus_order)

    def order(seed):
        return [tuple(t[0].tolist()) for t in _take(_stream(corpus, batch_size=1, seed=seed), 2 * n)]

    first = order(0)
    assert first == order(0)
    assert first != order(1)
    assert sorted(first[:n]) == sorted(in_corpus_order) and first[:n] != in_corpus_order
    assert sorted(first[n:]) == sorted(in_corpus_order) and first[n:] != first[:n]  # epoch 2: another order


def test_resume_continues_the_same_sequence_without_replaying(corpus):
    def rank1(**kwargs):
        return _stream(corpus, rank=1, world_size=2, grad_accum=2, seed=3, **kwargs)

    one_pass = CountingTokenizer()
    steps_per_epoch = min(len(b) for b in rank1(tokenizer=one_pass).lane_blocks().values())
    full = _take(rank1(), 2 * (2 * steps_per_epoch + 5))  # two micro-batches a step, into the 3rd epoch
    for start in (1, 6, len(full) - 3):
        tok = CountingTokenizer()
        resumed = _take(rank1(tokenizer=tok, start_micro_batch=start), len(full) - start)
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[start:], strict=True))
        assert tok.chars == one_pass.chars  # a seek: the corpus is tokenised once, not replayed


def test_global_text_batch_is_exactly_the_configured_size(corpus):
    for batch, world, accum in [(8, 2, 2), (8, 4, 1), (8, 1, 8), (2, 2, 1), (3, 1, 1)]:
        assert text_micro_batch(batch, world, accum) * world * accum == batch
    for batch, world, accum in [(2, 4, 1), (2, 1, 4), (6, 4, 1)]:  # max(1, batch // slots) made these 4 / 4 / 4
        with pytest.raises(ConfigError, match=f"text.batch_size={batch} .* {world} process.*grad_accum={accum}"):
            text_micro_batch(batch, world, accum)
    with pytest.raises(ConfigError, match="multiple of 4"):
        _stream(corpus, batch_size=2, world_size=4)
    ranks = [_stream(corpus, batch_size=8, rank=r, world_size=2, grad_accum=2) for r in range(2)]
    for step in (0, 3):
        assert sum(s.micro_batch_at(2 * step + m).shape[0] for s in ranks for m in range(2)) == 8
    # the accumulation part is refused when the config is loaded, before anything starts
    with pytest.raises(ConfigError, match=r"text.batch_size \(2\) must be divisible by train.grad_accum \(4\)"):
        load_config(None, ["train.batch_size=8", "train.grad_accum=4"])
    load_config(None, ["train.batch_size=8", "train.grad_accum=4", "loss.language_weight=0"])


def test_builtin_corpus_is_english_prose(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMO_SCALE_CACHE", str(tmp_path))
    path = python_docstrings_corpus()
    text = path.read_text()
    assert len(text) > 500_000 and text.count(" the ") > 2000
    assert python_docstrings_corpus() == path  # cached, not rebuilt


def test_unknown_sources_fail_clearly():
    with pytest.raises(ValueError, match="builtin:python-docstrings"):
        next(iter(open_text_records("builtin:nope")))
    with pytest.raises(FileNotFoundError, match="neither a local file/dir nor a loadable dataset"):
        open_text_records("no-such-user/no-such-dataset")


def test_auto_text_falls_back_to_local_text_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE set and no hub answering (here: a refused loopback port): `auto` must not pick
    the hub's WikiText (the run would die at its first text read) but local English text."""
    import huggingface_hub.constants

    from lamo_scale.data.text import WIKITEXT, resolve_source

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("LAMO_SCALE_CACHE", str(tmp_path))
    (tmp_path / "python-docs.txt").write_text("The Python tutorial.\n")  # the corpus cache, as fetched once
    assert resolve_source("auto") == "builtin:python-docs" != WIKITEXT
    assert resolve_source("wikitext:wikitext-2-raw-v1") == "wikitext:wikitext-2-raw-v1"  # explicit: as given
