"""Text for a character-level language model: a dataset in the course's shape and a
corpus whose generated lines can be checked.

    data = TextDataset(open("book.txt", encoding="utf-8").read(), block_size=128)
    train, val = data.split(0.9)            # by position: the last 10 % validate
    x, y = train[0]                         # 128 character ids and the 128 that follow each
    data.decode(x.tolist())

``grammar_corpus`` writes lines of a small seeded grammar, sentences about the shapes
dataset ("two small red circles are on the left.", "an orange star is at the top.")
and sums ("17+25=42"); ``grammar_scores`` says what share of a model's generated lines
the grammar accepts, and how many of its sums are right: a score beyond the loss.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["TextDataset", "grammar_corpus", "grammar_scores", "read_text"]


def read_text(path):
    """The text of a UTF-8 file; a missing or undecodable file raises SystemExit with one line."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SystemExit(f"--text-file {path}: no such file; give a UTF-8 text file") from None
    except UnicodeDecodeError as error:
        raise SystemExit(f"--text-file {path}: not UTF-8 text (byte {error.start}); "
                         "convert it, e.g. iconv -t UTF-8") from None


class TextDataset(Dataset):
    """Every block of ``block_size`` characters of ``text``: item i is (x, y), x the ids of
    characters i .. i+block_size-1 and y those of i+1 .. i+block_size (the next character
    at each position). The vocabulary is the sorted characters of the text, or ``chars``."""

    def __init__(self, text, block_size, chars=None):
        self.chars = sorted(set(text)) if chars is None else list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        unknown = set(text) - set(self.stoi)
        if unknown:
            raise ValueError(f"TextDataset: characters {sorted(unknown)[:10]} are not in the vocabulary")
        if len(text) <= block_size:
            raise ValueError(f"TextDataset: {len(text)} characters, need more than block_size {block_size}")
        self.text, self.block_size = text, block_size
        self.data = torch.tensor(self.encode(text), dtype=torch.long)

    def get_vocab_size(self):
        return len(self.chars)

    def get_block_size(self):
        return self.block_size

    def encode(self, text):
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)

    def __len__(self):
        return len(self.data) - self.block_size

    def __getitem__(self, index):
        chunk = self.data[index:index + self.block_size + 1]
        return chunk[:-1], chunk[1:]

    def split(self, train_fraction=0.9):
        """(train, validation) datasets over the first ``train_fraction`` of the text and
        the rest, with this vocabulary: validation text never appears in training."""
        cut = int(train_fraction * len(self.text))
        return (TextDataset(self.text[:cut], self.block_size, self.chars),
                TextDataset(self.text[cut:], self.block_size, self.chars))


# ------------------------------------------------------------------ the grammar
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "big")
SHAPES = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
          "cross": "crosses", "ring": "rings"}  # singular -> plural
COUNTS = ("two", "three", "four", "five")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")
SENTENCE = re.compile(rf"(a|an|one|the|{'|'.join(COUNTS)}) (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) "
                      rf"([a-z]+) (is|are) ({'|'.join(PLACES)})\.")
SUM = re.compile(r"(0|[1-9][0-9]*)\+(0|[1-9][0-9]*)=([0-9]+)")


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _sentence(rng):
    """Agreement: a/an/one with a singular noun and "is", a number with a plural and "are",
    "the" with either; "an" before a vowel."""
    size = rng.choice(SIZES) if rng.random() < 0.5 else None
    colour, shape = rng.choice(COLOURS), rng.choice(list(SHAPES))
    adjectives = f"{size} {colour}" if size else colour
    plural = rng.random() < 0.5
    if plural:
        determiner = rng.choice(COUNTS + ("the",))
    else:
        determiner = rng.choice((_article(adjectives), "one", "the"))
    noun, verb = (SHAPES[shape], "are") if plural else (shape, "is")
    return f"{determiner} {adjectives} {noun} {verb} {rng.choice(PLACES)}."


def grammar_corpus(lines=20000, seed=0, max_operand=49, sum_share=1 / 3):
    """``lines`` lines of the grammar, one per line: sentences, and with probability
    ``sum_share`` a sum "a+b=c" of two numbers from 0 to ``max_operand``."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        if rng.random() < sum_share:
            a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
            out.append(f"{a}+{b}={a + b}")
        else:
            out.append(_sentence(rng))
    return "\n".join(out) + "\n"


def accepts(line, max_operand=49):
    """Whether ``line`` is a sentence of the grammar (with agreement) or a well-formed sum
    of two numbers from 0 to ``max_operand`` (right or wrong: that is sum accuracy)."""
    sum_match = SUM.fullmatch(line)
    if sum_match:
        return int(sum_match[1]) <= max_operand and int(sum_match[2]) <= max_operand
    m = SENTENCE.fullmatch(line)
    if not m:
        return False
    determiner, size, colour, noun, verb = m[1], m[2], m[3], m[4], m[5]
    if noun in SHAPES:
        plural = False
    elif noun in SHAPES.values():
        plural = True
    else:
        return False
    if determiner in ("a", "an"):
        return not plural and verb == "is" and determiner == _article(size or colour)
    if determiner == "one":
        return not plural and verb == "is"
    if determiner in COUNTS:
        return plural and verb == "are"
    return verb == ("are" if plural else "is")  # "the": either number, the verb agrees


def grammar_scores(text, max_operand=49):
    """Of the complete lines of ``text`` (a trailing unfinished line is left out): how
    many there are, the share the grammar accepts, and of the well-formed sums the share
    whose result is right."""
    lines = text.split("\n")
    lines = lines[:-1]  # after the last newline: unfinished (or empty)
    accepted = [line for line in lines if accepts(line, max_operand)]
    sums = [SUM.fullmatch(line) for line in accepted]
    sums = [m for m in sums if m]
    right = sum(int(m[1]) + int(m[2]) == int(m[3]) for m in sums)
    return {"lines": len(lines), "accepted": len(accepted),
            "acceptance": len(accepted) / len(lines) if lines else 0.0,
            "sums": len(sums), "sums_right": right, "sum_accuracy": right / len(sums) if sums else 0.0}
