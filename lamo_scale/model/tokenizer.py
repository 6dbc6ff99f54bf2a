"""A byte-level tokenizer for the built-in tiny backbones, which have no tokenizer of their own."""
from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255, with id 256 as end-of-text.

    Only what the text stream and the perplexity check use: ``encode``, ``decode``,
    ``eos_token_id`` and ``vocab_size``.
    """

    vocab_size = 257
    eos_token_id = 256
    pad_token_id = 256
    name_or_path = "byte-level"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; the end-of-text id is dropped."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
