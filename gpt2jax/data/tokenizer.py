"""The GPT-2 BPE tokenizer, loaded offline from the files shipped in ``tiktoken_cache/``."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import tiktoken

EOT_TOKEN_ID = 50256  # <|endoftext|>, written after every document
GPT2_VOCAB_SIZE = 50257

# OpenAI's vocab.bpe and encoder.json under the names tiktoken gives its download cache
# (the sha1 of each URL); tiktoken checks their sha256 when it reads them.
_PACKAGED_CACHE_DIR = Path(__file__).parent / "tiktoken_cache"
# The same two files are what Hugging Face's GPT-2 tokenizer reads as vocab.json and merges.txt.
ENCODER_JSON = _PACKAGED_CACHE_DIR / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"
VOCAB_BPE = _PACKAGED_CACHE_DIR / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding, read from the packaged files unless TIKTOKEN_CACHE_DIR is set."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return tiktoken.get_encoding("gpt2")
    # Point tiktoken at the package only for this call: other encodings the process loads
    # later should not be downloaded into the installed package.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_PACKAGED_CACHE_DIR)
    try:
        return tiktoken.get_encoding("gpt2")
    finally:
        del os.environ["TIKTOKEN_CACHE_DIR"]
