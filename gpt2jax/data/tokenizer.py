"""The GPT-2 BPE tokenizer, loaded offline from the files shipped in ``tiktoken_cache/``."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import tiktoken
import tiktoken.load

EOT_TOKEN_ID = 50256  # <|endoftext|>, written after every document
GPT2_VOCAB_SIZE = 50257
# GPT-2's pre-tokenizing pattern as tiktoken 0.7 writes it (later ones write it with possessive quantifiers).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# OpenAI's vocab.bpe and encoder.json under the names tiktoken gives its download cache
# (the sha1 of each URL), with the sha256 tiktoken expects of each.
_PACKAGED_CACHE_DIR = Path(__file__).parent / "tiktoken_cache"
# The same two files are what Hugging Face's GPT-2 tokenizer reads as vocab.json and merges.txt.
ENCODER_JSON = _PACKAGED_CACHE_DIR / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"
VOCAB_BPE = _PACKAGED_CACHE_DIR / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"
_SHA256 = {
    ENCODER_JSON: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    VOCAB_BPE: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding, built from the packaged files whatever the environment holds.

    Not through ``tiktoken.get_encoding("gpt2")``: a TIKTOKEN_CACHE_DIR set for other encodings
    (as GPU images do), or a tiktoken whose download URLs differ, would send it to the network.
    """
    for path, expected in _SHA256.items():
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise ValueError(f"{path} is not OpenAI's GPT-2 file (its sha256 differs); reinstall gpt2jax.")
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken then reads the files in place and copies them into no cache
    try:
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(VOCAB_BPE), str(ENCODER_JSON))
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
