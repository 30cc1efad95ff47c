"""The tiny model's data: real English text that every Python install ships, a character tokenizer, batching,
and a synthetic multi-domain task where expert specialisation is easy to see.

- Text: ``pydoc_data.topics``, the help texts of Python's own documentation (``help("if")``), part of the
  standard library (PSF licence): about 465 KB of English prose with code, on every machine, never downloaded;
  about 375 KB once the paragraphs that several topics repeat word for word are kept once. The splits are fixed. Validation text comes from the same distribution as the training text: every 10th block
  of about 1,000 characters (cut between paragraphs). A second, *shifted* held-out set is the last 10% of the
  topics sorted by name (``typesseq`` ... ``yield``, richer in code than the average): it measures how the model
  and its routing carry over to text unlike what they were trained on.
- Tokenizer: one token per character over a fixed alphabet (newline and the 95 printable ASCII characters), so
  the vocabulary, and with it every parameter count, is the same on every Python version. The few non-ASCII
  characters of the text (typographic quotes and dashes) are mapped to ASCII first.
- Batches: random windows of ``seq_len + 1`` tokens (inputs t_1..t_T and the next token t_{T+1}), drawn with a
  seeded ``torch.Generator`` whose state is the data position a checkpoint saves.
- Synthetic task: lines from a few generators (addition, reversal, sorting, repetition), each character labelled
  with the domain of its line.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from course_lib.core.validation import boundary
from course_lib.training import arguments

ASCII_ALPHABET = "\n" + "".join(chr(code) for code in range(32, 127))  # 96 characters
_ASCII_SET = frozenset(ASCII_ALPHABET)
_TO_ASCII = {"\t": "    ", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "°": " degrees",
             "ß": "ss", "\u00a0": " "}


@boundary(arguments.to_ascii)
def to_ascii(text: str) -> str:
    """Map the typographic characters of the documentation to ASCII; any other non-ASCII character becomes '?'."""
    return "".join(c if c in _ASCII_SET else _TO_ASCII.get(c, "?") for c in text)


class CharTokenizer:
    """One token per character of a fixed alphabet: token id = position of the character in ``chars``. Raises
    ValueError (``arguments.char_tokenizer``) unless ``chars`` is a non-empty string without repeats."""

    def __init__(self, chars: str = ASCII_ALPHABET) -> None:
        arguments.char_tokenizer(chars)
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars[:12]!r}...)" if len(
            self.chars) > 12 else f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars!r})"

    @boundary(arguments.encode)
    def encode(self, text: str) -> torch.Tensor:
        """text -> int64 tensor [len(text)] of token ids. Raises ValueError naming a character outside the alphabet,
        TypeError for anything but a str (``arguments.encode``)."""
        return torch.tensor([self._ids[c] for c in text], dtype=torch.long)

    @boundary(arguments.decode)
    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """ids [n] (an integer tensor or a sequence of int) -> text. Raises TypeError for ids that are not ints,
        ValueError for ids outside the vocabulary (``arguments.decode``)."""
        return "".join(self.chars[i] for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids))


@dataclass
class Corpus:
    """Token ids of a training and a validation split, and optional per-token domain labels.

    train, val: int64 [n_train], [n_val]; train_domains, val_domains: int64 of the same shapes or None;
    domain_names: the name of each domain label; val_shifted: int64 [n_shifted] or None, a second held-out set
    from a different distribution than the training text. Raises TypeError / ValueError (``arguments.corpus``)
    for ids that are not int64 [n >= 1] in the tokenizer's vocabulary, or domain labels of another shape.
    """

    tokenizer: CharTokenizer
    train: torch.Tensor
    val: torch.Tensor
    train_domains: torch.Tensor | None = None
    val_domains: torch.Tensor | None = None
    domain_names: tuple[str, ...] = ()
    val_shifted: torch.Tensor | None = None

    def __post_init__(self) -> None:
        arguments.corpus(self)

    def __repr__(self) -> str:
        domains = f", domains {list(self.domain_names)}" if self.domain_names else ""
        shifted = f" (+ {len(self.val_shifted):,} shifted)" if self.val_shifted is not None else ""
        return (f"Corpus({len(self.train):,} training and {len(self.val):,}{shifted} validation tokens, "
                f"vocab_size={self.tokenizer.vocab_size}{domains})")

    @boundary(arguments.split)
    def split(self, name: str) -> torch.Tensor:
        """The token ids of split ``name``: "train", "val" or "val_shifted" (when the corpus has one)."""
        return {"train": self.train, "val": self.val, "val_shifted": self.val_shifted}[name]

    @boundary(arguments.get_batch)
    def get_batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """Random windows: int64 [batch_size, seq_len + 1] (inputs t_1..t_T and the next token t_{T+1}). Raises
        TypeError / ValueError (``arguments.get_batch``) for an unknown split, sizes that are not ints >= 1, or a
        split too short for one window."""
        return self.get_batch_with_domains(split, batch_size, seq_len, generator)[0]

    @boundary(arguments.get_batch_with_domains)
    def get_batch_with_domains(self, split: str, batch_size: int, seq_len: int,
                               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like ``get_batch``, plus the windows' domain labels [batch_size, seq_len + 1] (None without labels)."""
        ids = self.split(split)
        starts = torch.randint(len(ids) - seq_len, (batch_size,), generator=generator)  # [batch]
        index = starts[:, None] + torch.arange(seq_len + 1)  # [batch, seq_len + 1]
        domains = {"train": self.train_domains, "val": self.val_domains}.get(split)
        return ids[index], (domains[index] if domains is not None else None)

    @boundary(arguments.eval_batches)
    def eval_batches(self, batch_size: int, seq_len: int, max_tokens: int | None = None,
                     split: str = "val") -> Iterator[torch.Tensor]:
        """Consecutive non-overlapping windows of a held-out split ("val" or "val_shifted"), always the same ones:
        int64 [<= batch_size, seq_len + 1] each, covering at most ``max_tokens`` predicted tokens. Raises
        TypeError / ValueError (``arguments.eval_batches``, when called) for sizes that are not ints >= 1, an
        unknown split or one too short for a window."""
        ids = self.split(split)
        n_windows = (len(ids) - 1) // seq_len
        if max_tokens is not None:
            n_windows = min(n_windows, max(1, max_tokens // seq_len))
        index = torch.arange(n_windows)[:, None] * seq_len + torch.arange(seq_len + 1)  # [windows, seq_len + 1]
        for first in range(0, n_windows, batch_size):
            yield ids[index[first:first + batch_size]]


def _blocks(text: str, block_chars: int) -> list[str]:
    """``text`` cut between paragraphs into consecutive blocks of at least ``block_chars`` characters (the last
    one may be shorter)."""
    blocks, current = [], []
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        if sum(len(p) + 2 for p in current) >= block_chars:
            blocks.append("\n\n".join(current))
            current = []
    if current:
        blocks.append("\n\n".join(current))
    return blocks


def python_docs(val_fraction: float = 0.1, tokenizer: CharTokenizer | None = None, shifted_fraction: float = 0.1,
                block_chars: int = 1_000) -> Corpus:
    """The help texts of Python's documentation (``pydoc_data.topics``), each paragraph kept once (the first time it
    appears, topics sorted by name), in three fixed parts:

    - ``val_shifted``: the last ``shifted_fraction`` of the topics sorted by name, held out whole (a different
      distribution: ``typesseq``, ``while``, ``with``, ``yield``, ... are richer in code than the average);
    - ``val``: of the other topics' text, cut between paragraphs into blocks of about ``block_chars`` characters,
      a ``val_fraction`` of the blocks spread evenly through it (every 10th by default): the same distribution as
      the training text;
    - ``train``: the rest.

    Raises ValueError (``arguments.python_docs``) for fractions outside (0, 1) or block_chars < 1, and when the
    fraction leaves no validation or no training block; ``tokenizer.encode``'s errors for a tokenizer without a
    character of the text (the validator is called here, not as a ``boundary``, so that ``encode`` inside checks
    the text against the user's tokenizer).
    """
    from pydoc_data.topics import topics

    arguments.python_docs(val_fraction, tokenizer, shifted_fraction, block_chars)
    tokenizer = tokenizer or CharTokenizer()
    names = sorted(topics)
    # A fifth of the documentation repeats paragraphs of other topics word for word: keep each paragraph once, so
    # no held-out paragraph is also trained on.
    seen: set[str] = set()
    unique = {}
    for name in names:
        paragraphs = [p for p in to_ascii(topics[name].strip()).split("\n\n") if not (p in seen or seen.add(p))]
        unique[name] = "\n\n".join(paragraphs)
    n_shifted = max(1, round(len(names) * shifted_fraction))
    blocks = _blocks("\n\n".join(unique[n] for n in names[:-n_shifted] if unique[n]), block_chars)
    # Block i is a validation block when the running count of i * val_fraction steps up: evenly spread.
    is_val = [int((i + 1) * val_fraction) > int(i * val_fraction) for i in range(len(blocks))]
    if not any(is_val) or all(is_val):
        raise ValueError(f"val_fraction={val_fraction} leaves no validation or no training block "
                         f"out of {len(blocks)}: use smaller blocks (block_chars) or another fraction")
    train_text = "\n\n".join(b for b, v in zip(blocks, is_val) if not v)
    val_text = "\n\n".join(b for b, v in zip(blocks, is_val) if v)
    shifted_text = "\n\n".join(unique[n] for n in names[-n_shifted:] if unique[n])
    return Corpus(tokenizer, tokenizer.encode(train_text), tokenizer.encode(val_text),
                  val_shifted=tokenizer.encode(shifted_text))


# ------------------------------------------------------------------------------------------ synthetic task
def _addition(rng: random.Random) -> str:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return f"add {a}+{b}={a + b}"


def _word(rng: random.Random, lo: int = 3, hi: int = 7) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(lo, hi)))


