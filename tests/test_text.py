"""Text stream: packing into blocks, rank sharding, resume, sources."""
import pytest
import torch

from lamo_scale.data.text import TextBlockStream, open_text_records, packed_blocks, python_docstrings_corpus
from lamo_scale.model.tokenizer import ByteTokenizer


def test_packing_concatenates_records_with_newlines():
    blocks = list(packed_blocks(["ab", "", "cde", "f"], ByteTokenizer(), block_size=3))
    assert [bytes(b).decode() for b in blocks] == ["ab\n", "cde", "\nf\n"]


def _take(stream, n):
    return [b for _, b in zip(range(n), iter(stream))]


def test_ranks_read_disjoint_blocks_and_resume(text_file):
    tok = ByteTokenizer()
    single = _take(TextBlockStream(text_file, tok, 64, micro_batch=4), 3)
    r0 = _take(TextBlockStream(text_file, tok, 64, micro_batch=2, rank=0, world_size=2), 3)
    r1 = _take(TextBlockStream(text_file, tok, 64, micro_batch=2, rank=1, world_size=2), 3)
    for k in range(3):
        assert single[k].shape == (4, 64)
        union = torch.cat([r0[k], r1[k]])
        assert sorted(map(tuple, union.tolist())) == sorted(map(tuple, single[k].tolist()))
        assert not set(map(tuple, r0[k].tolist())) & set(map(tuple, r1[k].tolist()))
    resumed = _take(TextBlockStream(text_file, tok, 64, micro_batch=4, start_micro_batch=2), 1)
    assert torch.equal(resumed[0], single[2])


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
