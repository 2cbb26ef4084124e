"""Byte-level byte-pair encoding: GPT-2's tokenizer, from a user's ``vocab.json`` and
``merges.txt`` (the files of any Hugging Face GPT-2 folder); nothing is downloaded.

    tokenizer = GPT2Tokenizer.from_folder("checkpoints/gpt2")   # vocab.json + merges.txt
    ids = tokenizer.encode("Hello world")                        # [15496, 995] with GPT-2's files
    tokenizer.decode(ids)                                        # "Hello world"

Text is split into words (a regular expression: letters, digits, other signs, spaces),
each word's UTF-8 bytes are written as printable characters (``bytes_to_unicode``: every
byte has one, so any text can be encoded), and ``BPE`` merges neighbouring symbols in
the order of the merge list until no listed pair is left. The core (``bytes_to_unicode``,
``read_merges``, ``BPE``) is what CLIP's tokenizer needs too: it marks the end of each
word with ``</w>`` (``BPE(merges, end_of_word="</w>")``) and reads its merges from
``bpe_simple_vocab_16e6.txt.gz``.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

try:  # the regex module knows Unicode classes (\p{L}: letters, \p{N}: numbers)
    import regex as _re
    _WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
except ImportError:  # re: letters are word characters but digits and _; numbers decimal digits
    import re as _re
    _WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

__all__ = ["BPE", "GPT2Tokenizer", "bytes_to_unicode", "read_merges"]


@lru_cache(maxsize=None)
def bytes_to_unicode():
    """{byte: character}: the printable bytes stand for themselves, the other 68 (control
    characters, space, ...) for the characters from U+0100 on, in order. GPT-2's and
    CLIP's table: a space is "Ġ" (U+0120)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def read_merges(path, limit=None):
    """The merge list of a ``merges.txt`` (or a gzipped one, as CLIP's): one pair of
    symbols per line, a first line starting with "#version" skipped; at most ``limit``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no merges file there; put the tokenizer's merges.txt there") from None
    if lines and "#version" in lines[0]:
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines[:limit] if limit else lines, 2):
        if not line.strip():
            continue
        pair = tuple(line.split())
        if len(pair) != 2:
            raise ValueError(f"{path}, line {number}: a merge is two symbols separated by a space, got {line!r}")
        merges.append(pair)
    return merges


class BPE:
    """Merges a word's symbols by the ranks of a merge list: repeatedly join the
    neighbouring pair that comes first in the list. ``end_of_word`` (CLIP: "</w>") is
    appended to a word's last symbol before merging."""

    def __init__(self, merges, end_of_word=""):
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.end_of_word = end_of_word
        self._cache = {}

    def __call__(self, word):
        """The symbols of ``word`` (a string of byte characters) after every merge."""
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + self.end_of_word]
        while len(symbols) > 1:
            pairs = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
            rank, at = min(pairs)  # the first-listed pair, its leftmost place
            if rank == float("inf"):
                break
            first, second = symbols[at], symbols[at + 1]
            merged, i = [], 0  # join every occurrence of this pair, left to right
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = symbols
        return symbols


class GPT2Tokenizer:
    """GPT-2's byte-level BPE: ``encode(text)`` -> token ids, ``decode(ids)`` -> text."""

    def __init__(self, vocab_file, merges_file):
        vocab_file = Path(vocab_file)
        try:
            self.encoder = json.loads(vocab_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{vocab_file}: no vocabulary there; put the tokenizer's vocab.json "
                                    "(and merges.txt) there") from None
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe = BPE(read_merges(merges_file))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.words = _re.compile(_WORDS)

    @classmethod
    def from_folder(cls, folder):
        """From ``vocab.json`` and ``merges.txt`` in ``folder`` (a Hugging Face GPT-2 folder)."""
        folder = Path(folder)
        return cls(folder / "vocab.json", folder / "merges.txt")

    @property
    def vocab_size(self):
        return len(self.encoder)

    def encode(self, text):
        ids = []
        for word in self.words.findall(text):
            for symbol in self.bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8"))):
                if symbol not in self.encoder:
                    raise KeyError(f"GPT2Tokenizer: {symbol!r} is made by the merges but is not in vocab.json; "
                                   "do vocab.json and merges.txt belong together?")
                ids.append(self.encoder[symbol])
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