def _reversal(rng: random.Random) -> str:
    word = _word(rng)
    return f"rev {word}={word[::-1]}"


def _sorting(rng: random.Random) -> str:
    word = _word(rng)
    return f"srt {word}={''.join(sorted(word))}"


def _repetition(rng: random.Random) -> str:
    unit = "".join(rng.choice("XYZ#*@") for _ in range(rng.randint(2, 4)))
    return f"rep {unit}={unit * 3}"


SYNTHETIC_DOMAINS: dict[str, Callable[[random.Random], str]] = {
    "addition": _addition, "reversal": _reversal, "sorting": _sorting, "repetition": _repetition,
}


@boundary(arguments.synthetic_lines)
def synthetic_lines(n_lines: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n_lines`` lines of the synthetic task, each from a domain drawn uniformly; returns (lines, domain ids)
    with ids indexing ``list(SYNTHETIC_DOMAINS)``. Examples: 'add 12+30=42', 'rev abc=cba', 'srt cab=abc',
    'rep XY#=XY#XY#XY#'. Raises TypeError / ValueError (``arguments.synthetic_lines``) unless n_lines is an
    int >= 1."""
    rng = random.Random(seed)
    generators = list(SYNTHETIC_DOMAINS.values())
    domains = [rng.randrange(len(generators)) for _ in range(n_lines)]
    return [generators[d](rng) for d in domains], domains


def synthetic_task(n_lines: int = 20_000, seed: int = 0, val_fraction: float = 0.1,
                   tokenizer: CharTokenizer | None = None) -> Corpus:
    """The synthetic multi-domain corpus: one line per example, every character (and the line's newline)
    labelled with its line's domain. The last ``val_fraction`` of the lines are the validation set. Raises
    TypeError / ValueError (``arguments.synthetic_task``, called here as in ``python_docs``) for n_lines < 2 or a
    fraction outside (0, 1), ``tokenizer.encode``'s errors for a tokenizer without a character of the task."""
    arguments.synthetic_task(n_lines, seed, val_fraction, tokenizer)
    tokenizer = tokenizer or CharTokenizer()
    lines, domains = synthetic_lines(n_lines, seed)
    n_val = max(1, round(n_lines * val_fraction))
    parts = []
    for chunk_lines, chunk_domains in ((lines[:-n_val], domains[:-n_val]), (lines[-n_val:], domains[-n_val:])):
        ids = tokenizer.encode("".join(line + "\n" for line in chunk_lines))
        labels = torch.tensor([d for line, d in zip(chunk_lines, chunk_domains) for _ in range(len(line) + 1)])
        parts.append((ids, labels))
    (train, train_domains), (val, val_domains) = parts
    return Corpus(tokenizer, train, val, train_domains, val_domains, tuple(SYNTHETIC_DOMAINS))
