"""CLIP's tokenizer: byte-level BPE (``reference_torch.bpe``) with an end-of-word mark, the
same token ids as OpenAI's ``clip.tokenize``, and merges learned from a corpus for a
CLIP trained from scratch.

    tokenizer = CLIPTokenizer.from_file("bpe_simple_vocab_16e6.txt.gz")   # OpenAI's merges
    tokenizer.tokenize(["a photo of a cat"])    # (1, 77): 49406 320 1125 539 320 2368 49407 0 ...
    small = CLIPTokenizer(learn_merges(captions, 200))                    # the mini-CLIP's

Text is cleaned (HTML entities undone, whitespace collapsed, lower case), split into
words, letters and single digits, each word's bytes written as printable characters,
``</w>`` put on its last one, and merged by rank. The vocabulary is OpenAI's layout:
the 256 byte characters, the same with ``</w>``, one entry per merge in order, then
``<|startoftext|>`` and ``<|endoftext|>``; the end-of-text id is thus the largest, which
is how CLIP's text encoder finds where a text ends (``tokens.argmax(-1)``).
"""
from __future__ import annotations

import html
import importlib.util
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

from .bpe import BPE, _re, bytes_to_unicode, read_merges

__all__ = ["CLIPTokenizer", "learn_merges", "find_merges_file", "tokenize", "openai_tokenizer", "MERGES_FILE"]

MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_MERGES = 49152 - 256 - 2  # CLIP's vocabulary of 49,408 ids uses the first 48,894 merges
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
try:
    import regex  # noqa: F401  (bpe imported it as _re when it is installed)
    _WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
except ImportError:  # the same classes in re's terms: letters, one digit, other signs
    _WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+"""
_SPLIT = _re.compile(_WORDS, _re.IGNORECASE)


def clean(text):
    """OpenAI's cleaning: HTML entities decoded (twice, as theirs), whitespace collapsed,
    lower case. (Theirs also runs ftfy's mojibake repair, used here when installed.)"""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


def words(text):
    """The pieces BPE merges inside: each as its bytes' characters."""
    byte_chars = bytes_to_unicode()
    return ["".join(byte_chars[b] for b in word.encode("utf-8")) for word in _SPLIT.findall(clean(text))]


def learn_merges(texts, num_merges):
    """The first ``num_merges`` merges of byte-pair encoding learned on ``texts`` (at most
    as many as there are pairs left to merge): repeatedly join the most frequent
    neighbouring pair of symbols (ties: the pair that sorts first), words counted with
    their frequency and ended by ``</w>``, as CLIP's merges were made."""
    counts = Counter()
    for text, n in Counter(texts).items():  # each distinct text cleaned and split once
        for word in words(text):
            counts[word] += n
    vocab = {tuple(word[:-1]) + (word[-1] + "</w>",): n for word, n in counts.items()}
    merges = []
    while len(merges) < num_merges:
        pairs = Counter()
        for symbols, n in vocab.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab = {_join(symbols, best): n for symbols, n in vocab.items()}
    return merges


def _join(symbols, pair):
    out, i = [], 0
    while i < len(symbols):
        if symbols[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def find_merges_file(path=None):
    """``path`` if given, else OpenAI's merge file inside an installed package that ships it
    (``clip`` from openai/CLIP, ``open_clip``); nothing is downloaded."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--vocab {path}: no merge file there (OpenAI's {MERGES_FILE})")
        return Path(path)
    for package in ("clip", "open_clip"):
        spec = importlib.util.find_spec(package)  # finds the folder without importing the package
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / MERGES_FILE).is_file():
                return Path(folder) / MERGES_FILE
    raise FileNotFoundError(f"OpenAI's {MERGES_FILE} was not found in an installed package (clip, open_clip); "
                            "point to a copy with --vocab PATH")


class CLIPTokenizer:
    """``encode(text)`` -> ids, ``decode(ids)`` -> text, ``tokenize(texts)`` -> (B, 77) tensor."""

    def __init__(self, merges):
        self.merges = [tuple(pair) for pair in merges]
        characters = list(bytes_to_unicode().values())
        vocab = characters + [c + "</w>" for c in characters] + ["".join(pair) for pair in self.merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self.bpe = BPE(self.merges, end_of_word="</w>")
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]

    @classmethod
    def from_file(cls, path=None):
        """OpenAI's tokenizer from its merge file (see ``find_merges_file``)."""
        return cls(read_merges(find_merges_file(path), limit=OPENAI_MERGES))

    @property
    def vocab_size(self):
        return len(self.encoder)

    def encode(self, text):
        ids = []
        for word in words(text):
            ids += [self.encoder[word]] if word in (SOT, EOT) else [self.encoder[s] for s in self.bpe(word)]
        return ids

    def decode(self, ids):
        """The text of ``ids`` as cleaning left it (lower case), a space after each word."""
        data = bytearray()
        for i in ids:
            if int(i) in (self.sot, self.eot):
                continue
            token = self.decoder[int(i)]
            data += bytes(self.byte_decoder[c] for c in token.removesuffix("</w>"))
            if token.endswith("</w>"):
                data += b" "
        return data.decode("utf-8", errors="replace").strip()

    def tokenize(self, texts, context_length=77, truncate=False):
        """OpenAI's ``clip.tokenize``: a (B, context_length) long tensor, each row start-of-
        text, the text's ids, end-of-text, then zeros. A text too long for the context is
        an error naming it, or with ``truncate`` cut to fit (end-of-text kept last)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"{text!r} is {len(ids)} tokens with start and end, more than the "
                                     f"context length {context_length}; shorten it or pass truncate=True")
                ids = ids[:context_length - 1] + [self.eot]
            result[row, :len(ids)] = torch.tensor(ids)
        return result


@lru_cache(maxsize=4)
def openai_tokenizer(vocab=None):
    """OpenAI's tokenizer, read once per merge file."""
    return CLIPTokenizer.from_file(vocab)


def tokenize(texts, context_length=77, truncate=False, vocab=None):
    """``clip.tokenize`` with OpenAI's merges (``vocab``: their merge file, else found)."""
    return openai_tokenizer(vocab).tokenize(texts, context_length, truncate)
